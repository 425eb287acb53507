"""False alarms on anomaly-free streams of shapes common in the field, learned as unknown sensors.

Usage: python -m bench.eval_quiet [--files 4] [--rows 4032] [--seed 1] [--set learning.leave_out_outliers=false]

Every stream holds no anomaly, so every alarm is a false one. Each file is replayed as
`edge-agent replay` replays a file without a model, and as bench/eval_nab.py does: its
probationary period (15 %, at most 750 rows) is learned from, then it is scored, with the
config's refits. The shapes are
ones the simulator's smooth Gaussian sensors do not cover: counts that often repeat, a
humidity reported in whole percent, a quantized CPU load with a daily cycle, bursty
heavy-tailed volumes, an autocorrelated level, a machine that runs half the day, and four
whose level moves for good: growing traffic, a random walk, an outdoor temperature with
weather, and a sawtooth. Rows
are 5 minutes apart (4,032 rows: two weeks, a NAB file's typical length). Prints, per
shape, the readings flagged and the alarm episodes per 1,000 scored readings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.eval_nab import learning_rows
from edge_agent.agent import decision_of, learning_plan
from edge_agent.config import load_config
from edge_agent.core.domain import Reading, Verdict
from edge_agent.core.durations import Duration
from edge_agent.tools.replay import learn_and_score

REPO = Path(__file__).resolve().parent.parent

STEP_S = 300.0  # 5-minute rows
DAY_ROWS = 288


def _daily(n: int) -> np.ndarray:
    return np.sin(2 * np.pi * np.arange(n) / DAY_ROWS)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    x = np.zeros(n)
    e = rng.standard_normal(n) * np.sqrt(1 - phi * phi)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "event counts, daily cycle (Poisson, mean 5-35)": lambda rng, n: rng.poisson(20 + 15 * _daily(n)).astype(float),
    "low counts (Poisson, mean 3)": lambda rng, n: rng.poisson(3.0, n).astype(float),
    "humidity in whole %RH": lambda rng, n: np.round(55 - 8 * _daily(n) + 2 * _ar1(rng, n, 0.98)),
    "CPU % in steps of 0.2, daily cycle": lambda rng, n: np.round(
        np.clip(40 + 10 * _daily(n) + 3 * rng.standard_normal(n), 0, 100) / 0.2) * 0.2,
    "bursty volumes (lognormal)": lambda rng, n: np.round(np.exp(3 + 0.6 * rng.standard_normal(n))),
    "autocorrelated level (AR(1), 3 decimals)": lambda rng, n: np.round(50 + 3 * _ar1(rng, n, 0.95), 3),
    "machine on half the day (a step of 60 twice a day, noise 1)": lambda rng, n: np.where(
        np.arange(n) % DAY_ROWS < DAY_ROWS // 2, 20.0, 80.0) + rng.standard_normal(n),
    # Streams whose level moves for good: what a baseline (the drift feature) or a range
    # learned early might mistake for an anomaly.
    "traffic growing by half in two weeks (Poisson, daily cycle)": lambda rng, n: rng.poisson(
        (100 + 50 * np.arange(n) / n) * (1 + 0.5 * _daily(n))).astype(float),
    "random walk (a price, a tank level; 2 decimals)": lambda rng, n: np.round(100 + np.cumsum(rng.normal(0, 0.5, n)), 2),
    "outdoor temperature: daily cycle and weather over days": lambda rng, n: np.round(
        15 + 4 * _daily(n) + 3 * _ar1(rng, n, 0.999) + 0.2 * rng.standard_normal(n), 2),
    "sawtooth (a tank filling over a day, emptied at once)": lambda rng, n: np.round(
        10 + 80 * (np.arange(n) % DAY_ROWS) / DAY_ROWS + rng.normal(0, 0.5, n), 2),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4, help="streams of each shape (default 4)")
    ap.add_argument("--rows", type=int, default=4032, help="rows per stream (default 4032: two weeks of 5-minute rows)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="learning.* or decision.* overrides")
    args = ap.parse_args()
    if args.files < 1 or args.rows < 400:
        ap.error("--files must be at least 1 and --rows at least 400")
    cfg = load_config(None, args.overrides, {})
    plan = learning_plan(cfg, rows=learning_rows(args.rows))
    decision = decision_of(cfg)

    print(f"anomaly-free streams: {args.files} of each shape x {args.rows} rows, seed {args.seed}; "
          f"learning from the first {plan.rows} rows, refit every {Duration(plan.refit_every)}; decision {decision}\n")
    print("| shape | readings scored | flagged | alarm episodes | episodes per 1,000 readings |")
    print("|---|---|---|---|---|")
    totals = [0, 0, 0]
    for s, (shape, make) in enumerate(SHAPES.items()):
        scored = flagged = episodes = 0
        for f in range(args.files):
            values = make(np.random.default_rng([args.seed, s, f]), args.rows)
            readings = (Reading(f"s{f}", {"value": float(v)}, i * STEP_S, ts=i * STEP_S, ts_raw=i * STEP_S)
                        for i, v in enumerate(values))
            for _, verdict in learn_and_score(readings, plan, decision):
                if isinstance(verdict, Verdict) and not verdict.learning:
                    scored += 1
                    flagged += verdict.anomaly
                    episodes += verdict.onset
        totals = [totals[0] + scored, totals[1] + flagged, totals[2] + episodes]
        print(f"| {shape} | {scored} | {flagged} | {episodes} | {1000 * episodes / scored:.2f} |")
    scored, flagged, episodes = totals
    print(f"| all | {scored} | {flagged} | {episodes} | {1000 * episodes / scored:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
