"""SKAB evaluation with the benchmark's own protocol, through the agent's replay code.

Usage: python -m bench.eval_skab [--data ../shared/datasets/skab] [--set decision.k=3 ...]

For every experiment file: the first 400 rows train a model with scikit-learn, the
rest is scored as a stream, reading by reading, with that model. The labels of all
scored rows are pooled into one confusion matrix; F1, FAR and MAR are printed next to
the published rows of the benchmark's README.

In the same run, a second row: the agent as it treats a sensor it has no model for
(``edge-agent replay --learn-rows 400``): it learns from the first 400 rows with its
own numpy fitter, then scores and refits as the learning.* defaults say. And the
share of readings it flags on the anomaly-free recording, learning from its first
learning.rows readings: its false alarm rate on a long healthy run, for the whole
recording and for each of its fields alone (a univariate stream).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from bench.corpus import report_skipped
from edge_agent.agent import decision_of, learning_plan
from edge_agent.config import load_config
from edge_agent.core.durations import Duration
from edge_agent.core.engine import Decision, LearningPlan
from edge_agent.tools.progress import Progress
from edge_agent.tools.replay import ReplayRow, replay, replay_learning
from edge_agent.tools.table import SensorTable, TableError, read_table
from edge_agent.tools.training import TrainingError, train_model

REPO = Path(__file__).resolve().parent.parent

LEARN_ROWS = 400
PUBLISHED = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared + Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("Isolation Forest (raw features, contamination 0.0005)", 0.29, 2.56, 82.89),
]


def experiment_files(root: Path) -> list[Path]:
    """Every labelled experiment (the anomaly-free file has no faults and is not in the protocol)."""
    return sorted(p for p in root.rglob("*.csv") if p.parent.name != "anomaly-free")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "skab"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="decision.* or learning.* overrides, as for edge-agent")
    ap.add_argument("--per-file", action="store_true", help="also print each file's counts")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    args = ap.parse_args()

    cfg = load_config(None, args.overrides, {})  # the built-in defaults (learning.* included) plus --set
    decision = decision_of(cfg)
    files = experiment_files(Path(args.data))
    if not files:
        print(f"no SKAB files under {args.data}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    fixed, learned = Confusion(), Confusion()
    plan = learning_plan(cfg, rows=LEARN_ROWS)
    progress = Progress(len(files), "SKAB files", quiet=args.quiet)
    skipped: list[str] = []
    for done, path in enumerate(files):
        progress.update(done)
        try:
            table = read_table(path)
            if table.labels is None:
                raise TableError(f"{path}: no anomaly column, so nothing to score against")
            model, _ = train_model(table.head(LEARN_ROWS), name="skab", version=path.stem)
        except (TableError, TrainingError) as e:  # one unreadable file does not end the run
            skipped.append(str(e))
            continue
        counts = fixed.add(replay(table, model, decision, learn_rows=LEARN_ROWS)[LEARN_ROWS:], table.labels[LEARN_ROWS:])
        learned.add(replay_learning(table, plan, decision)[LEARN_ROWS:], table.labels[LEARN_ROWS:])
        if args.per_file:
            print(f"{path.parent.name}/{path.name}: {counts}")
    progress.close()
    skipped_note = report_skipped("eval_skab", skipped)
    if len(skipped) == len(files):
        print(f"no usable SKAB files under {args.data}", file=sys.stderr)
        return 2
    refits = f"refit every {Duration(plan.refit_every)}" if plan.refit_every else "no refits"
    healthy = Path(args.data) / "anomaly-free" / "anomaly-free.csv"
    healthy_line = ""
    healthy_table = read_table(healthy) if healthy.is_file() else None
    if healthy_table is not None and len(healthy_table) <= cfg.learning.rows:
        healthy_line = f"\nanomaly-free recording: not longer than learning.rows {cfg.learning.rows}, nothing to score"
    elif healthy_table is not None:
        flagged, scored = flagged_share(healthy_table, learning_plan(cfg), decision)
        # each field alone: a univariate stream, like a single sensor's
        alone = [flagged_share(read_table(healthy, [f]), learning_plan(cfg), decision) for f in healthy_table.fields]
        shares = [100 * f / n for f, n in alone]
        healthy_line = (f"\nanomaly-free recording, learned as an unknown sensor (learning.rows {cfg.learning.rows}, {refits}): "
                        f"{flagged} of {scored} scored readings flagged ({100 * flagged / scored:.2f} %); "
                        f"each field alone: {', '.join(f'{x:.1f}' for x in shares)} % (mean {sum(shares) / len(shares):.1f} %)")
    elapsed = time.perf_counter() - started
    print(f"SKAB: {len(files) - len(skipped)} files under {args.data}{skipped_note}, first {LEARN_ROWS} rows of each to learn, "
          f"{fixed.total} rows scored in each mode, {elapsed:.1f} s; decision {decision}\n")
    print("| detector | F1 | FAR % | MAR % |")
    print("|---|---|---|---|")
    print(f"| **edge-agent, scikit-learn model of the first {LEARN_ROWS} rows (this run)** | {fixed.row()} |")
    print(f"| **edge-agent learning on the device, numpy fitter, {refits} (this run)** | {learned.row()} |")
    for name, pf1, pfar, pmar in PUBLISHED:
        print(f"| {name} (published, full 34 files) | {pf1:.2f} | {pfar:.2f} | {pmar:.2f} |")
    print(healthy_line)
    return 0


def flagged_share(table: SensorTable, plan: LearningPlan, decision: Decision) -> tuple[int, int]:
    """Readings flagged, and readings scored, when the table's sensor learns as an unknown one."""
    rows = [r for r in replay_learning(table, plan, decision) if not r.learning]
    return sum(r.verdict.anomaly for r in rows), len(rows)


class Confusion:
    """Pooled point-wise counts over every scored row of every file."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def add(self, rows: list[ReplayRow], labels: Iterable[int]) -> dict[str, int]:
        f = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for row, label in zip(rows, labels, strict=True):
            pred = row.verdict.anomaly
            f[("t" if pred == label else "f") + ("p" if pred else "n")] += 1
        self.tp, self.fp, self.fn, self.tn = self.tp + f["tp"], self.fp + f["fp"], self.fn + f["fn"], self.tn + f["tn"]
        return f

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def row(self) -> str:
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn)
        far = 100 * self.fp / (self.fp + self.tn)
        mar = 100 * self.fn / (self.fn + self.tp)
        return f"**{f1:.2f}** | **{far:.2f}** | **{mar:.2f}**"


if __name__ == "__main__":
    sys.exit(main())
