"""The scoring core: per-sensor streaming state -> forest -> calibrated score -> decision.

No I/O here. The MQTT pipeline, ``/predict``, ``replay`` and the benchmarks all
call ``ScoringEngine``; that is what makes a backtest and the live agent agree.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.domain import InvalidReading, Reading, Verdict
from edge_agent.features import DEFAULT_TRANSFORMS, FeatureSpec, FeatureState
from edge_agent.model import SensorModel

# Recent readings remembered per sensor to recognise a redelivered one (a hash of the
# reading and the few fields of its verdict: ~200 bytes each, so 32 cost ~6 KiB a sensor).
RECENT_KEYS = 32


@dataclass(frozen=True)
class Decision:
    """Turns calibrated scores into anomalies: over ``threshold`` in ``k`` of the last ``n``.

    With ``clear`` (hysteresis), a sensor in alert stays anomalous while its score is at
    least ``clear``, even when the k-of-n rule no longer holds.
    """

    threshold: float = 0.5
    k: int = 1
    n: int = 1
    clear: float | None = None


@dataclass(frozen=True)
class LearningPlan:
    """How sensors without an assigned model learn one of their own (see ``LearningConfig``)."""

    rows: int = 3600
    refit_every: int = 3600
    refit_rows: int = 7200
    stale_share: float = 0.5
    leave_out_outliers: bool = False
    features: tuple[str, ...] = DEFAULT_TRANSFORMS  # the streaming features of each field


@dataclass(frozen=True)
class LearnRequest:
    """A sensor's readings, in order, for the learner to fit a model on (away from scoring)."""

    sensor_id: str
    spec: FeatureSpec
    values: np.ndarray
    refit: bool
    keep: np.ndarray | None = None  # the rows to learn from (None: all); features still see every row
    leave_out_outliers: bool = False  # and of those, not the ones a first forest finds far out


# What a duplicate's verdict repeats of the original: score, anomaly, raw score, model, version, learning, onset.
_Remembered = tuple[float, int, "float | None", str, str, bool, bool]


class History:
    """The last ``capacity`` readings of one sensor, and whether each was flagged.

    A float array (~8 bytes a value): a deque of Python lists costs about ten times
    that, which matters when every sensor of a site keeps an hour of readings to learn from.
    """

    __slots__ = ("_rows", "_flags", "_next", "_full")

    def __init__(self, capacity: int, n_fields: int) -> None:
        self._rows = np.empty((capacity, n_fields), dtype=np.float64)
        self._flags = np.zeros(capacity, dtype=bool)
        self._next = 0
        self._full = False

    def append(self, values: Sequence[float], flagged: bool = False) -> None:
        self._rows[self._next] = values
        self._flags[self._next] = flagged
        self._next += 1
        if self._next == len(self._rows):
            self._next, self._full = 0, True

    def __len__(self) -> int:
        return len(self._rows) if self._full else self._next

    def _ordered(self, a: np.ndarray, n: int | None) -> np.ndarray:
        ordered = np.concatenate([a[self._next:], a[: self._next]]) if self._full else a[: self._next]
        return ordered[-n:].copy() if n is not None else ordered.copy()

    def latest(self, n: int | None = None) -> np.ndarray:
        """The newest ``n`` readings (all by default), oldest first, as a copy."""
        return self._ordered(self._rows, n)

    def latest_flags(self, n: int | None = None) -> np.ndarray:
        """Whether each of ``latest(n)`` was flagged."""
        return self._ordered(self._flags, n)


