"""NAB-style scoring of univariate streams, through the agent's learning path.

Usage:
  python -m bench.eval_nab                      # ../shared/datasets/nab-dev, the benchmark's dev split
  python -m bench.eval_nab --data NAB/data --labels NAB/labels/combined_windows.json
  python -m bench.eval_nab --simulate 12        # a corpus of simulator streams in NAB's layout

Every CSV (``timestamp,value``) is one sensor the agent has no model for: it learns
from the file's probationary period (15 % of its rows, at most 750, as NAB has it),
then is scored and refitted as the ``learning.*`` settings say (``--set`` overrides
them, as for edge-agent). Three things are scored from the same run: the verdicts'
``anomaly`` flags (every anomalous reading), their ``onset`` events (the first reading of
each anomalous episode: the agent's alerts as deployed), and the per-reading ``score`` at
the one corpus-wide threshold the benchmark's own search would pick (``sweep``).

Scoring follows the Numenta Anomaly Benchmark: within each labelled window only the
earliest detection counts, weighted by a scaled sigmoid of its position (earlier is
worth more); a detection outside every window costs the profile's false-positive
weight, scaled by how far past the last window it lies; a window without a detection
costs the false-negative weight; detections in the probationary period are ignored.
The score is normalised per profile over the whole corpus: 0 is a detector that never
fires, 100 one that flags the first row of every window.

``--results DIR`` also writes what the benchmark's official scorer reads (its
``run.py --optimize --score --normalize``): DIR/<detector>/<category>/<detector>_<file>.csv
with ``timestamp,value,anomaly_score,label`` rows, for two detectors: ``edgeAgent``, whose
``anomaly_score`` is the verdicts' per-reading score, and ``edgeAgentOnsets``, whose score
is 1 on the agent's alert onsets and 0 elsewhere. ``label`` is 1 inside a window, as NAB's
own runner writes it. Any NAB data folder and labels file can be scored this way, the
categories held back from this repository's copy included.

``--simulate N`` writes N streams of the bundled simulator (one reading every 5
minutes for 14 days, 4,032 rows like many NAB files, about two injected anomalies
each) and NAB windows around each injection (10 % of the file's rows shared among
its anomalies, centred on the start). These are this project's own data, not NAB's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.corpus import report_skipped
from edge_agent.agent import decision_of, learning_plan
from edge_agent.config import load_config
from edge_agent.core.episodes import ONSET
from edge_agent.tools.progress import Progress
from edge_agent.tools.replay import replay_learning
from edge_agent.tools.table import TableError, read_table
from edge_agent.tools.training import TrainingError
from simulator.streams import Simulation

REPO = Path(__file__).resolve().parent.parent

# NAB's application profiles (config/profiles.json): weights of a true positive, a
# false negative and a false positive.
PROFILES = {
    "standard": (1.0, 1.0, 0.11),
    "reward_low_FP_rate": (1.0, 1.0, 0.22),
    "reward_low_FN_rate": (1.0, 2.0, 0.11),
}
PROBATION_SHARE, PROBATION_MAX = 0.15, 750
NAB_DEV = REPO.parent / "shared" / "datasets" / "nab-dev"
WINDOW_SHARE = 0.10
NAB_TIME = "%Y-%m-%d %H:%M:%S"


def probation(rows: int) -> int:
    return min(math.floor(PROBATION_SHARE * rows), PROBATION_MAX)


def learning_rows(rows: int) -> int:
    """Readings a file's sensor learns from: its probationary period, and at least
    learning.rows' minimum of 50."""
    return max(50, probation(rows))


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection: near 1 early in a window (-1), 0 at its end, towards -1 past it."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


EARLIEST = scaled_sigmoid(-1.0)  # a detection on a window's first row; NAB scales true positives by it


@dataclass
class FileScore:
    """One file's detections against its windows, ready to weigh with any profile."""

    window_hits: list[float | None]  # per window: the weight of its earliest detection, 1 on its first row
    false_positives: list[float]  # per detection outside every window: its (negative) sigmoid weight

    def raw(self, tp: float, fn: float, fp: float) -> float:
        hits = sum(tp * w for w in self.window_hits if w is not None)
        misses = sum(1 for w in self.window_hits if w is None)
        return hits - fn * misses + fp * sum(self.false_positives)


