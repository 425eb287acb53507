"""Backtesting: stream a CSV of readings through the same scoring core as the live agent."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.core.domain import InvalidReading, Reading, Verdict
from edge_agent.core.engine import Decision, LearningPlan, ScoringEngine
from edge_agent.core.model import SensorModel
from edge_agent.tools.table import SensorTable
from edge_agent.tools.training import TrainingError, fit_request

# Rows handed to the engine at once: the size of a busy live batch. Scores do not
# depend on it (features are computed reading by reading).
REPLAY_BATCH = 512
DEFAULT_SENSOR = "replay"


@dataclass(frozen=True)
class ReplayRow:
    """One input row's verdict; ``learning`` rows trained the model and are never flagged."""

    verdict: Verdict
    learning: bool


def readings_of(table: SensorTable, start: int = 0, stop: int | None = None) -> Iterator[Reading]:
    for i in range(start, len(table) if stop is None else stop):
        sensor = table.sensor_ids[i] if table.sensor_ids is not None else DEFAULT_SENSOR
        ts = table.timestamps[i]
        yield Reading(
            sensor_id=sensor,
            values=dict(zip(table.fields, table.values[i].tolist(), strict=True)),
            received_at=float(i),
            ts=ts,
            ts_raw=table.timestamp_raw[i] if ts is not None else None,
        )


def replay(
    table: SensorTable, model: SensorModel, decision: Decision, learn_rows: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[ReplayRow]:
    """Score every row in order; the first ``learn_rows`` only warm up the streams."""
    engine = ScoringEngine({model.name: model}, default=model.name, decision=decision, max_sensors=1_000_000)
    out: list[ReplayRow] = []
    batch: list[Reading] = []

    def flush() -> None:
        for reading, result in zip(batch, engine.score(batch).results, strict=True):
            if isinstance(result, InvalidReading):
                raise ValueError(f"{table.path}: row for sensor {reading.sensor_id!r}: {result.reason}: {result.detail}")
            out.append(ReplayRow(result, learning=len(out) < learn_rows))
        batch.clear()
        if progress is not None:
            progress(len(out))

    for reading in readings_of(table):
        batch.append(reading)
        if len(batch) >= REPLAY_BATCH or len(out) + len(batch) == learn_rows:
            flush()
    flush()
    return out


def learn_and_score(
    readings: Iterable[Reading], plan: LearningPlan, decision: Decision,
) -> Iterator[tuple[Reading, Verdict | InvalidReading]]:
    """Score readings as the live agent scores sensors it has no model for.

    Each sensor learns as ``plan`` says, is scored, and is refitted, with the device's
    numpy fitter. Fits happen in line, right after the reading that makes one due (the
    live agent fits on a background thread, so there a few more readings may meet the
    previous model).
    """
    engine = ScoringEngine({}, decision=decision, max_sensors=1_000_000, learning=plan)
    for reading in readings:
        scored = engine.score([reading])
        yield reading, scored.results[0]
        for request in scored.learn_requests:
            try:
                model = fit_request(request, version=f"reading-{reading.received_at:.0f}")
            except TrainingError:
                engine.learning_failed(request.sensor_id)
                continue
            engine.install(request.sensor_id, model, learned_flagged=request.keep is None)


def replay_learning(
    table: SensorTable, plan: LearningPlan, decision: Decision, progress: Callable[[int], None] | None = None,
) -> list[ReplayRow]:
    """Every row's verdict when each sensor of the table learns as in ``learn_and_score``."""
    out: list[ReplayRow] = []
    for reading, result in learn_and_score(readings_of(table), plan, decision):
        if isinstance(result, InvalidReading):
            raise ValueError(f"{table.path}: row for sensor {reading.sensor_id!r}: {result.reason}: {result.detail}")
        out.append(ReplayRow(result, learning=result.learning))
        if progress is not None and len(out) % REPLAY_BATCH == 0:
            progress(len(out))
    if progress is not None:
        progress(len(out))
    return out


REPLAY_COLUMNS = ("score", "raw_score", "anomaly", "phase", "onset")


def output_header(input_header: Sequence[str]) -> list[str]:
    """The input's columns, then REPLAY_COLUMNS. An input column of one of those names (a
    labelled file's ``anomaly``) is renamed ``<name>_input``, so that every name is read once."""
    return [f"{c}_input" if c in REPLAY_COLUMNS else c for c in input_header] + list(REPLAY_COLUMNS)


def write_replay(path: str | Path, table: SensorTable, rows: Sequence[ReplayRow]) -> None:
    """The input columns, then score, raw_score, anomaly (0 for learning rows), phase and onset."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(output_header(table.header))
        for source, row in zip(table.rows, rows, strict=True):
            v = row.verdict
            writer.writerow([
                *source,
                f"{v.score:.6f}",
                f"{v.raw_score:.6f}" if v.raw_score is not None else "",
                0 if row.learning else v.anomaly,
                "learn" if row.learning else "score",
                int(v.onset),
            ])
