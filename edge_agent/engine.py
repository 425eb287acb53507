"""The scoring core: per-sensor streaming state -> forest -> calibrated score -> decision.

No I/O here. The MQTT pipeline, ``/predict``, ``replay`` and the benchmarks all
call ``ScoringEngine``; that is what makes a backtest and the live agent agree.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.domain import InvalidReading, Reading, Verdict
from edge_agent.features import FeatureState
from edge_agent.model import SensorModel

# Recent readings remembered per sensor to recognise a redelivered one.
RECENT_KEYS = 64


@dataclass(frozen=True)
class Decision:
    """Turns calibrated scores into anomalies: over ``threshold`` in ``k`` of the last ``n``."""

    threshold: float = 0.5
    k: int = 1
    n: int = 1


@dataclass
class SensorStream:
    """What the engine keeps for one sensor between readings."""

    model: SensorModel
    features: FeatureState
    recent_flags: deque[bool]
    recent: OrderedDict[Any, Verdict] = field(default_factory=OrderedDict)


class UnknownSensor(LookupError):
    """No model scores this sensor (no assignment matches and there is no default)."""


class ScoringEngine:
    """Scores readings of many sensors, each with its own model and history."""

    def __init__(
        self,
        models: Mapping[str, SensorModel],
        assign: Sequence[tuple[str, str]] = (),
        default: str | None = None,
        decision: Decision = Decision(),
        max_sensors: int = 10_000,
    ) -> None:
        for pattern, name in assign:
            if name not in models:
                raise KeyError(f"models.assign maps {pattern!r} to model {name!r}, which is not loaded")
        if default is not None and default not in models:
            raise KeyError(f"default model {default!r} is not loaded")
        self.models = dict(models)
        self.assign = list(assign)
        self.default = default
        self.decision = decision
        self.max_sensors = max_sensors
        self._streams: dict[str, SensorStream] = {}
        # The worker scores while HTTP threads call predict(): both read sensor state.
        self._lock = threading.Lock()

    @property
    def sensor_count(self) -> int:
        return len(self._streams)

    def model_for(self, sensor_id: str | None) -> SensorModel:
        if sensor_id is not None:
            stream = self._streams.get(sensor_id)
            if stream is not None:
                return stream.model
            for pattern, name in self.assign:
                if fnmatch.fnmatchcase(sensor_id, pattern):
                    return self.models[name]
        if self.default is None:
            raise UnknownSensor(f"no model for sensor {sensor_id!r}: no models.assign pattern matches and models.default is unset")
        return self.models[self.default]

    def _stream(self, reading: Reading) -> SensorStream | InvalidReading:
        stream = self._streams.get(reading.sensor_id)
        if stream is not None:
            return stream
        if len(self._streams) >= self.max_sensors:
            return _invalid(reading, "too_many_sensors", f"already tracking {self.max_sensors} sensors (pipeline.max_sensors)")
        try:
            model = self.model_for(reading.sensor_id)
        except UnknownSensor as e:
            return _invalid(reading, "no_model", str(e))
        stream = SensorStream(model, model.spec.new_state(), deque(maxlen=self.decision.n))
        self._streams[reading.sensor_id] = stream
        return stream

    def score(self, readings: Sequence[Reading]) -> list[Verdict | InvalidReading]:
        """Score readings in arrival order; one forest call per model for the whole batch."""
        with self._lock:
            return self._score(readings)

    def _score(self, readings: Sequence[Reading]) -> list[Verdict | InvalidReading]:
        results: list[Verdict | InvalidReading | None] = [None] * len(readings)
        rows: dict[int, list[tuple[int, list[float]]]] = {}  # id(model) -> [(index, features)]
        streams: list[SensorStream | None] = [None] * len(readings)
        for i, reading in enumerate(readings):
            stream = self._stream(reading)
            if isinstance(stream, InvalidReading):
                results[i] = stream
                continue
            values = _ordered_values(reading, stream.model)
            if isinstance(values, InvalidReading):
                results[i] = values
                continue
            key = _dedup_key(reading, values)
            if key is not None and key in stream.recent:
                original = stream.recent[key]
                results[i] = _as_duplicate(original, reading)
                continue
            streams[i] = stream
            rows.setdefault(id(stream.model), []).append((i, stream.features.update(values)))

        scores: dict[int, tuple[float, float]] = {}
        for entries in rows.values():
            model = streams[entries[0][0]].model  # type: ignore[union-attr]
            matrix = np.array([f for _, f in entries], dtype=np.float64)
            raw, calibrated = model.score_features(matrix)
            for (i, _), r, c in zip(entries, raw.tolist(), calibrated.tolist()):
                scores[i] = (r, c)

        for i, reading in enumerate(readings):
            stream = streams[i]
            if stream is None:
                continue
            raw, calibrated = scores[i]
            results[i] = self._decide(reading, stream, raw, calibrated)
        return results  # type: ignore[return-value]

    def _decide(self, reading: Reading, stream: SensorStream, raw: float, calibrated: float) -> Verdict:
        stream.recent_flags.append(calibrated >= self.decision.threshold)
        anomaly = int(sum(stream.recent_flags) >= self.decision.k)
        verdict = Verdict(
            sensor_id=reading.sensor_id,
            values=reading.values,
            ts=reading.ts_raw if reading.ts is not None else reading.received_at,
            score=calibrated,
            anomaly=anomaly,
            model=stream.model.name,
            model_version=stream.model.version,
            raw_score=raw,
        )
        key = _dedup_key(reading, list(reading.values.values()), always=True)
        stream.recent[key] = verdict
        if len(stream.recent) > RECENT_KEYS:
            stream.recent.popitem(last=False)
        return verdict

    def predict(self, values: Mapping[str, float], sensor_id: str | None = None) -> Verdict:
        """Score one reading without changing any sensor's history (for ``/predict``).

        With a known ``sensor_id`` the reading is scored in the context of that
        sensor's recent readings; otherwise as a first reading (no history).
        """
        model = self.model_for(sensor_id)
        if len(model.fields) == 1 and len(values) == 1:
            ordered = [float(v) for v in values.values()]
        else:
            missing = [f for f in model.fields if f not in values]
            if missing:
                raise ValueError(f"model {model.name!r} needs field(s) {', '.join(missing)}")
            ordered = [float(values[f]) for f in model.fields]
        with self._lock:
            stream = self._streams.get(sensor_id) if sensor_id is not None else None
            state = stream.features if stream is not None else model.spec.new_state()
            row = state.peek(ordered)
        raw, calibrated = model.score_features(np.array([row], dtype=np.float64))
        score = float(calibrated[0])
        return Verdict(
            sensor_id=sensor_id or "",
            values={f: v for f, v in zip(model.fields, ordered)},
            ts=None,
            score=score,
            anomaly=int(score >= self.decision.threshold),
            model=model.name,
            model_version=model.version,
            raw_score=float(raw[0]),
        )


def _invalid(reading: Reading, reason: str, detail: str) -> InvalidReading:
    return InvalidReading(reason=reason, detail=detail, topic=reading.topic, sensor_id=reading.sensor_id, ack=reading.ack)


def _ordered_values(reading: Reading, model: SensorModel) -> list[float] | InvalidReading:
    values = reading.values
    if len(model.fields) == 1 and len(values) == 1:
        return list(values.values())  # a univariate reading fits any univariate model
    try:
        return [values[f] for f in model.fields]
    except KeyError:
        missing = [f for f in model.fields if f not in values]
        return _invalid(reading, "missing_field", f"model {model.name!r} needs field(s) {', '.join(missing)}")


def _dedup_key(reading: Reading, values: list[float], always: bool = False) -> Any:
    """A key that repeats exactly when the same reading is delivered again.

    With its own timestamp a reading is recognised whenever it comes back; without
    one, only when the transport says it is a redelivery (two equal values in a
    row are normal for a sensor).
    """
    if reading.ts is not None:
        return (reading.ts, tuple(values))
    if always or reading.redelivered:
        return (None, tuple(values))
    return None


def _as_duplicate(original: Verdict, reading: Reading) -> Verdict:
    return Verdict(
        sensor_id=original.sensor_id,
        values=original.values,
        ts=original.ts,
        score=original.score,
        anomaly=original.anomaly,
        model=original.model,
        model_version=original.model_version,
        raw_score=original.raw_score,
        duplicate=True,
    )
