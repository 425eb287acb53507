"""Benchmark: verdict latency while learned sensors refit, and the memory of many learned sensors.

    .venv/bin/python -m bench.bench_refits                    # both parts, a few minutes
    .venv/bin/python -m bench.bench_refits --part latency     # or: --part memory
    .venv/bin/python -m bench.bench_refits --part memory --code /tmp/main-checkout   # another checkout's agent

The agent runs as a subprocess behind its own Mosquitto (bench/bench_e2e.py's helpers).

- **Latency while refitting.** 100 sensors start with a learned model each (the state dir
  is filled before the agent starts) and refit every ``--refit-every`` seconds of their
  readings' clocks while readings arrive paced at ``--rate``/s, spread over them. The same
  load runs once per way of fitting, in this order: with no refits (the control: what the
  machine's other load costs), in the agent's thread with refits not spread (what the agent
  did before the fit process), in the fit process not spread, and in the fit process spread
  by sensor id (the defaults). Per run: verdict latency from the
  reading's ``ts`` to its verdict at a subscriber (p50, p99, max), fits done
  (edge_agent_fits_total), the agent's peak RSS and the fit process's.
- **Memory of many learned sensors.** ``--sensors-memory`` sensors (1,000) with a learned
  model each (learned from 3,600 readings) send ``--readings-memory`` readings each; the
  agent's RSS is read after. With ``--code`` the agent runs from another checkout (e.g.
  main's, to compare the models' memory before and after).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.bench_e2e import (
    AGENT_ID,
    ROOT,
    BenchError,
    Target,
    machine,
    percentile,
    run_load,
    wait_ready,
    wait_status,
)
from bench.kit import MosquittoBroker, free_port, metric
from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec
from edge_agent.learning import save_learned
from edge_agent.tools.training import learn_model

# No refits at all (what the machine's load alone costs), the way fits ran before the fit
# process (a thread, refits not spread), then the new ways.
NO_REFITS = "none"
MODES = ((NO_REFITS, 0.0), ("thread", 0.0), ("process", 0.0), ("process", 0.25))
TARGET_P99_MS = 10.0
SHIPPED_MEMORY_MIB = 256.0


def fill_state_dir(state: Path, sensors: list[str], rows: int) -> None:
    """A learned model for each sensor, as the learner saves them (one fit, saved under each id)."""
    spec = FeatureSpec(fields=("value",), transforms=DEFAULT_TRANSFORMS)
    values = np.random.default_rng(0).uniform(0.85, 0.95, size=(rows, 1))  # what run_load publishes
    model = learn_model(spec, values, "bench", "bench-1")
    for sensor in sensors:
        save_learned(state, sensor, model)


def agent_command(code: Path | None) -> list[str]:
    if code is None:
        return [str(Path(sys.executable).parent / "edge-agent")]
    # Another checkout's agent: its folder first on sys.path, ahead of this one's editable install.
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); from edge_agent.cli import main; sys.exit(main())"]


def start_agent(code: Path | None, broker_port: int, workdir: Path, extra: list[str], timeout: float) -> tuple[Target, int]:
    http_port = free_port()
    argv = [*agent_command(code), "run", "--config", str(ROOT / "config.yaml"),
            "--set", "mqtt.host=127.0.0.1", "--set", f"mqtt.port={broker_port}", "--set", f"http.port={http_port}",
            "--set", "http.host=127.0.0.1", "--set", f"agent_id={AGENT_ID}", "--set", "log_level=WARNING", *extra]
    agent = Target("agent", argv, workdir / f"agent-{time.monotonic_ns()}.log")
    wait_status(broker_port, f"edge/{AGENT_ID}/status", timeout)
    wait_ready(http_port, timeout)
    return agent, http_port


def children_kb(pid: int, key: str) -> list[int]:
    """``key`` (VmHWM, VmRSS) of the process's children (the fit process), in kB."""
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) != pid:
                continue
            lines = (stat.parent / "status").read_text().splitlines()
            out.extend(int(line.split()[1]) for line in lines if line.startswith(f"{key}:"))
        except (OSError, ValueError, IndexError):
            pass
    return out


@dataclass
class RefitRun:
    fits: str
    jitter: float
    p50: float
    p99: float
    worst: float
    answered: int
    sent: int
    fits_done: float
    agent_hwm_mb: float
    worker_hwm_mb: float | None