def score_file(detections: Sequence[int], windows: Sequence[tuple[int, int]]) -> FileScore:
    """Detections (one 0/1 per row) against windows (inclusive row ranges).

    Rows of the probationary period count for nothing: neither their detections nor
    a window that lies wholly inside it.
    """
    start = probation(len(detections))
    windows = [w for w in windows if w[1] >= start]
    hits: list[float | None] = [None] * len(windows)
    false_positives: list[float] = []
    for i, flagged in enumerate(detections):
        if not flagged or i < start:
            continue
        inside = next((k for k, (a, b) in enumerate(windows) if a <= i <= b), None)
        if inside is not None:
            a, b = windows[inside]
            weight = scaled_sigmoid(-(b - i + 1) / (b - a + 1)) / EARLIEST
            if hits[inside] is None:
                hits[inside] = weight  # the earliest detection of the window
            continue
        before = [w for w in windows if w[1] < i]
        if before:
            a, b = before[-1]
            false_positives.append(scaled_sigmoid((i - b) / max(1, b - a)))
        else:
            false_positives.append(-1.0)
    return FileScore(hits, false_positives)


def row_weights(n_rows: int, windows: Sequence[tuple[int, int]]) -> tuple[list[int | None], list[float]]:
    """Per row: the window it lies in (None outside every window, or in the probationary
    period) and its weight as a detection: the scaled true-positive weight inside a
    window, the false-positive sigmoid weight outside (NaN in the probationary period)."""
    start = probation(n_rows)
    windows = [w for w in windows if w[1] >= start]
    where: list[int | None] = [None] * n_rows
    weight = [math.nan] * n_rows
    k = 0
    for i in range(start, n_rows):
        while k < len(windows) and windows[k][1] < i:
            k += 1
        if k < len(windows) and windows[k][0] <= i:
            a, b = windows[k]
            where[i] = k
            weight[i] = scaled_sigmoid(-(b - i + 1) / (b - a + 1)) / EARLIEST
        elif k > 0:
            a, b = windows[k - 1]
            weight[i] = scaled_sigmoid((i - b) / max(1, b - a))
        else:
            weight[i] = -1.0
    return where, weight


@dataclass
class Sweep:
    """The corpus-wide threshold the benchmark picks for a score, and what it gives."""

    threshold: float
    normalised: float
    detected: int
    false_positives: int


def sweep(files: Sequence[tuple[Sequence[float], Sequence[tuple[int, int]]]], tp: float, fn: float, fp: float) -> Sweep:
    """NAB's threshold search, exactly: one threshold for every file (a row whose score
    reaches it is a detection), the one that maximises the corpus's total score.

    Rows are taken in falling score order; each one added as a detection either moves its
    window's earliest detection (inside a window) or adds a false positive (outside), so
    every threshold's total is known in one pass over the sorted rows.
    """
    rows: list[tuple[float, int, int]] = []  # (score, file, row)
    layout = []
    windows_total = 0
    for f, (scores, windows) in enumerate(files):
        where, weight = row_weights(len(scores), windows)
        windows_total += sum(1 for w in windows if w[1] >= probation(len(scores)))
        layout.append((where, weight))
        rows.extend((float(s), f, i) for i, s in enumerate(scores) if not math.isnan(weight[i]))
    rows.sort(key=lambda r: -r[0])
    earliest: dict[tuple[int, int], int] = {}
    total = -fn * windows_total
    best = Sweep(math.inf, 0.0, 0, 0)
    best_total = total
    detected = false_pos = 0
    for j, (score, f, i) in enumerate(rows):
        where, weight = layout[f]
        k = where[i]
        if k is None:
            total += fp * weight[i]
            false_pos += 1
        else:
            before = earliest.get((f, k))
            if before is None:
                total += tp * weight[i] + fn
                earliest[(f, k)] = i
                detected += 1
            elif i < before:
                total += tp * (weight[i] - weight[before])
                earliest[(f, k)] = i
        if (j + 1 == len(rows) or rows[j + 1][0] < score) and total > best_total:
            best_total = total
            best = Sweep(score, 0.0, detected, false_pos)
    null, perfect = -fn * windows_total, tp * windows_total
    best.normalised = 100 * (best_total - null) / (perfect - null) if perfect != null else 0.0
    return best