@dataclass
class SensorStream:
    """What the engine keeps for one sensor between readings.

    ``model`` is None while the sensor learns; ``history`` holds the raw readings a
    first fit or a refit learns from (only for sensors that learn).
    """

    model: SensorModel | None
    features: FeatureState
    recent_flags: deque[bool]
    recent: OrderedDict[int, _Remembered] = field(default_factory=OrderedDict)
    history: History | None = None
    since_fit: int = 0
    flagged_since_fit: int = 0
    fitting: bool = False
    window: int = 0  # readings the latest fit was handed (0: none yet, the model came from disk)
    alerting: bool = False

    @property
    def spec(self) -> FeatureSpec:
        return self.features.spec


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
        learning: LearningPlan | None = None,
        learner: Callable[[LearnRequest], None] | None = None,
        learned: Mapping[str, SensorModel] | None = None,
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
        if learning is not None and learner is None:
            raise ValueError("learning needs a learner to fit the models")
        self.learning = learning
        self.learner = learner
        self.learned = dict(learned or {})  # sensor id -> its own model (learned, or loaded from the state dir)
        self._streams: dict[str, SensorStream] = {}
        # The worker scores while HTTP threads call predict(): both read sensor state.
        self._lock = threading.Lock()

    @property
    def sensor_count(self) -> int:
        return len(self._streams)

    def _assigned(self, sensor_id: str) -> SensorModel | None:
        for pattern, name in self.assign:
            if fnmatch.fnmatchcase(sensor_id, pattern):
                return self.models[name]
        return self.learned.get(sensor_id)

    def model_for(self, sensor_id: str | None) -> SensorModel:
        if sensor_id is not None:
            stream = self._streams.get(sensor_id)
            if stream is not None and stream.model is not None:
                return stream.model
            model = self._assigned(sensor_id)
            if model is not None:
                return model
            if stream is not None:
                raise UnknownSensor(f"sensor {sensor_id!r} is still learning its model")
            if self.learning is not None:
                raise UnknownSensor(f"sensor {sensor_id!r} is unknown: no reading of it has arrived and no models.assign pattern matches it")
        if self.default is None:
            raise UnknownSensor(f"no model for sensor {sensor_id!r}: no models.assign pattern matches and models.default is unset")
        return self.models[self.default]

    def _stream(self, reading: Reading) -> SensorStream | InvalidReading:
        stream = self._streams.get(reading.sensor_id)
        if stream is not None:
            return stream
        if len(self._streams) >= self.max_sensors:
            return _invalid(reading, "too_many_sensors", f"already tracking {self.max_sensors} sensors (pipeline.max_sensors)")
        model = self._assigned(reading.sensor_id)
        if model is None and self.learning is not None:
            spec = FeatureSpec(fields=tuple(reading.values), transforms=self.learning.features)
            stream = SensorStream(None, spec.new_state(), deque(maxlen=self.decision.n), history=self._history(len(spec.fields)))
        else:
            if model is None:
                try:
                    model = self.model_for(reading.sensor_id)
                except UnknownSensor as e:
                    return _invalid(reading, "no_model", str(e))
            refits = self.learning is not None and self.learning.refit_every and reading.sensor_id in self.learned
            history = self._history(len(model.spec.fields)) if refits else None
            stream = SensorStream(model, model.spec.new_state(), deque(maxlen=self.decision.n), history=history)
        self._streams[reading.sensor_id] = stream
        return stream

    def _history(self, n_fields: int) -> History:
        assert self.learning is not None
        return History(max(self.learning.rows, self.learning.refit_rows), n_fields)

    def install(self, sensor_id: str, model: SensorModel) -> None:
        """Swap in a sensor's newly learned model (called by the learner, from any thread)."""
        with self._lock:
            self.learned[sensor_id] = model
            stream = self._streams.get(sensor_id)
            if stream is not None:
                if stream.model is None or stream.model.spec == model.spec:
                    stream.model = model
                stream.fitting = False
                stream.since_fit = stream.flagged_since_fit = 0

    def learning_failed(self, sensor_id: str) -> None:
        """The learner could not fit: keep learning and try again with more readings."""
        with self._lock:
            stream = self._streams.get(sensor_id)
            if stream is not None:
                stream.fitting = False
                stream.since_fit = stream.flagged_since_fit = 0

    def score(self, readings: Sequence[Reading]) -> list[Verdict | InvalidReading]:
        """Score readings in arrival order; one forest call per model for the whole batch."""
        with self._lock:
            return self._score(readings)

    def _score(self, readings: Sequence[Reading]) -> list[Verdict | InvalidReading]:
        results: list[Verdict | InvalidReading | None] = [None] * len(readings)
        rows: dict[int, list[tuple[int, list[float]]]] = {}  # id(model) -> [(index, features)]
        streams: list[SensorStream | None] = [None] * len(readings)
        ordered: list[list[float]] = [[]] * len(readings)  # each reading's values in its model's field order
        for i, reading in enumerate(readings):
            stream = self._stream(reading)
            if isinstance(stream, InvalidReading):
                results[i] = stream
                continue
            values = _ordered_values(reading, stream.spec.fields, stream.model.name if stream.model else "learning")
            if isinstance(values, InvalidReading):
                results[i] = values
                continue
            key = _dedup_key(reading, values)
            if key is not None and key in stream.recent:
                results[i] = _as_duplicate(stream.recent[key], reading)
                continue
            features = stream.features.update(values)
            if stream.model is None:
                results[i] = self._learn(reading, stream, values)
                continue
            streams[i] = stream
            ordered[i] = values
            rows.setdefault(id(stream.model), []).append((i, features))

        scores: dict[int, tuple[float, float]] = {}
        for entries in rows.values():
            model = streams[entries[0][0]].model  # type: ignore[union-attr]
            assert model is not None
            if len(entries) == 1:  # the idle case: one reading, no numpy call overhead
                scores[entries[0][0]] = model.score_row(entries[0][1])
                continue
            matrix = np.array([f for _, f in entries], dtype=np.float64)
            raw, calibrated = model.score_features(matrix)
            for (i, _), r, c in zip(entries, raw.tolist(), calibrated.tolist()):
                scores[i] = (r, c)

        for i, reading in enumerate(readings):
            stream = streams[i]
            if stream is None:
                continue
            raw, calibrated = scores[i]
            results[i] = self._decide(reading, stream, ordered[i], raw, calibrated)
        return results  # type: ignore[return-value]

    def _learn(self, reading: Reading, stream: SensorStream, values: list[float]) -> Verdict:
        """A reading of a sensor that is still learning: kept for the fit, never flagged."""
        assert stream.history is not None and self.learning is not None and self.learner is not None
        stream.history.append(values)
        if not stream.fitting and len(stream.history) >= self.learning.rows:
            stream.fitting = True
            stream.window = len(stream.history)
            self.learner(LearnRequest(reading.sensor_id, stream.spec, stream.history.latest(), refit=False,
                                      leave_out_outliers=self.learning.leave_out_outliers))
        verdict = Verdict(
            sensor_id=reading.sensor_id, values=reading.values,
            ts=reading.ts_raw if reading.ts is not None else reading.received_at,
            score=0.0, anomaly=0, model="learning", model_version=f"{len(stream.history)}/{self.learning.rows}",
            learning=True,
        )
        self._remember(reading, stream, values, verdict)
        return verdict

    def _refit_if_due(self, reading: Reading, stream: SensorStream, values: list[float], flagged: bool) -> None:
        """Refit a learned model on its sensor's recent readings, when one is due.

        Due every ``refit_every`` readings, and sooner while the model knows fewer
        readings than that: once as many new ones have come, so a sensor scored after a
        short first look learns from 2x, 4x, ... as much until ``refit_rows``. The refit
        leaves out the flagged readings and those within a feature window of one (an
        anomaly's edges are seldom flagged, and rolling features carry it on), unless
        more than ``stale_share`` of the readings since the last fit were flagged: then
        the sensor has moved to a new normal and the model is stale, so it learns from
        all of them.
        """
        plan = self.learning
        if stream.history is None or plan is None or not plan.refit_every or self.learner is None:
            return
        assert stream.model is not None
        stream.history.append(values, flagged)
        stream.since_fit += 1
        stream.flagged_since_fit += flagged
        known = stream.window or int(stream.model.manifest.get("training", {}).get("rows", plan.refit_rows))
        due = min(plan.refit_every, max(known, plan.rows)) if known < plan.refit_rows else plan.refit_every
        if stream.since_fit < due or stream.fitting or len(stream.history) < plan.rows:
            return
        stream.fitting = True
        recent = stream.history.latest(plan.refit_rows)
        stream.window = len(recent)
        stale = stream.flagged_since_fit > plan.stale_share * stream.since_fit
        keep = None if stale else ~_near(stream.history.latest_flags(plan.refit_rows), stream.spec.history)
        self.learner(LearnRequest(reading.sensor_id, stream.spec, recent, refit=True, keep=keep,
                                  leave_out_outliers=plan.leave_out_outliers))

    def _decide(self, reading: Reading, stream: SensorStream, values: list[float], raw: float, calibrated: float) -> Verdict:
        assert stream.model is not None
        decision = self.decision
        flagged = calibrated >= decision.threshold
        stream.recent_flags.append(flagged)
        alert = sum(stream.recent_flags) >= decision.k
        if not alert and stream.alerting and decision.clear is not None:
            alert = calibrated >= decision.clear
        onset = alert and not stream.alerting
        stream.alerting = alert
        anomaly = int(alert)
        verdict = Verdict(
            sensor_id=reading.sensor_id,
            values=reading.values,
            ts=reading.ts_raw if reading.ts is not None else reading.received_at,
            score=calibrated,
            anomaly=anomaly,
            model=stream.model.name,
            model_version=stream.model.version,
            raw_score=raw,
            onset=onset,
        )
        self._refit_if_due(reading, stream, values, flagged)
        self._remember(reading, stream, values, verdict)
        return verdict

    def _remember(self, reading: Reading, stream: SensorStream, values: list[float], verdict: Verdict) -> None:
        key = _dedup_key(reading, values, always=True)
        stream.recent[key] = (
            verdict.score, verdict.anomaly, verdict.raw_score, verdict.model, verdict.model_version, verdict.learning, verdict.onset
        )
        if len(stream.recent) > RECENT_KEYS:
            stream.recent.popitem(last=False)

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
        raw, score = model.score_row(row)
        return Verdict(
            sensor_id=sensor_id or "",
            values={f: v for f, v in zip(model.fields, ordered)},
            ts=None,
            score=score,
            anomaly=int(score >= self.decision.threshold),
            model=model.name,
            model_version=model.version,
            raw_score=raw,
        )


