"""What one sensor costs in memory, by what it has shown: one reading, a learning history, a learned model.

    .venv/bin/python -m bench.bench_sensor_memory            # prints a markdown table
    .venv/bin/python -m bench.bench_sensor_memory --quick    # fewer sensors (a few seconds)
    .venv/bin/python -m bench.bench_sensor_memory --flood 100000 --cap 10000   # RSS through engine and pipeline

Each figure is the Python heap that ``tracemalloc`` sees grow while the engine takes the
readings in (numpy's buffers included), divided by the sensors; the engine, its models and
its learning plan are those of the shipped config.yaml. A learned model is measured
by loading one that was fitted on ``learning.rows`` readings and saved, with its size on disk.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.agent import build_engine, learning_plan, load_models
from edge_agent.config import load_config
from edge_agent.core.domain import Reading
from edge_agent.core.engine import ScoringEngine
from edge_agent.learning import load_learned, model_dir, save_learned
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.pipeline import Envelope, Pipeline
from edge_agent.tools.training import fit_request

ROOT = Path(__file__).resolve().parent.parent


def _heap_growth(make: Callable[[], object], feed: Callable[[object], None]) -> int:
    """Bytes the heap holds after ``feed(make())`` beyond what it held before (the object kept alive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    feed(kept)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def _readings(sensor: str, n: int) -> list[Reading]:
    rng = np.random.default_rng(abs(hash(sensor)) % 2**32)
    values = (20.0 + rng.normal(0, 0.5, n)).tolist()
    return [Reading(sensor, {"value": v}, 1_700_000_000.0 + i, ts=1_700_000_000.0 + i) for i, v in enumerate(values)]


def per_sensor(engine_of: Callable[[], ScoringEngine], prefix: str, sensors: int, readings: int) -> float:
    """Heap bytes a sensor of ``prefix`` costs after ``readings`` readings (the engine's own cost taken out)."""
    batches = [_readings(f"{prefix}-{s}", readings) for s in range(sensors)]

    def feed(engine: object) -> None:
        assert isinstance(engine, ScoringEngine)
        for batch in batches:
            for start in range(0, len(batch), 512):
                engine.score(batch[start:start + 512])

    empty = _heap_growth(engine_of, lambda engine: None)
    return (_heap_growth(engine_of, feed) - empty) / sensors


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


class _CountingSink:
    def __init__(self) -> None:
        self.verdicts = 0

    def publish_verdict(self, verdict: object, envelope: object) -> None:
        self.verdicts += 1

    def publish_error(self, invalid: object) -> None:
        pass

    def settle(self, token: object) -> None:
        pass


def flood_rss(flood: int, cap: int) -> None:
    """RSS of this process before and after ``flood`` one-reading ids go through parser, pipeline and engine."""
    from prometheus_client import CollectorRegistry

    cfg = load_config(ROOT / "config.yaml", [f"pipeline.max_sensors={cap}"], {})
    engine = build_engine(cfg, load_models(cfg, ROOT))
    sink = _CountingSink()
    pipeline = Pipeline(engine, sink, AgentMetrics(CollectorRegistry()))
    parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
    before = _rss_mib()
    started = time.perf_counter()
    for first in range(0, flood, 512):
        pipeline.process([Envelope(parser.parse(f"sensors/flood-{i:06d}", b'{"value": 0.9, "ts": %d}' % (1_700_000_000 + i), 1.0), i)
                          for i in range(first, min(flood, first + 512))])
    rate = flood / (time.perf_counter() - started)
    print(f"{flood} one-reading ids, max_sensors {cap}: RSS {before:.0f} MiB before, {_rss_mib():.0f} MiB after; "
          f"{sink.verdicts} verdicts, {engine.sensor_count} sensors tracked, {rate:.0f} readings/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer sensors, for a smoke run")
    p.add_argument("--flood", type=int, default=0, help="instead: RSS after this many one-reading ids (with --cap)")
    p.add_argument("--cap", type=int, default=10_000, help="pipeline.max_sensors for --flood")
    args = p.parse_args(argv)
    if args.flood:
        flood_rss(args.flood, args.cap)
        return 0
    n = 200 if args.quick else 2000
    cfg = load_config(ROOT / "config.yaml", [], {})
    models = load_models(cfg, ROOT)
    plan = learning_plan(cfg)

    def engine_of() -> ScoringEngine:
        return build_engine(cfg, models)

    rows = []
    rows.append(("learning, after 1 reading", n, per_sensor(engine_of, "new", n, 1)))
    rows.append(("learning, after 60 readings", n // 4, per_sensor(engine_of, "young", n // 4, 60)))
    full = n // 40
    rows.append((f"learning, after {plan.rows - 1} readings (one short of its first fit)", full,
                 per_sensor(engine_of, "full", full, plan.rows - 1)))
    rows.append(("shipped model (vibration-*), after 1 reading", n, per_sensor(engine_of, "vibration", n, 1)))
    rows.append(("shipped model (vibration-*), after 60 readings", n // 4, per_sensor(engine_of, "vibration", n // 4, 60)))

    with tempfile.TemporaryDirectory(prefix="sensor-memory-") as tmp:
        state = Path(tmp)
        engine = build_engine(cfg, models)
        [request] = engine.score(_readings("learner", plan.rows)).learn_requests
        save_learned(state, "learner", fit_request(request, "bench"))
        on_disk = sum(f.stat().st_size for f in model_dir(state, "learner").iterdir())
        model_bytes = _heap_growth(lambda: load_learned(state), lambda _: None)

    print("| a sensor ... | sensors measured | heap per sensor |")
    print("|---|---:|---:|")
    for what, count, size in rows:
        print(f"| {what} | {count} | {size / 1024:.1f} KiB |")
    print(f"| its learned model in memory (fitted on {plan.rows} readings, loaded from disk) | 1 | {model_bytes / 1024:.0f} KiB |")
    print(f"| its learned model on disk | 1 | {on_disk / 1024:.0f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
