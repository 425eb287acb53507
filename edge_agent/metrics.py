"""Prometheus metrics of the agent, registered on the registry passed in (never the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge_agent.core.domain import InvalidReading, Verdict
from edge_agent.core.model import SensorModel

# Scoring a batch takes tens of microseconds; the default buckets start at 5 ms.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A reading's way to its verdict's PUBACK: about a millisecond when idle, seconds behind a burst.
VERDICT_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True, slots=True)
class _SensorChildren:
    readings: Counter
    anomalies: Counter
    episodes: Counter
    ended: Counter
    new_normals: Counter
    state: Gauge
    score: Gauge
    learning: Gauge


# The sensor label of the readings of sensors beyond the ones given series of their own.
OTHER_SENSORS = "_other"


class AgentMetrics:
    """Every metric the agent exposes.

    The first ``sensor_series`` sensors get series of their own; the counters of the
    rest are summed under sensor="_other" and they get no gauges. At 10,000 sensors
    with series each, one /metrics render is megabytes and most of a second of CPU.
    """

    def __init__(self, registry: CollectorRegistry, sensor_series: int = 1000) -> None:
        self.registry = registry
        self.sensor_series = sensor_series
        self._other: _SensorChildren | None = None
        self.readings = Counter("edge_agent_readings", "Readings scored, per sensor.", ["sensor"], registry=registry)
        self.anomalies = Counter("edge_agent_anomalies", "Readings flagged as anomalous, per sensor.", ["sensor"], registry=registry)
        self.episodes = Counter("edge_agent_anomaly_episodes", "Anomalous episodes begun (verdicts with event onset), per sensor.", ["sensor"], registry=registry)
        self.episodes_ended = Counter("edge_agent_anomaly_episodes_ended", "Anomalous episodes over (event end: a reading normal again), per sensor.", ["sensor"], registry=registry)
        self.new_normals = Counter("edge_agent_new_normals", "Anomalous episodes that lasted decision.new_normal_after and became the sensor's normal (event new_normal), per sensor.", ["sensor"], registry=registry)
        self.anomaly_state = Gauge("anomaly_score", "Latest verdict per sensor: 1 anomalous, 0 normal.", ["sensor"], registry=registry)
        self.score = Gauge("edge_agent_score", "Latest calibrated anomaly score per sensor (0..1, higher is stranger).", ["sensor"], registry=registry)
        self.learning = Gauge("edge_agent_learning", "1 while a sensor learns its own model (its verdicts are never anomalous).", ["sensor"], registry=registry)
        self.invalid = Counter("edge_agent_invalid_messages", "Messages rejected, by reason.", ["reason"], registry=registry)
        self.duplicates = Counter("edge_agent_duplicate_readings", "Readings recognised as redelivered; their verdict is marked duplicate.", registry=registry)
        self.latency = Histogram("edge_agent_scoring_latency_seconds", "Time to score one batch of readings.", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("edge_agent_batch_size", "Readings scored together.", buckets=BATCH_BUCKETS, registry=registry)
        self.broker_connected = Gauge("edge_agent_broker_connected", "1 while connected to the MQTT broker: the intake connection once subscribed to the sources, the publishing connection (verdicts out) once accepted.", ["connection"], registry=registry)
        for connection in ("intake", "publish"):
            self.broker_connected.labels(connection).set(0)
        self.model_info = Gauge("edge_agent_model_info", "Loaded models (value 1), one series per model: its current version.", ["model", "version", "sha256"], registry=registry)
        self._model_labels: dict[str, tuple[str, str]] = {}  # model name -> the (version, sha256) of its series
        self.queue_depth = Gauge("edge_agent_queue_depth", "Readings handed over and waiting to be scored.", registry=registry)
        self.verdicts_held = Gauge("edge_agent_verdicts_held", "Publishes (verdicts, alerts, reports) waiting while the publishing connection is down; at most mqtt.max_in_flight.", registry=registry)
        self._per_sensor: dict[str, _SensorChildren] = {}  # labels() costs a lock and a lookup per call
        self.readings_missed = Counter("edge_agent_readings_missed", "Readings that never arrived, per sensor: gaps in a source's seq_field (evidence of a broker dropping, docs/broker.md).", ["sensor"], registry=registry)
        self.state_dir_writable = Gauge("edge_agent_state_dir_writable", "1 while learned models can be saved under learning.state_dir; 0 after a failed save, until a retry gets through.", registry=registry)
        self.models_unsaved = Gauge("edge_agent_learned_models_unsaved", "Learned models scoring from memory only: their save failed and is retried (lost on a restart until then).", registry=registry)
        self.sensors_evicted = Counter("edge_agent_sensors_evicted", "Sensors forgotten to make room for a new one at pipeline.max_sensors (one that sent a single reading first, else the one idle longest); a learned model stays.", registry=registry)
        self.verdict_latency = Histogram(
            "edge_agent_verdict_latency_seconds",
            "From a reading's arrival to the broker's PUBACK of its verdict, when the reading is acknowledged.",
            buckets=VERDICT_LATENCY_BUCKETS, registry=registry,
        )
        self.readings_in_hand = Gauge(
            "edge_agent_readings_in_hand", "Messages received on this connection and not yet acknowledged to the broker.",
            registry=registry,
        )
        self.publishes_in_flight = Gauge(
            "edge_agent_publishes_in_flight",
            "Messages published (verdicts, alerts, reports) not yet acknowledged by the broker; at most mqtt.max_in_flight.",
            registry=registry,
        )
        self.verdicts_dropped = Counter("edge_agent_verdicts_dropped", "Verdicts dropped while the broker was away: none since they wait in the publishing client's queue (kept for existing alerts).", registry=registry)
        self.fits = Counter("edge_agent_fits", "Models fitted (first fits and refits), by where they ran: worker (the fit process) or thread (the agent's own: learning.fits is thread, or the fit process could not start).", ["where"], registry=registry)
        self.fit_worker_deaths = Counter("edge_agent_fit_worker_deaths", "Times the fit process died during a fit; it is restarted and the fit retried once, then left for the sensor's next request.", registry=registry)
        self.fit_worker_rss = Gauge("edge_agent_fit_worker_rss_bytes", "Resident memory of the fit process after its latest fit (it exits after learning.fit_idle_exit without one).", registry=registry)

    def record_models(self, models: Iterable[SensorModel]) -> None:
        """Models now loaded; a model's earlier version loses its series (hourly refits would add one each)."""
        for m in models:
            previous = self._model_labels.get(m.name)
            if previous is not None and previous != (m.version, m.sha256):
                self.model_info.remove(m.name, *previous)
            self._model_labels[m.name] = (m.version, m.sha256)
            self.model_info.labels(model=m.name, version=m.version, sha256=m.sha256).set(1)

    def record_verdicts(self, verdicts: Iterable[Verdict], tracked: Callable[[str], bool] | None = None) -> None:
        """``tracked``: whether a sensor is still tracked; one evicted in the same batch is summed
        under sensor="_other" rather than given series that would outlive it."""
        for v in verdicts:
            if v.duplicate:
                self.duplicates.inc()
                continue
            children = self._per_sensor.get(v.sensor_id)
            if children is None:
                if len(self._per_sensor) >= self.sensor_series or (tracked is not None and not tracked(v.sensor_id)):
                    self._record_other(v)
                    continue
                children = self._per_sensor[v.sensor_id] = self._children(v.sensor_id)
            _count(children, v)
            children.state.set(v.anomaly)
            children.score.set(v.score)
            children.learning.set(1 if v.learning else 0)

    def record_evicted(self, sensors: Sequence[str], tracked: Callable[[str], bool]) -> None:
        """Sensors evicted at pipeline.max_sensors: counted, and the series of those still gone
        removed, so that the sensor_series slots go to the sensors that are there."""
        self.sensors_evicted.inc(len(sensors))
        for sensor in sensors:
            children = None if tracked(sensor) else self._per_sensor.pop(sensor, None)
            if children is None:
                continue
            for metric in (self.readings, self.anomalies, self.episodes, self.episodes_ended, self.new_normals,
                           self.anomaly_state, self.score, self.learning):
                metric.remove(sensor)

    def _children(self, sensor: str) -> _SensorChildren:
        return _SensorChildren(
            self.readings.labels(sensor), self.anomalies.labels(sensor), self.episodes.labels(sensor),
            self.episodes_ended.labels(sensor), self.new_normals.labels(sensor),
            self.anomaly_state.labels(sensor), self.score.labels(sensor), self.learning.labels(sensor),
        )

    def _record_other(self, v: Verdict) -> None:
        """A sensor beyond sensor_series: its counters summed under sensor="_other", no gauges."""
        if self._other is None:
            sensor = OTHER_SENSORS
            self._other = _SensorChildren(
                self.readings.labels(sensor), self.anomalies.labels(sensor), self.episodes.labels(sensor),
                self.episodes_ended.labels(sensor), self.new_normals.labels(sensor), None, None, None,  # type: ignore[arg-type]
            )
        _count(self._other, v)

    def record_invalid(self, invalid: InvalidReading) -> None:
        self.invalid.labels(invalid.reason).inc()


def _count(children: _SensorChildren, v: Verdict) -> None:
    children.readings.inc()
    if v.anomaly:
        children.anomalies.inc()
    if v.event == "onset":
        children.episodes.inc()
    elif v.event == "end":
        children.ended.inc()
    elif v.event == "new_normal":
        children.new_normals.inc()
