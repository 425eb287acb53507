"""``edge-agent evaluate``: how the agent would have done on a user's labelled CSV.

The file is replayed exactly as ``edge-agent replay`` does (``edge_agent.tools.replay``: the sensor
learns from its first rows as the live agent would, or a given model scores it), then the
verdicts of the scored rows are compared with the file's own label column: the figures the
benchmarks in bench/ give (F1, false-alarm rate, delay per labelled event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_agent.tools.replay import ReplayRow
from edge_agent.tools.table import META_COLUMNS, SensorTable, TableError, read_table


@dataclass(frozen=True)
class Event:
    """A labelled stretch of scored rows and how the agent met it."""

    start: int  # row index (0-based, in the file's data rows)
    end: int  # exclusive
    detected_at: int | None  # first flagged row inside the stretch
    delay_seconds: float | None  # from the stretch's first timestamp to the detection's, when known

    @property
    def delay_rows(self) -> int | None:
        return None if self.detected_at is None else self.detected_at - self.start


@dataclass(frozen=True)
class Evaluation:
    scored: int
    learning: int
    tp: int
    fp: int
    fn: int
    normal: int  # scored rows labelled normal
    events: list[Event]
    false_alarm_stretches: int  # runs of flagged rows wholly outside labelled events

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_alarm_rate(self) -> float:
        """Share of the scored normal rows that were flagged."""
        return self.fp / self.normal if self.normal else 0.0


def read_labelled(path: str | Path, label_column: str, columns: Sequence[str] | None) -> SensorTable:
    """The file's readings with ``label_column`` (non-zero: anomalous) as its labels; TableError naming what is wrong."""
    probe = read_table(path, columns) if columns else None
    header = probe.header if probe is not None else _header(path)
    if label_column not in header:
        raise TableError(f"{path}: no label column {label_column!r}; columns are {', '.join(header)}")
    if columns and label_column in columns:
        raise TableError(f"{path}: {label_column!r} is the label column and cannot also be a value column")
    fields = list(columns) if columns else [h for h in header if h and h.lower() not in META_COLUMNS and h != label_column]
    if not fields:
        raise TableError(f"{path}: no value columns besides {', '.join(header)}; name them with --columns")
    table = read_table(path, fields)
    at = table.header.index(label_column)
    labels = np.empty(len(table), dtype=np.float64)
    for i, row in enumerate(table.rows):
        cell = row[at].strip()
        try:
            labels[i] = float(cell or 0)
        except ValueError:
            raise TableError(f"{path}: row {i + 2}, label column {label_column!r}: {cell[:20]!r} is not 0/1") from None
    return replace(table, labels=(labels != 0).astype(np.float64))


def _header(path: str | Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: cannot read: {e}") from None
    delimiter = ";" if first.count(";") > first.count(",") else ","
    return [h.strip() for h in first.rstrip("\r\n").split(delimiter)]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def evaluate(rows: Sequence[ReplayRow], labels: np.ndarray, timestamps: Sequence[float | None]) -> Evaluation:
    """Compare the verdicts of the scored rows with ``labels`` (rows that trained the model are left out)."""
    scored = np.array([not r.learning for r in rows])
    flagged = np.array([r.verdict.anomaly == 1 for r in rows]) & scored
    truth = (np.asarray(labels[: len(rows)]) > 0) & scored
    events = []
    for start, end in _runs(truth):
        hits = np.flatnonzero(flagged[start:end])
        at = start + int(hits[0]) if len(hits) else None
        delay = None
        if at is not None and timestamps[start] is not None and timestamps[at] is not None:
            delay = float(timestamps[at]) - float(timestamps[start])  # type: ignore[arg-type]
        events.append(Event(start, end, at, delay))
    outside = flagged & ~(np.asarray(labels[: len(rows)]) > 0)
    return Evaluation(
        scored=int(scored.sum()), learning=int((~scored).sum()),
        tp=int((flagged & truth).sum()), fp=int((flagged & ~truth).sum()), fn=int((~flagged & truth).sum()),
        normal=int((scored & ~truth).sum()), events=events, false_alarm_stretches=len(_runs(outside)),
    )


def report(result: Evaluation, path: str) -> str:
    """The figures as a short text report."""
    lines = [
        f"{Path(path).name}: {result.scored} rows scored ({result.learning} learned from, not counted)",
        f"  F1 {result.f1:.3f}   precision {result.precision:.3f}   recall {result.recall:.3f}   (per row)",
        (f"  false alarms: {result.fp} of {result.normal} normal rows flagged ({100 * result.false_alarm_rate:.2f} %), "
        f"in {result.false_alarm_stretches} stretch(es)"),
    ]
    found = [e for e in result.events if e.detected_at is not None]
    lines.append(f"  labelled events: {len(result.events)}, detected {len(found)}")
    for e in result.events:
        where = f"rows {e.start + 2}-{e.end + 1}"  # as a spreadsheet numbers them (header is row 1)
        if e.detected_at is None:
            lines.append(f"    {where}: missed")
        else:
            seconds = f", {e.delay_seconds:g} s" if e.delay_seconds is not None else ""
            lines.append(f"    {where}: detected after {e.delay_rows} row(s){seconds}")
    return "\n".join(lines)
