"""Reading sensor CSV files (training data, replays, benchmarks) into columns of floats.

Accepts ``,`` or ``;`` separated files with a header. Known meta columns
(timestamps, sensor ids, labels) are kept apart; every other column is a numeric
sensor field unless the caller names the fields to use.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_agent.core.timestamps import BadTimestamp, epoch_seconds_of_text

TIMESTAMP_COLUMNS = ("timestamp", "datetime", "time", "ts")
SENSOR_COLUMN = "sensor_id"
LABEL_COLUMNS = ("anomaly", "label")
# Columns a simulator or benchmark file carries that are never model inputs.
META_COLUMNS = frozenset(TIMESTAMP_COLUMNS + (SENSOR_COLUMN,) + LABEL_COLUMNS + ("kind", "anomaly_kind", "anomaly_id", "changepoint"))


class TableError(ValueError):
    """A CSV file that cannot be used, with the file, row and column named."""


@dataclass
class SensorTable:
    """Rows of readings: ``values[i]`` holds the fields of row i in ``fields`` order."""

    path: str
    header: list[str]
    rows: list[list[str]]
    fields: list[str]
    values: np.ndarray
    timestamps: list[float | None]
    timestamp_raw: list[str | None]
    sensor_ids: list[str] | None
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int, keep_labels: bool = False) -> SensorTable:
        """The first ``n`` rows (without labels unless asked: a learning period is taken as it is)."""
        return replace(
            self, rows=self.rows[:n], values=self.values[:n], timestamps=self.timestamps[:n],
            timestamp_raw=self.timestamp_raw[:n],
            sensor_ids=self.sensor_ids[:n] if self.sensor_ids is not None else None,
            labels=self.labels[:n] if keep_labels and self.labels is not None else None,
        )


def read_table(
    path: str | Path, fields: Sequence[str] | None = None, prefer: Sequence[str] | None = None
) -> SensorTable:
    """Read a CSV of readings; ``fields`` picks the value columns (default: every non-meta column).

    ``prefer`` names columns to use instead of the default when the file has them all
    (a model's fields, when replaying a file that holds more).
    """
    path = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            sample = f.read(8192)
            f.seek(0)
            delimiter = ";" if sample.count(";") > sample.count(",") else ","
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{path}: the file is empty (a header row is needed)")
            header = [h.strip() for h in header]
            rows = [r for r in reader if r]
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: cannot read: {e}") from None

    index = {name: i for i, name in enumerate(header)}
    if not fields and prefer and all(c in index for c in prefer):
        fields = prefer
    if fields:
        unknown = [c for c in fields if c not in index]
        if unknown:
            raise TableError(f"{path}: no column {', '.join(map(repr, unknown))}; columns are {', '.join(header)}")
        chosen = list(fields)
    else:
        chosen = [h for h in header if h.lower() not in META_COLUMNS and h]
        if not chosen:
            raise TableError(f"{path}: no value columns besides {', '.join(header)}; name them with --columns")

    values = np.empty((len(rows), len(chosen)), dtype=np.float64)
    cols = [index[c] for c in chosen]
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise TableError(f"{path}: row {r + 2} has {len(row)} cells, the header has {len(header)}")
        for c, ci in enumerate(cols):
            cell = row[ci]
            try:
                x = float(cell)
            except ValueError:
                raise TableError(f"{path}: row {r + 2}, column {chosen[c]!r}: {cell!r} is not a number") from None
            if not math.isfinite(x):
                raise TableError(f"{path}: row {r + 2}, column {chosen[c]!r}: {cell!r} is not a finite number")
            values[r, c] = x

    ts_col = next((index[h] for h in header if h.lower() in TIMESTAMP_COLUMNS), None)
    timestamp_raw: list[str | None] = [row[ts_col] for row in rows] if ts_col is not None else [None] * len(rows)
    timestamps: list[float | None] = [None] * len(rows)
    if ts_col is not None:
        for r, row in enumerate(rows):
            try:  # the rule the live agent applies to a payload's ts
                timestamps[r] = epoch_seconds_of_text(row[ts_col], header[ts_col])
            except BadTimestamp as e:
                raise TableError(f"{path}: row {r + 2}: {e}") from None
    sensor_ids = [row[index[SENSOR_COLUMN]] for row in rows] if SENSOR_COLUMN in index else None
    label_col = next((index[h] for h in header if h.lower() in LABEL_COLUMNS and h not in chosen), None)
    labels = None
    if label_col is not None:
        try:
            labels = np.array([float(row[label_col] or 0) for row in rows], dtype=np.float64)
        except ValueError:
            raise TableError(f"{path}: column {header[label_col]!r} must hold 0/1 labels") from None
    return SensorTable(path, header, rows, chosen, values, timestamps, timestamp_raw, sensor_ids, labels)


def groups(table: SensorTable) -> dict[str, np.ndarray]:
    """Row indices per sensor, in file order (one group "" when there is no sensor_id column)."""
    if table.sensor_ids is None:
        return {"": np.arange(len(table))}
    out: dict[str, list[int]] = {}
    for i, s in enumerate(table.sensor_ids):
        out.setdefault(s, []).append(i)
    return {s: np.asarray(ix) for s, ix in out.items()}