def _near(flags: np.ndarray, reach: int) -> np.ndarray:
    """Whether each reading is flagged or within ``reach`` readings of a flagged one."""
    if reach <= 0 or not flags.any():
        return flags
    return np.convolve(flags.astype(np.float64), np.ones(2 * reach + 1), mode="same") > 0.5


def _invalid(reading: Reading, reason: str, detail: str) -> InvalidReading:
    return InvalidReading(reason=reason, detail=detail, topic=reading.topic, sensor_id=reading.sensor_id, ack=reading.ack)


def _ordered_values(reading: Reading, fields: Sequence[str], model_name: str) -> list[float] | InvalidReading:
    values = reading.values
    if len(fields) == 1 and len(values) == 1:
        return list(values.values())  # a univariate reading fits any univariate model
    try:
        return [values[f] for f in fields]
    except KeyError:
        missing = [f for f in fields if f not in values]
        return _invalid(reading, "missing_field", f"model {model_name!r} needs field(s) {', '.join(missing)}")


def _dedup_key(reading: Reading, values: list[float], always: bool = False) -> int | None:
    """A key that repeats exactly when the same reading is delivered again.

    With its own timestamp a reading is recognised whenever it comes back; without
    one, only when the transport says it is a redelivery (two equal values in a
    row are normal for a sensor).
    """
    if reading.ts is not None:
        return hash((reading.ts, *values))
    if always or reading.redelivered:
        return hash((None, *values))
    return None


def _as_duplicate(original: _Remembered, reading: Reading) -> Verdict:
    score, anomaly, raw, model, version, learning, onset = original
    return Verdict(
        sensor_id=reading.sensor_id,
        values=reading.values,
        ts=reading.ts_raw if reading.ts is not None else reading.received_at,
        score=score,
        anomaly=anomaly,
        model=model,
        model_version=version,
        learning=learning,
        raw_score=raw,
        duplicate=True,
        onset=onset,
    )
