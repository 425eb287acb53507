"""Benchmark: what learning on the device costs, in fit time, memory and time per reading.

Run: ``python -m bench.bench_learning [--repeats 5]``.

- Fit time of ``learn_model`` (numpy fitter, two forests: the second without the first's
  outliers) on 600, 3,600 and 7,200 readings of a one-field and an eight-field sensor.
- The bytes a learned sensor keeps to refit on (its History arrays, default refit_rows),
  the bytes its model takes on disk (what every refit writes under the state dir), and
  the bytes its forest's node arrays take in memory.
- Time per reading of a learned sensor, refits on (the history is kept) and off, same run,
  between its first fit and its first refit; and of a shipped model, for scale.
- What the drift feature costs: fits and readings of the same sensors with the default
  features less drift:N, in the same run (interleaved with the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.core.adaptation import History
from edge_agent.core.domain import Reading
from edge_agent.core.engine import Decision, LearningPlan, ScoringEngine
from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec
from edge_agent.model_files import load_model, save_model
from edge_agent.tools.replay import learn_and_score
from edge_agent.tools.training import learn_model

REPO = Path(__file__).resolve().parent.parent

# The default features less the drift baseline, to time what that feature costs.
WITHOUT_DRIFT = tuple(t for t in DEFAULT_TRANSFORMS if not t.startswith("drift:"))


def fit_seconds(rows: int, fields: int, repeats: int, transforms: tuple[str, ...] = DEFAULT_TRANSFORMS) -> float:
    spec = FeatureSpec(fields=tuple(f"f{i}" for i in range(fields)), transforms=transforms)
    values = np.random.default_rng(0).normal(size=(rows, fields))
    learn_model(spec, values[:200], "warm-up", "1")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        learn_model(spec, values, "bench", "1")
        times.append(time.perf_counter() - started)
    return statistics.mean(times)


def readings(values: np.ndarray) -> list[Reading]:
    return [Reading("s", {"value": float(v)}, float(i), ts=float(i), ts_raw=i) for i, v in enumerate(values)]


def learned_us_per_reading(plan: LearningPlan, values: np.ndarray) -> float:
    """Mean time per reading after the first fit and before the first refit is due."""
    first, last = plan.rows + 100, plan.rows + int(plan.refit_every) - 100 if plan.refit_every else plan.rows + 3500
    started = 0.0
    for i, _ in enumerate(learn_and_score(readings(values), plan, Decision())):
        if i == first:
            started = time.perf_counter()
        if i == last:
            return (time.perf_counter() - started) / (last - first) * 1e6
    raise ValueError("too few readings")


def shipped_us_per_reading(values: np.ndarray) -> float:
    """The shipped vibration model, one reading a call; ``values`` around 0.8 g are its
    normal, standard normal ones are nearly all anomalous (a sensor gone wrong)."""
    engine = ScoringEngine({"m": load_model(REPO / "models" / "vibration")}, default="m")
    batch = readings(values)
    started = time.perf_counter()
    for r in batch:
        engine.score([r])
    return (time.perf_counter() - started) / len(batch) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    print(f"| readings learned from | fields | fit seconds (mean of {args.repeats}) | without drift (same run) |")
    print("|---|---|---|---|")
    for rows in (600, 3600, 7200):
        for fields in (1, 8):
            print(f"| {rows} | {fields} | {fit_seconds(rows, fields, args.repeats):.2f} "
                  f"| {fit_seconds(rows, fields, args.repeats, WITHOUT_DRIFT):.2f} |")

    plan = LearningPlan()
    for fields in (1, 8):
        h = History(max(plan.rows, plan.refit_rows), fields)
        print(f"\nrefit history of a {fields}-field learned sensor (refit_rows {plan.refit_rows}): "
              f"{h.capacity * (8 * fields + 1 + 8)} bytes when full", end="")
    spec = FeatureSpec(fields=("value",), transforms=DEFAULT_TRANSFORMS)
    model = learn_model(spec, np.random.default_rng(2).normal(size=(plan.refit_rows, 1)), "bench", "1")
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, Path(folder))
        on_disk = sum(p.stat().st_size for p in Path(folder).iterdir())
    print(f"\na learned one-field model on disk (manifest and forest): {on_disk} bytes")
    print(f"its forest in memory: {model.forest.nbytes} bytes ({model.forest.n_nodes} nodes, "
          f"{model.forest.nbytes / model.forest.n_nodes:.1f} bytes a node)\n")

    values = np.random.default_rng(1).normal(size=plan.rows + int(plan.refit_every) + 100)  # a reading a second
    no_refits = dataclasses.replace(plan, refit_every=0)
    no_drift = dataclasses.replace(plan, features=WITHOUT_DRIFT)
    normal = 0.8 + 0.02 * np.random.default_rng(3).normal(size=5000)
    on, off, plain, shipped, shipped_normal = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits all of them
        on.append(learned_us_per_reading(plan, values))
        off.append(learned_us_per_reading(no_refits, values))
        plain.append(learned_us_per_reading(no_drift, values))
        shipped.append(shipped_us_per_reading(values[:5000]))
        shipped_normal.append(shipped_us_per_reading(normal))
    print(f"| sensor | µs per reading, one at a time (median of {args.repeats}; min-max) |")
    print("|---|---|")
    for name, times in (("learned, refits on (history kept)", on), ("learned, refits off", off),
                        ("learned, refits on, without drift", plain),
                        ("shipped vibration model, normal readings", shipped_normal),
                        ("shipped vibration model, every reading anomalous", shipped)):
        print(f"| {name} | {statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
