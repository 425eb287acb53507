"""The scoring core: readings in, verdicts and learn requests out. No I/O.

The MQTT pipeline, ``/predict``, ``replay`` and the benchmarks all call ``ScoringEngine``;
that is what makes a backtest and the live agent agree. Each part of the work has a module
of its own, and this one only puts them in order for each reading:

- ``routing``: which model scores a sensor;
- ``dedup``: a reading delivered twice gets its first verdict again;
- ``detector``: the sensor's context of recent normal readings, and its features in it;
- the model (``model``): forest, calibration and range check give the score, raised for a
  reading past the sensor's ``records``;
- ``episodes``: score -> anomaly, with an episode's onset, end and new normal;
- ``adaptation``: when a sensor learns, refits or takes a new normal in.

``score`` returns the verdicts and the learn requests of a batch; it calls nothing out
while it holds its lock, so a learner may call ``install`` from any thread.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.core.adaptation import LearningPlan, LearnRequest, SensorAdaptation
from edge_agent.core.dedup import RecentReadings
from edge_agent.core.detector import SensorContext
from edge_agent.core.domain import InvalidReading, Reading, Verdict
from edge_agent.core.episodes import NEW_NORMAL, Decision, EpisodeState, judge
from edge_agent.core.features import FeatureSpec
from edge_agent.core.model import CALIBRATION_SCORES, SensorModel
from edge_agent.core.records import record_score
from edge_agent.core.routing import ModelRouter, UnknownSensor

__all__ = ["Decision", "LearningPlan", "LearnRequest", "Scored", "ScoringEngine", "UnknownSensor"]


@dataclass
class SensorStream:
    """What the engine keeps for one sensor between readings.

    ``model`` is None while the sensor learns; ``adaptation`` exists for sensors that
    learn their own model. ``adapting``: a new normal was declared and its refit is not
    installed yet; readings meanwhile move the context and open no episode.
    """

    model: SensorModel | None
    context: SensorContext
    episode: EpisodeState
    recent: RecentReadings = field(default_factory=RecentReadings)
    adaptation: SensorAdaptation | None = None
    adapting: bool = False

    @property
    def spec(self) -> FeatureSpec:
        return self.context.spec


@dataclass
class Scored:
    """A batch's results, one per reading in order, the fits it made due, and the sensors it
    evicted to make room (``max_sensors``), each time one was."""

    results: list[Verdict | InvalidReading]
    learn_requests: list[LearnRequest]
    evicted: list[str] = field(default_factory=list)


class SensorRoster:
    """Which sensors are tracked, in the order they were last heard from, and who goes when full.

    A sensor is *new* until its second reading, then *established*. When a new sensor comes
    and ``capacity`` are tracked, the new sensor heard from longest ago goes, and only when
    there is none, the established one idle longest: a flood of one-reading ids (typos, a
    scan, an attacker) pushes out its own ids, not the sensors that report every minute.
    """

    __slots__ = ("capacity", "established", "new")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.new: OrderedDict[str, None] = OrderedDict()
        self.established: OrderedDict[str, None] = OrderedDict()

    def heard(self, sensor_id: str) -> None:
        """A reading of a tracked sensor: it is the most recently heard from."""
        if sensor_id in self.established:
            self.established.move_to_end(sensor_id)
        else:
            del self.new[sensor_id]
            self.established[sensor_id] = None

    def admit(self, sensor_id: str) -> str | None:
        """Track a new sensor; the sensor it replaces, if the roster was full."""
        evicted = None
        if len(self.new) + len(self.established) >= self.capacity:
            evicted = (self.new or self.established).popitem(last=False)[0]
        self.new[sensor_id] = None
        return evicted


class ScoringEngine:
    """Scores readings of many sensors, each with its own model, context and episodes."""

    def __init__(
        self,
        models: Mapping[str, SensorModel],
        assign: Sequence[tuple[str, str]] = (),
        default: str | None = None,
        decision: Decision = Decision(),
        max_sensors: int = 10_000,
        learning: LearningPlan | None = None,
        learned: Mapping[str, SensorModel] | None = None,
    ) -> None:
        self.router = ModelRouter(models, assign, default, learned)
        self.decision = decision
        self.max_sensors = max_sensors
        self.learning = learning
        self._streams: dict[str, SensorStream] = {}
        self._roster = SensorRoster(max_sensors)
        # The worker scores while HTTP threads call predict() and the learner installs models.
        self._lock = threading.Lock()

    @property
    def models(self) -> dict[str, SensorModel]:
        return self.router.models

    @property
    def learned(self) -> dict[str, SensorModel]:
        return self.router.learned

    @property
    def sensor_count(self) -> int:
        return len(self._streams)

    def is_tracked(self, sensor_id: str) -> bool:
        return sensor_id in self._streams

    def model_for(self, sensor_id: str | None) -> SensorModel:
        if sensor_id is not None:
            stream = self._streams.get(sensor_id)
            if stream is not None and stream.model is not None:
                return stream.model
            model = self.router.assigned(sensor_id)
            if model is not None:
                return model
            if stream is not None:
                raise UnknownSensor(f"sensor {sensor_id!r} is still learning its model")
            if self.learning is not None:
                raise UnknownSensor(f"sensor {sensor_id!r} is unknown: it has sent no reading yet, and it will learn "
                                    "its own model from its first ones")
        return self.router.default_model(sensor_id)

    def install(self, sensor_id: str, model: SensorModel, learned_flagged: bool = False) -> None:
        """Swap in a sensor's newly learned model (called by the learner, from any thread).

        ``learned_flagged``: the model learned from the sensor's flagged readings too (a
        stale model's refit): what they showed is normal now, so the context takes them in.
        """
        with self._lock:
            self.router.learned[sensor_id] = model
            stream = self._streams.get(sensor_id)
            if stream is None:
                return
            if stream.model is None or stream.model.spec == model.spec:
                stream.model = model
                if learned_flagged:
                    stream.context.absorb()
            stream.adapting = False
            if stream.adaptation is not None:
                stream.adaptation.settled()

    def learning_failed(self, sensor_id: str) -> None:
        """The learner could not fit: keep the model there is (or keep learning) and try again later."""
        with self._lock:
            stream = self._streams.get(sensor_id)
            if stream is not None:
                stream.adapting = False
                if stream.adaptation is not None:
                    stream.adaptation.failed()

    def score(self, readings: Sequence[Reading]) -> Scored:
        """Score readings in arrival order.

        Each sensor's readings are taken in order, since whether one was flagged decides the
        context of the next; the readings of different sensors are scored together, one
        forest call per model for each round of the batch.
        """
        with self._lock:
            return self._score(readings)

    def _score(self, readings: Sequence[Reading]) -> Scored:
        results: list[Verdict | InvalidReading | None] = [None] * len(readings)
        requests: list[LearnRequest] = []
        evicted: list[str] = []
        queues: dict[str, list[tuple[int, SensorStream, list[float]]]] = {}
        for i, reading in enumerate(readings):
            stream = self._stream(reading, evicted)
            if isinstance(stream, InvalidReading):
                results[i] = stream
                continue
            values = _ordered_values(reading, stream.spec.fields, stream.model.name if stream.model else "learning")
            if isinstance(values, InvalidReading):
                results[i] = values
                continue
            queues.setdefault(reading.sensor_id, []).append((i, stream, values))
        rounds = max((len(q) for q in queues.values()), default=0)
        for r in range(rounds):
            self._score_round([q[r] for q in queues.values() if r < len(q)], readings, results, requests)
        return Scored(results, requests, evicted)  # type: ignore[arg-type]  # every slot is filled

    def _score_round(
        self,
        entries: list[tuple[int, SensorStream, list[float]]],
        readings: Sequence[Reading],
        results: list[Verdict | InvalidReading | None],
        requests: list[LearnRequest],
    ) -> None:
        """At most one reading per sensor: score them with one forest call per model."""
        by_model: dict[int, list[tuple[int, SensorStream, list[float], list[float]]]] = {}
        for i, stream, values in entries:
            reading = readings[i]
            duplicate = stream.recent.duplicate_of(reading, values)
            if duplicate is not None:
                results[i] = duplicate
                continue
            if stream.model is None:
                results[i] = self._learn(reading, stream, values, requests)
                continue
            for row in stream.context.rows(values, reading.at):
                by_model.setdefault(id(stream.model), []).append((i, stream, values, row))
        for group in by_model.values():
            model = group[0][1].model
            assert model is not None
            if len(group) == 1:  # the idle case: one reading, no numpy call overhead
                scores = [model.score_row(group[0][3])]
            else:
                raw, calibrated = model.score_features(np.array([row for *_, row in group], dtype=np.float64))
                scores = list(zip(raw.tolist(), calibrated.tolist(), strict=True))
            # A reading scored in two contexts (see detector) is as strange as the less strange finds it.
            per_reading: dict[int, tuple[SensorStream, list[float], list[tuple[float, float]]]] = {}
            for (i, stream, values, _), scored in zip(group, scores, strict=True):
                per_reading.setdefault(i, (stream, values, []))[2].append(scored)
            for i, (stream, values, model_scores) in per_reading.items():
                excess = stream.context.record_excess(values)
                in_contexts = [(raw_score, _with_records(score, excess)) for raw_score, score in model_scores]
                raw_score, score = min(in_contexts, key=lambda rs: rs[1])
                results[i] = self._decide(readings[i], stream, values, raw_score, score, requests,
                                          [c for _, c in in_contexts])

    def _stream(self, reading: Reading, evicted: list[str]) -> SensorStream | InvalidReading:
        stream = self._streams.get(reading.sensor_id)
        if stream is not None:
            self._roster.heard(reading.sensor_id)
            return stream
        new = self._new_stream(reading)
        if isinstance(new, SensorStream):
            gone = self._roster.admit(reading.sensor_id)
            if gone is not None:
                # Its learned model stays (in router.learned and on disk): it scores again
                # at once if the sensor comes back, only its recent context starts afresh.
                del self._streams[gone]
                evicted.append(gone)
            self._streams[reading.sensor_id] = new
        return new

    def _new_stream(self, reading: Reading) -> SensorStream | InvalidReading:
        model = self.router.assigned(reading.sensor_id)
        plan = self.learning
        if model is None and plan is not None:
            spec = FeatureSpec(fields=tuple(reading.values), transforms=plan.features)
            stream = SensorStream(None, SensorContext(spec, record_horizon=self.decision.record_horizon), self.decision.new_state(),
                                  adaptation=SensorAdaptation(plan, reading.sensor_id, spec))
        else:
            if model is None:
                try:
                    model = self.model_for(reading.sensor_id)
                except UnknownSensor as e:
                    return _invalid(reading, "no_model", str(e))
            adaptation = None
            if plan is not None and reading.sensor_id in self.router.learned:
                known = int(model.manifest.get("training", {}).get("rows", plan.refit_rows))
                adaptation = SensorAdaptation(plan, reading.sensor_id, model.spec, known=known)
            context = SensorContext(model.spec, record_horizon=self.decision.record_horizon)
            stream = SensorStream(model, context, self.decision.new_state(), adaptation=adaptation)
        return stream

    def _learn(self, reading: Reading, stream: SensorStream, values: list[float], requests: list[LearnRequest]) -> Verdict:
        """A reading of a sensor that is still learning: kept for the fit, never flagged."""
        adaptation = stream.adaptation
        assert adaptation is not None and self.learning is not None
        at = reading.at
        stream.context.advance(values, flagged=False, at=at)
        request = adaptation.learning(values, at)
        if request is not None:
            requests.append(request)
        verdict = Verdict(
            sensor_id=reading.sensor_id, values=reading.values,
            ts=reading.echoed_ts,
            score=0.0, anomaly=0, model="learning", model_version=f"{len(adaptation.history)}/{self.learning.rows}",
            learning=True,
        )
        stream.recent.remember(reading, values, verdict)
        return verdict

    def _decide(
        self, reading: Reading, stream: SensorStream, values: list[float], raw: float, score: float,
        requests: list[LearnRequest], context_scores: Sequence[float] = (),
    ) -> Verdict:
        assert stream.model is not None
        at = reading.at
        adaptation = stream.adaptation
        if stream.adapting:
            # A new normal's refit is on its way: the old model would flag the new level again.
            flagged, anomaly, event, surprise = score >= self.decision.threshold, False, None, score
        else:
            # A new level is learnable once it has filled the sensor's feature windows.
            judgement = judge(self.decision, stream.episode, score, at, can_adapt=adaptation is not None,
                              new_normal_readings=stream.context.hold)
            flagged, anomaly, event, surprise = judgement.flagged, judgement.anomaly, judgement.event, judgement.surprise
        verdict = Verdict(
            sensor_id=reading.sensor_id,
            values=reading.values,
            ts=reading.echoed_ts,
            score=surprise,
            anomaly=int(anomaly),
            model=stream.model.name,
            model_version=stream.model.version,
            raw_score=raw,
            event=event,
            model_score=score,
        )
        stream.context.advance(values, flagged and not stream.adapting, at, context_scores)
        if event == NEW_NORMAL:
            stream.context.absorb()
        if adaptation is not None:
            request = adaptation.scored(values, flagged, at)
            if event == NEW_NORMAL:
                request = request or adaptation.new_normal(at)
                stream.adapting = request is not None
            if request is not None:
                requests.append(request)
        stream.recent.remember(reading, values, verdict)
        return verdict

    def predict(self, values: Mapping[str, float], sensor_id: str | None = None) -> Verdict:
        """Score one reading without changing any sensor's state (for ``/predict``).

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
            context = stream.context if stream is not None else SensorContext(model.spec)
            rows, excess = context.rows(ordered), context.record_excess(ordered)
            episode = stream.episode if stream is not None else self.decision.new_state()
            episode = dataclasses.replace(episode, recent_flags=deque(episode.recent_flags, maxlen=self.decision.n),
                                          flagged_peaks=list(episode.flagged_peaks))
        # As the stream would score it: in each context the sensor has, the less strange (see detector),
        # and judged against the sensor's open episode, on a copy (a peek moves nothing).
        raw, score = min(((raw, _with_records(score, excess)) for raw, score in map(model.score_row, rows)),
                         key=lambda scored: scored[1])
        judgement = judge(self.decision, episode, score, episode.onset_at, can_adapt=False)
        return Verdict(
            sensor_id=sensor_id or "",
            values=dict(zip(model.fields, ordered, strict=True)),
            ts=None,
            score=judgement.surprise,
            anomaly=int(judgement.anomaly),
            model=model.name,
            model_version=model.version,
            raw_score=raw,
        )


def _with_records(score: float, excess: float) -> float:
    """The model's score, raised for a reading past the sensor's records (see ``records``)."""
    return max(score, record_score(excess, CALIBRATION_SCORES[-1])) if excess else score


def _invalid(reading: Reading, reason: str, detail: str) -> InvalidReading:
    return InvalidReading(reason=reason, detail=detail, topic=reading.topic, sensor_id=reading.sensor_id)


def _ordered_values(reading: Reading, fields: Sequence[str], model_name: str) -> list[float] | InvalidReading:
    values = reading.values
    if len(fields) == 1 and len(values) == 1:
        return list(values.values())  # a univariate reading fits any univariate model
    try:
        return [values[f] for f in fields]
    except KeyError:
        missing = [f for f in fields if f not in values]
        return _invalid(reading, "missing_field", f"model {model_name!r} needs field(s) {', '.join(missing)}")