def latency_while_refitting(args: argparse.Namespace, workdir: Path, fits: str, jitter: float) -> RefitRun:
    sensors = [f"machine-{i}" for i in range(args.sensors)]
    state = workdir / f"state-{fits}-{jitter}"
    fill_state_dir(state, sensors, 3600)
    broker = MosquittoBroker()
    agent: Target | None = None
    try:
        broker.start()
        agent, http_port = start_agent(None, broker.port, workdir, [
            "--set", f"learning.state_dir={state}", "--set", f"learning.refit_every={0 if fits == NO_REFITS else args.refit_every}s",
            "--set", "learning.refit_rows=3600", "--set", f"learning.fits={'process' if fits == NO_REFITS else fits}",
            "--set", f"learning.refit_jitter={jitter}",
        ], args.start_timeout)
        n = int(args.rate * args.seconds)
        print(f"refits ({fits}, jitter {jitter}): {n} readings at {args.rate:.0f}/s over {len(sensors)} sensors ...", file=sys.stderr)
        load = run_load(broker.port, f"edge/{AGENT_ID}", sensors, n, rate=args.rate, timeout=args.seconds + 120,
                        latencies=True, seed=7, strict=False)
        fits_done = metric(http_port, "edge_agent_fits_total") or 0.0
        hwm = agent.status_kb()["VmHWM"] / 1024
        workers = children_kb(agent.pid, "VmHWM")
    finally:
        if agent is not None:
            agent.stop()
        broker.close()
    lat = load.latencies_ms
    return RefitRun(fits, jitter, percentile(lat, 50), percentile(lat, 99), max(lat, default=float("nan")), load.answered,
                    load.sent, fits_done, hwm, max(workers) / 1024 if workers else None)


def memory_of_learned_sensors(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, str]]:
    sensors = [f"machine-{i}" for i in range(args.sensors_memory)]
    state = workdir / "state-memory"
    print(f"memory: saving {len(sensors)} learned models ...", file=sys.stderr)
    fill_state_dir(state, sensors, 3600)
    broker = MosquittoBroker()
    agent: Target | None = None
    try:
        broker.start()
        started = time.monotonic()
        agent, _ = start_agent(args.code, broker.port, workdir, [
            "--set", f"learning.state_dir={state}", "--set", f"pipeline.max_sensors={len(sensors) + 100}",
        ], args.start_timeout + len(sensors) / 20)
        loaded = agent.status_kb()
        print(f"memory: agent up in {time.monotonic() - started:.0f} s; {args.readings_memory} readings per sensor ...", file=sys.stderr)
        run_load(broker.port, f"edge/{AGENT_ID}", sensors, len(sensors) * args.readings_memory, timeout=args.timeout, seed=8)
        after = agent.status_kb()
    finally:
        if agent is not None:
            agent.stop()
        broker.close()
    def mb(kb):
        return kb / 1024.0
    code = f" (agent from {args.code})" if args.code else ""
    print("memory: the engine alone, refit histories filled ...", file=sys.stderr)
    engine = engine_memory(state, args.code or ROOT)
    n = engine["sensors"]
    def per(a, b):
        return (engine[b] - engine[a]) * 1024 / n  # KiB a sensor
    load_figure = f"{engine['base']:.1f} / {engine['loaded']:.1f} MB ({per('base', 'loaded'):.0f} KiB a model)"
    full_figure = (f"engine alone{code}: after each sensor's refit history is full ({engine['capacity']:,.0f} readings, "
                   f"{engine['history_bytes'] / 1024:.0f} KiB of arrays each)")
    fits = engine["full"] <= SHIPPED_MEMORY_MIB
    return [
        (f"engine alone{code}: RSS before / after loading {n:,.0f} learned models", load_figure, ""),
        (full_figure, f"{engine['full']:.1f} MB ({per('scored', 'full'):.0f} KiB a history)",
         f"≤ {SHIPPED_MEMORY_MIB:.0f} MiB{'' if fits else ' **(missed)**'}"),
        (f"agent RSS with {len(sensors):,} learned models loaded{code} (VmRSS after startup)", f"{mb(loaded['VmRSS']):.1f} MB", ""),
        (f"agent peak RSS after {len(sensors):,} learned sensors × {args.readings_memory} readings (VmHWM){code}",
         f"{mb(after['VmHWM']):.1f} MB (VmRSS {mb(after['VmRSS']):.1f})",
         f"≤ {SHIPPED_MEMORY_MIB:.0f} MiB{'' if after['VmHWM'] / 1024 <= SHIPPED_MEMORY_MIB else ' **(missed)**'}"),
    ]


