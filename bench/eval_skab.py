"""SKAB evaluation with the benchmark's own protocol, through the agent's replay code.

Usage: python bench/eval_skab.py [--data ../shared/datasets/skab] [--set decision.k=3 ...]

For every experiment file: the first 400 rows train a model (as ``edge-agent replay
--learn-rows 400`` does), the rest is scored as a stream, reading by reading. The
labels of all scored rows are pooled into one confusion matrix; F1, FAR and MAR are
printed next to the published rows of the benchmark's README.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.config import load_config  # noqa: E402
from edge_agent.engine import Decision  # noqa: E402
from edge_agent.progress import Progress  # noqa: E402
from edge_agent.replay import replay  # noqa: E402
from edge_agent.table import read_table  # noqa: E402
from edge_agent.training import train_model  # noqa: E402

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
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="decision.* overrides, as for edge-agent")
    ap.add_argument("--per-file", action="store_true", help="also print each file's counts")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    args = ap.parse_args()

    cfg = load_config(None, args.overrides, {})
    decision = Decision(cfg.decision.threshold, cfg.decision.k, cfg.decision.n)
    files = experiment_files(Path(args.data))
    if not files:
        print(f"no SKAB files under {args.data}", file=sys.stderr)
        return 2
    tp = fp = fn = tn = 0
    started = time.perf_counter()
    progress = Progress(len(files), "SKAB files", quiet=args.quiet)
    for done, path in enumerate(files):
        progress.update(done)
        table = read_table(path)
        assert table.labels is not None, f"{path} has no anomaly column"
        model, _ = train_model(table.head(LEARN_ROWS), name="skab", version=path.stem)
        rows = replay(table, model, decision, learn_rows=LEARN_ROWS)
        f = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for row, label in zip(rows[LEARN_ROWS:], table.labels[LEARN_ROWS:]):
            pred = row.verdict.anomaly
            key = ("t" if pred == label else "f") + ("p" if pred else "n")
            f[key] += 1
        tp, fp, fn, tn = tp + f["tp"], fp + f["fp"], fn + f["fn"], tn + f["tn"]
        if args.per_file:
            print(f"{path.parent.name}/{path.name}: {f}")
    progress.close()
    elapsed = time.perf_counter() - started
    f1 = 2 * tp / (2 * tp + fp + fn)
    far = 100 * fp / (fp + tn)
    mar = 100 * fn / (fn + tp)
    print(f"SKAB: {len(files)} files under {args.data}, first {LEARN_ROWS} rows of each to learn, "
          f"{tp + fp + fn + tn} rows scored in {elapsed:.1f} s; decision {decision}\n")
    print("| detector | F1 | FAR % | MAR % |")
    print("|---|---|---|---|")
    print(f"| **edge-agent (this run)** | **{f1:.2f}** | **{far:.2f}** | **{mar:.2f}** |")
    for name, pf1, pfar, pmar in PUBLISHED:
        print(f"| {name} (published, full 34 files) | {pf1:.2f} | {pfar:.2f} | {pmar:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
