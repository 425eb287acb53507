"""A burst of readings into a broker with stock limits: how many the broker drops, and how many the agent sees missing.

    .venv/bin/python -m bench.burst_drops                     # 7 sensors x 300 readings, stock and shipped limits
    .venv/bin/python -m bench.burst_drops --readings 21000

On loopback only, with mosquitto processes of its own on free ports (never the shared one on
:1883): the agent (in this process) reads sensors/+ with seq_field: seq, and edge-sim --seq
publishes the burst as fast as it can. "stock" is `mosquitto -p PORT`, the packaged and Home
Assistant add-on defaults (max_queued_messages 1000, max_inflight_messages 20); "shipped" adds the
two limits broker/mosquitto.conf sets. Prints one markdown table. A drop shows as a gap when the
sensor's next reading arrives: after the burst each sensor sends one more ("missing (gaps)" is
counted after it; "scored" is the burst only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import kit
from edge_agent.agent import Agent, load_models
from edge_agent.config import load_config
from edge_agent.mqtt.local_broker import MOSQUITTO, free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent

SHIPPED = "max_queued_messages 100000\nmax_inflight_messages 512\n"


def total(agent: Agent, metric: str) -> float:
    return sum(s.value for m in agent.registry.collect() if m.name == metric for s in m.samples if s.name.endswith("_total"))


def settle(agent: Agent) -> None:
    """Until the agent has scored all that will come (no new reading for a second; 30 s at most)."""
    last, deadline = -1.0, time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = total(agent, "edge_agent_readings")
        if now == last:
            return
        last = now


def run(limits: str, sensors: int, readings: int) -> tuple[int, int, float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{limits}")
        broker = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening("127.0.0.1", port)
            cfg = load_config(REPO / "config.yaml", [
                "mqtt.host=127.0.0.1", f"mqtt.port={port}", "http.enabled=false", f"agent_id=burst-{port}",
                'sources=[{"topic": "sensors/+", "seq_field": "seq"}]', f"learning.state_dir={tmp}", "log_level=ERROR",
            ], {})
            agent = Agent(cfg, load_models(cfg, REPO), env={})
            agent.start()
            deadline = time.monotonic() + 10
            while not agent.readiness()[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError(agent.readiness()[1])
                time.sleep(0.05)
            sim = subprocess.run(
                [sys.executable, "-m", "simulator.cli", "--host", "127.0.0.1", "--port", str(port), "--sensors", str(sensors),
                 "--rate", "5000", "--count", str(readings), "--seq", "--flush-timeout", "10"],
                capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
            )
            acked = int(sim.stdout.split(" acknowledged")[0].rsplit(" ", 1)[1]) if " acknowledged" in sim.stdout else -1
            settle(agent)
            scored = total(agent, "edge_agent_readings")
            # The sensors go on: one more reading each, after the burst, shows the drops at its end as gaps.
            names = {s.labels["sensor"] for m in agent.registry.collect() if m.name == "edge_agent_readings" for s in m.samples}
            tail = kit.client(client_id=f"tail-{port}")
            tail.connect("127.0.0.1", port)
            tail.loop_start()
            for name in sorted(names):
                tail.publish(f"sensors/{name}", json.dumps({"value": 1.0, "seq": readings // sensors + 1}), qos=1).wait_for_publish(10)
            tail.disconnect()
            tail.loop_stop()
            settle(agent)
            missing = total(agent, "edge_agent_readings_missed")
            agent.stop(timeout=10)
            return readings, acked, scored, missing
        finally:
            broker.terminate()
            broker.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=7)
    p.add_argument("--readings", type=int, default=2100)
    args = p.parse_args()
    if MOSQUITTO is None:
        print("bench/burst_drops.py needs the mosquitto binary", file=sys.stderr)
        return 1
    print("| broker limits | readings | acknowledged to edge-sim | scored by the agent | dropped | missing (gaps) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, limits in (("stock (`mosquitto -p`)", ""), ("shipped (broker/mosquitto.conf)", SHIPPED)):
        readings, acked, scored, missing = run(limits, args.sensors, args.readings)
        print(f"| {name} | {readings} | {acked} | {scored:.0f} | {readings - scored:.0f} | {missing:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
