"""Benchmark: the numpy forest evaluator against scikit-learn's score_samples on one model.

Run: ``python -m bench.bench_scoring [--trees 100] [--rows 100000] [--features 4]``.
Prints a markdown table of single-reading and batched throughput, same model, same run.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest

from edge_agent.core.forest import Forest


@dataclass(frozen=True)
class Throughput:
    """How many rows per second one scorer managed, and on how many rows."""

    scorer: str
    mode: str
    rows: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds


def time_single(score: Callable[[np.ndarray], float], readings: np.ndarray, budget: float) -> tuple[int, float, np.ndarray]:
    """Score readings one call each until all are done or ``budget`` seconds pass."""
    out = np.empty(len(readings))
    start = time.perf_counter()
    deadline = start + budget
    done = 0
    for done, reading in enumerate(readings, start=1):
        out[done - 1] = score(reading)
        if done % 64 == 0 and time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - start, out[:done]


def time_batch(score: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Best of ``repeats`` wall-clock times for one call on all rows (the machine may be shared)."""
    best, result = float("inf"), np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        result = score(rows)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=100, help="trees in the forest (default 100)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the batched test (default 100000)")
    parser.add_argument("--features", type=int, default=4, help="features per reading (default 4)")
    parser.add_argument("--max-samples", type=int, default=256, help="rows per tree (default 256)")
    parser.add_argument("--singles", type=int, default=20_000, help="readings for our single-reading loop")
    parser.add_argument("--sklearn-singles", type=int, default=200, help="readings for sklearn's single-row loop (slow: joblib per call)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load = os.getloadavg()[0]  # other work on the machine skews every number below
    rng = np.random.default_rng(args.seed)
    train = rng.normal(size=(max(5_000, args.max_samples), args.features))
    estimator = IsolationForest(n_estimators=args.trees, max_samples=args.max_samples, random_state=args.seed).fit(train)
    # A shipped model, shared by many sensors, is held wide (for speed); a sensor's own
    # learned model compact (for memory). Both score the same single readings here.
    forest = Forest.from_sklearn(estimator, wide=True)
    compact = Forest.from_sklearn(estimator)
    # Mostly normal readings plus some far-out ones, as a live sensor stream would be.
    rows = rng.normal(size=(args.rows, args.features)) * rng.choice([1.0, 4.0], size=(args.rows, 1), p=[0.95, 0.05])

    results: list[Throughput] = []
    diffs: list[float] = []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n, seconds, ours_single = time_single(forest.score_one, rows[: args.singles], budget=10.0)
        results.append(Throughput("edge_agent.core.forest", "single reading (score_one), wide: a shared model", n, seconds))
        n_compact, seconds, compact_single = time_single(compact.score_one, rows[: args.singles], budget=10.0)
        results.append(Throughput("edge_agent.core.forest", "single reading (score_one), compact: a learned model",
                                  n_compact, seconds))
        diffs.append(float(np.max(np.abs(ours_single[: min(n, n_compact)] - compact_single[: min(n, n_compact)]))))
        n_sk, seconds, sk_single = time_single(
            lambda x: float(estimator.score_samples(x[np.newaxis, :])[0]), rows[: args.sklearn_singles], budget=10.0
        )
        results.append(Throughput("sklearn", "single reading (score_samples, 1 row)", n_sk, seconds))
        common = min(n, n_sk)
        diffs.append(float(np.max(np.abs(ours_single[:common] - sk_single[:common]))))

        seconds, ours_batch1 = time_batch(lambda r: forest.score_samples(r, n_threads=1), rows, repeats=3)
        results.append(Throughput("edge_agent.core.forest", f"batch, 1 thread ({args.rows:,} rows)", args.rows, seconds))
        seconds, ours_batch = time_batch(forest.score_samples, rows, repeats=3)
        results.append(Throughput("edge_agent.core.forest", f"batch, default threads ({args.rows:,} rows)", args.rows, seconds))
        seconds, sk_batch = time_batch(estimator.score_samples, rows, repeats=1)
        results.append(Throughput("sklearn", f"batch, one call ({args.rows:,} rows)", args.rows, seconds))
        diffs += [float(np.max(np.abs(ours_batch - sk_batch))), float(np.max(np.abs(ours_batch1 - sk_batch)))]

    path = "step-table lookup (univariate)" if args.features == 1 else "branch-free descent"
    print(f"IsolationForest: {args.trees} trees, max_samples={args.max_samples}, {args.features} feature(s), "
          f"{forest.n_nodes:,} nodes, depth {forest.max_depth}; evaluator path: {path}; "
          f"in memory: {forest.nbytes / forest.n_nodes:.1f} bytes a node wide, {compact.nbytes / compact.n_nodes:.1f} compact; "
          f"cpus: {os.cpu_count()}, load average at start: {load:.2f}\n")
    print("| scorer | mode | rows | rows/s |")
    print("|---|---|---:|---:|")
    for r in results:
        print(f"| {r.scorer} | {r.mode} | {r.rows:,} | {r.per_second:,.0f} |")
    print(f"\nmax |ours - sklearn| over all scored rows: {max(diffs):.3g}")


if __name__ == "__main__":
    main()