# Run in a fresh interpreter (from this checkout or --code's): the memory of an engine holding
# the learned models of STATE, one reading per sensor scored, then every sensor's refit
# history filled to capacity by appending to it directly (7,200 readings each over MQTT
# would take an hour at the agent's rate).
ENGINE_RSS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
def rss():
    kb = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('VmRSS', 'VmHWM'))}
    return kb['VmRSS'] / 1024
from edge_agent.core.domain import Reading
from edge_agent.core.engine import LearningPlan, ScoringEngine
from edge_agent.learning import load_learned
base = rss()
learned = load_learned(__import__('pathlib').Path(sys.argv[2]))
loaded = rss()
engine = ScoringEngine({}, learning=LearningPlan(), learned=learned)
engine.score([Reading(s, {'value': 0.9}, 0.0, ts=0.0, ts_raw=0) for s in learned])
scored = rss()
for stream in engine._streams.values():
    h = stream.adaptation.history
    for i in range(h.capacity):
        h.append([0.9], False, float(i))
full = rss()
print(json.dumps({'base': base, 'loaded': loaded, 'scored': scored, 'full': full, 'sensors': len(learned),
                  'capacity': h.capacity, 'history_bytes': h.nbytes}))
"""


def engine_memory(state: Path, code: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", ENGINE_RSS, str(code), str(state)], capture_output=True, text=True, timeout=1800,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"the engine memory run failed: {done.stderr[-1000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["latency", "memory", "all"], default="all")
    p.add_argument("--sensors", type=int, default=100, help="learned sensors that refit (default 100)")
    p.add_argument("--rate", type=float, default=1000.0, help="paced readings/s (default 1000)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each latency run (default 60)")
    p.add_argument("--refit-every", type=float, default=20.0, help="learning.refit_every in the latency runs, seconds (default 20)")
    p.add_argument("--sensors-memory", type=int, default=1000, help="learned sensors in the memory run (default 1000)")
    p.add_argument("--readings-memory", type=int, default=20, help="readings per sensor in the memory run (default 20)")
    p.add_argument("--code", type=Path, help="run the memory part's agent from this checkout's edge_agent (default: this one)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--start-timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-refits-"))
    started = time.monotonic()
    runs: list[RefitRun] = []
    memory: list[tuple[str, str, str]] = []
    try:
        if args.part in ("latency", "all"):
            runs = [latency_while_refitting(args, workdir, fits, jitter) for fits, jitter in MODES]
        if args.part in ("memory", "all"):
            memory = memory_of_learned_sensors(args, workdir)
    except BenchError as e:
        print(f"\nbench_refits FAILED: {e}\n(logs in {workdir})", file=sys.stderr)
        return 1

    print("\n".join(machine()))
    print(f"- command: `{shlex.join([sys.executable, *sys.argv])}` (total {time.monotonic() - started:.0f} s)\n")
    if runs:
        print(f"{args.sensors} learned sensors refitting every {args.refit_every:.0f} s of their clocks (on the readings "
              f"they have, {args.rate * args.refit_every / args.sensors:.0f}-{args.rate * args.seconds / args.sensors:.0f}), "
              f"{args.rate:,.0f} readings/s for {args.seconds:.0f} s spread over them:\n")
        print("| fits run in | refits spread (learning.refit_jitter) | latency p50 / p99 / max | answered / sent | fits done | agent peak RSS | fit process peak RSS |")
        print("|---|---|---|---|---|---|---|")
        for r in runs:
            where = {NO_REFITS: "(no refits: the control)", "thread": "the agent's thread"}.get(r.fits, "the fit process (niced)")
            target = "" if r.p99 <= TARGET_P99_MS else " **(p99 over 10 ms)**"
            worker = f"{r.worker_hwm_mb:.1f} MB" if r.worker_hwm_mb is not None else "-"
            print(f"| {where} | {r.jitter:g} | {r.p50:.1f} / {r.p99:.1f} / {r.worst:.0f} ms{target} | {r.answered:,} / {r.sent:,} "
                  f"| {r.fits_done:.0f} | {r.agent_hwm_mb:.1f} MB | {worker} |")
        print()
    if memory:
        print("| figure | value | target |\n| --- | --- | --- |")
        print("\n".join(f"| {a} | {b} | {c} |" for a, b, c in memory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
