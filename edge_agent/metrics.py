"""Prometheus metrics of the agent, registered on the registry passed in (never the global one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.core.domain import InvalidReading, Verdict
from edge_agent.core.model import SensorModel

# Scoring a batch takes tens of microseconds; the default buckets start at 5 ms.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A reading's way to its verdict's PUBACK: about a millisecond when idle, seconds behind a burst.
VERDICT_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# The per-sensor counters (name without _total, help) and gauges, in the order of a sensor's numbers.
SENSOR_COUNTERS = (
    ("edge_agent_readings", "Readings scored, per sensor."),
    ("edge_agent_anomalies", "Readings flagged as anomalous, per sensor."),
    ("edge_agent_anomaly_episodes", "Anomalous episodes begun (verdicts with event onset), per sensor."),
    ("edge_agent_anomaly_episodes_ended", "Anomalous episodes over (event end: a reading normal again), per sensor."),
    ("edge_agent_new_normals", "Anomalous episodes that lasted decision.new_normal_after and became the sensor's normal (event new_normal), per sensor."),
    ("edge_agent_repeat_episodes", "Anomalous episodes no worse than one the sensor had within decision.repeat_horizon (event repeat: no onset, no end), per sensor."),
)
SENSOR_GAUGES = (
    ("anomaly_score", "Latest verdict per sensor: 1 anomalous, 0 normal."),
    ("edge_agent_score", "Latest calibrated anomaly score per sensor (0..1, higher is stranger)."),
    ("edge_agent_learning", "1 while a sensor learns its own model (its verdicts are never anomalous)."),
)
_READINGS, _ANOMALIES = 0, 1
_EVENTS = {"onset": 2, "end": 3, "new_normal": 4, "repeat": 5}  # the counter an episode event adds to
_STATE, _SCORE, _LEARNING = range(len(SENSOR_COUNTERS), len(SENSOR_COUNTERS) + len(SENSOR_GAUGES))
_CREATED = _LEARNING + 1


# The sensor label of the readings of sensors beyond the ones given series of their own.
OTHER_SENSORS = "_other"


class SensorSeries(Collector):
    """The per-sensor series: plain numbers a sensor, rendered into metric families when scraped.

    prometheus_client builds each labelled child as a metric object of its own (name checks,
    a lock, a value): making and removing the eight of a sensor cost more than scoring its
    reading, and a flood of one-reading ids spent most of its time there
    (``python -m bench.bench_metrics`` times both ways). Here a new sensor is one list, and the
    exposition is the same: counters with ``_total`` and ``_created``, gauges, sensor label.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sensors: dict[str, list[float]] = {}  # sensor -> counters, gauges, created (see SENSOR_*)
        self.other: list[float] | None = None  # sensors beyond the bound: counters only

    @staticmethod
    def new() -> list[float]:
        numbers = [0.0] * (_CREATED + 1)
        numbers[_CREATED] = time.time()
        return numbers

    def describe(self) -> Iterator[Metric]:
        """The families' names, so that the registry refuses another metric of the same name."""
        for name, doc in SENSOR_COUNTERS:
            yield CounterMetricFamily(name, doc, labels=["sensor"])
        for name, doc in SENSOR_GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["sensor"])

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            rows = [(sensor, list(numbers)) for sensor, numbers in self.sensors.items()]
            other = list(self.other) if self.other is not None else None
        for i, (name, doc) in enumerate(SENSOR_COUNTERS):
            counter = CounterMetricFamily(name, doc, labels=["sensor"])
            for sensor, numbers in rows:
                counter.add_metric([sensor], numbers[i], created=numbers[_CREATED])
            if other is not None:
                counter.add_metric([OTHER_SENSORS], other[i], created=other[_CREATED])
            yield counter
        for i, (name, doc) in enumerate(SENSOR_GAUGES, start=len(SENSOR_COUNTERS)):
            gauge = GaugeMetricFamily(name, doc, labels=["sensor"])
            for sensor, numbers in rows:
                gauge.add_metric([sensor], numbers[i])
            yield gauge


class AgentMetrics:
    """Every metric the agent exposes.

    The first ``sensor_series`` sensors get series of their own; the counters of the
    rest are summed under sensor="_other" and they get no gauges. At 10,000 sensors
    with series each, one /metrics render is megabytes and most of a second of CPU.
    """

    def __init__(self, registry: CollectorRegistry, sensor_series: int = 1000) -> None:
        self.registry = registry
        self.sensor_series = sensor_series
        self.sensors = SensorSeries()
        registry.register(self.sensors)
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
        series = self.sensors
        duplicates = 0
        with series.lock:
            for v in verdicts:
                if v.duplicate:
                    duplicates += 1
                    continue
                numbers = series.sensors.get(v.sensor_id)
                if numbers is None:
                    if len(series.sensors) >= self.sensor_series or (tracked is not None and not tracked(v.sensor_id)):
                        if series.other is None:
                            series.other = series.new()
                        _count(series.other, v)
                        continue
                    numbers = series.sensors[v.sensor_id] = series.new()
                _count(numbers, v)
                numbers[_STATE] = v.anomaly
                numbers[_SCORE] = v.score
                numbers[_LEARNING] = 1 if v.learning else 0
        if duplicates:
            self.duplicates.inc(duplicates)

    def record_evicted(self, sensors: Sequence[str], tracked: Callable[[str], bool]) -> None:
        """Sensors evicted at pipeline.max_sensors: counted, and the series of those still gone
        removed, so that the sensor_series slots go to the sensors that are there."""
        self.sensors_evicted.inc(len(sensors))
        with self.sensors.lock:
            for sensor in sensors:
                if not tracked(sensor):
                    self.sensors.sensors.pop(sensor, None)

    def record_invalid(self, invalid: InvalidReading) -> None:
        self.invalid.labels(invalid.reason).inc()


def _count(numbers: list[float], v: Verdict) -> None:
    numbers[_READINGS] += 1
    if v.anomaly:
        numbers[_ANOMALIES] += 1
    event = _EVENTS.get(v.event) if v.event is not None else None
    if event is not None:
        numbers[event] += 1