def window_rows(timestamps: Sequence[float | None], spans: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Labelled windows (start and end timestamps) as inclusive row ranges."""
    out = []
    for lo, hi in spans:
        rows = [i for i, t in enumerate(timestamps) if t is not None and lo <= t <= hi]
        if rows:
            out.append((rows[0], rows[-1]))
    return out


def simulate(folder: Path, streams: int, seed: int) -> Path:
    """A corpus in NAB's layout: data/sim/<sensor>.csv and labels/combined_windows.json."""
    rows = 14 * 288  # two weeks at one reading every 5 minutes
    sim = Simulation(n_sensors=streams, rate=1 / 300, seed=seed, start=1_735_689_600.0,
                     anomaly_rate=1 / 2000, warmup=probation(rows) + 50, anomaly_gap=200)
    per_sensor: dict[str, list] = {}
    for r in sim.iter_readings(count=rows * streams):
        per_sensor.setdefault(r.sensor_id, []).append(r)
    labels: dict[str, list[list[str]]] = {}
    (folder / "data" / "sim").mkdir(parents=True)
    for sensor, readings in per_sensor.items():
        name = f"sim/{sensor}.csv"
        with open(folder / "data" / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["timestamp", "value"])
            for r in readings:
                writer.writerow([_nab_time(r.ts), r.value])
        starts = [i for i, r in enumerate(readings) if r.anomaly_id and (i == 0 or readings[i - 1].anomaly_id != r.anomaly_id)]
        width = math.floor(WINDOW_SHARE * len(readings) / max(1, len(starts)))
        labels[name] = [
            [_nab_time(readings[max(0, s - width // 2)].ts), _nab_time(readings[min(len(readings) - 1, s + width // 2)].ts)]
            for s in starts
        ]
    (folder / "labels").mkdir()
    (folder / "labels" / "combined_windows.json").write_text(json.dumps(labels, indent=1))
    return folder


def _nab_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime(NAB_TIME)


def _parse_nab_time(text: str) -> float:
    return datetime.strptime(text.split(".", maxsplit=1)[0], NAB_TIME).replace(tzinfo=timezone.utc).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="NAB's data folder (sub-folders of timestamp,value CSVs)")
    ap.add_argument("--labels", help="NAB's labels/combined_windows.json")
    ap.add_argument("--simulate", type=int, metavar="N", help="score N simulator streams written in NAB's layout instead")
    ap.add_argument("--seed", type=int, default=11, help="simulator seed for --simulate (default 11)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="learning.* or decision.* overrides")
    ap.add_argument("--per-file", action="store_true", help="also print each file's standard score")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="files replayed at once (default: one per CPU)")
    ap.add_argument("--dump", metavar="JSON", help="write every file's scores, flags, events and windows here, for a closer look")
    ap.add_argument("--results", metavar="DIR", help="also write results files in NAB's layout here, for its official scorer")
    args = ap.parse_args()
    if args.simulate is None and args.data is None and args.labels is None and NAB_DEV.is_dir():
        args.data, args.labels = str(NAB_DEV / "data"), str(NAB_DEV / "windows.json")
    if (args.simulate is None) == (args.data is None or args.labels is None):
        ap.error("give --data and --labels, or --simulate N")

    with tempfile.TemporaryDirectory() as tmp:
        if args.simulate is not None:
            corpus = simulate(Path(tmp), args.simulate, args.seed)
            data, labels_path = corpus / "data", corpus / "labels" / "combined_windows.json"
        else:
            data, labels_path = Path(args.data), Path(args.labels)
        labels = json.loads(labels_path.read_text())
        cfg = load_config(None, args.overrides, {})
        decision = decision_of(cfg)
        scores: dict[str, dict[str, FileScore]] = {"anomaly": {}, "onset": {}}
        per_reading: list[tuple[list[float], list[tuple[int, int]]]] = []
        dump: dict[str, dict[str, object]] = {}
        progress = Progress(len(labels), "NAB files", quiet=args.quiet)
        skipped: list[str] = []
        # Files are independent sensors: replayed in parallel, taken in name order.
        tasks = [(data / name, labels[name], args.overrides) for name in sorted(labels)]
        with multiprocessing.Pool(max(1, min(args.jobs, len(tasks)))) as pool:
            replayed = []
            for result in pool.imap(_replay_file, tasks):
                replayed.append(result)
                progress.update(len(replayed))
        for name, result in zip(sorted(labels), replayed, strict=True):
            if isinstance(result, str):  # one unreadable file does not end the run
                skipped.append(result)
                continue
            windows = result["windows"]
            per_reading.append((result["score"], windows))
            dump[name] = result
            if args.results:
                write_results(Path(args.results), name, result)
            scores["anomaly"][name] = score_file(result["anomaly"], windows)
            scores["onset"][name] = score_file([int(e == ONSET) for e in result["event"]], windows)
            if args.per_file:
                s = scores["anomaly"][name]
                print(f"{name}: windows {len(windows)}, detected {sum(w is not None for w in s.window_hits)}, "
                      f"flags outside windows {len(s.false_positives)}, onsets outside {len(scores['onset'][name].false_positives)}")
        progress.close()
    if args.dump:
        Path(args.dump).write_text(json.dumps(dump))
    skipped_note = report_skipped("eval_nab", skipped)
    if len(skipped) == len(labels):
        print(f"no usable files among the {len(labels)} that {labels_path} names", file=sys.stderr)
        return 2

    source = f"{args.simulate} simulator streams (seed {args.seed})" if args.simulate is not None else str(data)
    print(f"NAB-style: {len(labels) - len(skipped)} files from {source}{skipped_note}; decision {decision}, "
          f"learning.refit_every {cfg.learning.refit_every}\n")
    print("| detections | windows | detected | outside windows | " + " | ".join(PROFILES) + " |")
    print("|---|---|---|---|" + "---|" * len(PROFILES))
    for kind, label in (("anomaly", "every anomalous reading"), ("onset", "episode onsets")):
        files = list(scores[kind].values())
        windows_total = sum(len(s.window_hits) for s in files)
        detected = sum(w is not None for s in files for w in s.window_hits)
        outside = sum(len(s.false_positives) for s in files)
        cells = [f"{normalised(files, *weights):.1f}" for weights in PROFILES.values()]
        print(f"| {label} | {windows_total} | {detected} | {outside} | " + " | ".join(cells) + " |")
    swept = {profile: sweep(per_reading, *weights) for profile, weights in PROFILES.items()}
    std = swept["standard"]
    print(f"| per-reading score, best corpus threshold ({std.threshold:.4f} standard) | {sum(1 for _, w in per_reading for _ in w)} "
          f"| {std.detected} | {std.false_positives} | " + " | ".join(f"{s.normalised:.1f}" for s in swept.values()) + " |")
    print("\nscores: 0 = a detector that never fires, 100 = one that flags the first row of every window")
    return 0


def write_results(folder: Path, name: str, result: dict[str, Any]) -> None:
    """One replayed file as NAB's runner would have written it, once per detector (the
    per-reading score, and the alert onsets): ``folder/<detector>/<category>/<detector>_<file>.csv``."""
    inside = [0] * len(result["score"])
    for a, b in result["windows"]:
        inside[a:b + 1] = [1] * (b - a + 1)
    category, _, file_name = name.rpartition("/")
    scores = {"edgeAgent": result["score"], "edgeAgentOnsets": [float(e == ONSET) for e in result["event"]]}
    for detector, detector_scores in scores.items():
        path = folder / detector / category / f"{detector}_{file_name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["timestamp", "value", "anomaly_score", "label"])
            for ts, value, score, label in zip(result["ts"], result["value"], detector_scores, inside, strict=True):
                writer.writerow(["" if ts is None else _nab_time(ts), format(value, ".12g"), f"{score:.6f}", label])


def _replay_file(task: tuple[Path, list[list[str]], list[str]]) -> dict[str, Any] | str:
    """One file replayed as a sensor that learns: every reading's score, flag, event and raw
    score, with the file's windows as row ranges; or why the file could not be used."""
    path, spans, overrides = task
    cfg = load_config(None, overrides, {})
    try:
        table = read_table(path, ["value"])
        plan = learning_plan(cfg, rows=learning_rows(len(table)))
        verdicts = [r.verdict for r in replay_learning(table, plan, decision_of(cfg))]
    except (TableError, TrainingError) as e:
        return str(e)
    windows = window_rows(table.timestamps, [(_parse_nab_time(a), _parse_nab_time(b)) for a, b in spans])
    return {"score": [v.score for v in verdicts], "anomaly": [v.anomaly for v in verdicts],
            "event": [v.event for v in verdicts], "windows": windows, "value": table.values[:, 0].tolist(),
            "raw": [v.raw_score for v in verdicts], "model_score": [v.model_score for v in verdicts],
            "ts": list(table.timestamps)}


def normalised(files: Sequence[FileScore], tp: float, fn: float, fp: float) -> float:
    """NAB's normalised score over a corpus: 0 for no detections, 100 for perfect ones."""
    windows_total = sum(len(s.window_hits) for s in files)
    raw = sum(s.raw(tp, fn, fp) for s in files)
    null, perfect = -fn * windows_total, tp * windows_total
    return 100 * (raw - null) / (perfect - null) if perfect != null else 0.0


if __name__ == "__main__":
    sys.exit(main())
