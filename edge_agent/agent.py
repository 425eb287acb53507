"""The running agent: loads models, wires the core to MQTT, HTTP and metrics, handles signals."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from edge_agent.config import AgentConfig, client_id, http_token
from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.engine import Decision, LearningPlan, ScoringEngine
from edge_agent.core.forest import Forest
from edge_agent.core.model import SensorModel
from edge_agent.fit_worker import FIT_IN_THREAD, WORKER_DIED, FitWorker
from edge_agent.http.api import HttpApi
from edge_agent.learning import Learner, load_learned
from edge_agent.metrics import AgentMetrics
from edge_agent.model_files import load_model
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.session import record_path
from edge_agent.mqtt.transport import MQTTTransport
from edge_agent.pipeline import Envelope, Pipeline, VerdictSink
from edge_agent.tools.training import fit_request

log = logging.getLogger(__name__)


def load_models(cfg: AgentConfig, base: Path | None = None) -> dict[str, SensorModel]:
    """Every model the config names, integrity-checked; a relative models.dir is taken from ``base``."""
    directory = Path(cfg.models.dir)
    if not directory.is_absolute() and base is not None:
        directory = base / directory
    names = list(dict.fromkeys([*([cfg.models.default] if cfg.models.default else []), *cfg.models.assign.values()]))
    models = {}
    forests: dict[str, Forest] = {}
    for name in names:
        # Shared by every sensor assigned to it: held for speed, not memory (Forest).
        models[name] = load_model(directory / name, cfg.models.pinned_sha256.get(name), forests,
                                  pinned_manifest_sha256=cfg.models.pinned_manifest_sha256.get(name), wide=True)
        if models[name].name != name:
            log.info("model directory %s holds model %r", directory / name, models[name].name)
    return models


def decision_of(cfg: AgentConfig) -> Decision:
    """How scores become anomalies (``decision.*``)."""
    d = cfg.decision
    return Decision(d.threshold, d.k, d.n, d.clear_threshold, float(d.new_normal_after), d.end_after,
                    float(d.record_horizon), float(d.repeat_horizon))


def learning_plan(cfg: AgentConfig, rows: int | None = None) -> LearningPlan:
    """How sensors without a model learn. ``rows`` (replay --learn-rows, the benchmarks'
    protocols) makes a sensor learn from exactly that many readings, whatever learning.period says."""
    c = cfg.learning
    return LearningPlan(
        period=float(c.period) if rows is None else float("inf"),
        rows=c.rows if rows is None else rows,
        refit_every=float(c.refit_every),
        refit_jitter=c.refit_jitter,
        refit_rows=c.refit_rows,
        stale_share=c.stale_share,
        leave_out_outliers=c.leave_out_outliers,
        features=tuple(c.features),
    )


def build_engine(
    cfg: AgentConfig,
    models: Mapping[str, SensorModel],
    learned: Mapping[str, SensorModel] | None = None,
) -> ScoringEngine:
    return ScoringEngine(
        models,
        assign=list(cfg.models.assign.items()),
        default=cfg.models.default,
        decision=decision_of(cfg),
        max_sensors=cfg.pipeline.max_sensors,
        learning=learning_plan(cfg) if cfg.learning.enabled else None,
        learned=learned,
    )


def state_dir(cfg: AgentConfig, base: Path | None) -> Path:
    path = Path(cfg.learning.state_dir)
    return path if path.is_absolute() or base is None else base / path


class GapReport:
    """Counts and logs gaps in sensors' sequence numbers: readings a broker dropped without a word."""

    LOG_EVERY = 10.0  # seconds between two log lines about one sensor

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics
        self._logged: dict[str, tuple[float, int]] = {}  # sensor -> (last line at, missed since)

    def __call__(self, sensor: str, missed: int, last: int, seq: int) -> None:
        self.metrics.readings_missed.labels(sensor).inc(missed)
        now = time.monotonic()
        at, since = self._logged.get(sensor, (-self.LOG_EVERY, 0))
        since += missed
        if now - at >= self.LOG_EVERY:
            log.warning(
                "sensor %s: %d reading(s) never arrived (seq %d after %d); the broker may be dropping: "
                "raise its max_queued_messages, see docs/broker.md", sensor, since, seq, last,
            )
            at, since = now, 0
        if len(self._logged) < 10_000 or sensor in self._logged:
            self._logged[sensor] = (at, since)


class Agent:
    """One agent process: ``start`` it, then ``stop`` it (or ``run`` until a signal)."""

    def __init__(
        self, cfg: AgentConfig, models: Mapping[str, SensorModel], env: Mapping[str, str] | None = None,
        base: Path | None = None,
    ) -> None:
        """``base``: the config file's folder, against which relative paths (the state dir) resolve."""
        self.cfg = cfg
        environment = dict(env if env is not None else os.environ)
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(self.registry, cfg.http.sensor_series)
        self.metrics.record_models(models.values())
        self.learner: Learner | None = None
        self.fit_worker: FitWorker | None = None
        learned: dict[str, SensorModel] = {}
        if cfg.learning.enabled:
            directory = state_dir(cfg, base)
            learned = load_learned(directory)
            self.metrics.record_models(learned.values())
            self.fit_worker = FitWorker(cfg.learning.fit_nice, float(cfg.learning.fit_idle_exit), self._fit_event) \
                if cfg.learning.fits == "process" else None
            self.learner = learner = Learner(
                directory, on_learned=lambda sensor, model: self.metrics.record_models([model]),
                fit=self.fit_worker.fit if self.fit_worker is not None else self._fit_in_thread)
            self.metrics.state_dir_writable.set_function(lambda: 0.0 if learner.save_error else 1.0)
            self.metrics.models_unsaved.set_function(lambda: float(len(learner.unsaved)))
        self.engine = build_engine(cfg, models, learned)
        if self.learner is not None:
            self.learner.attach(self.engine)
        self.parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
        self.parser.on_gap = GapReport(self.metrics)
        self.transport = MQTTTransport(cfg, self.parser, self.metrics, environment)
        self.transport.subscriptions_file = record_path(state_dir(cfg, base), client_id(cfg))
        sink: VerdictSink = self.transport
        if cfg.homeassistant.enabled:
            # Imported only here: off by default, and its imports cost ~0.6 MB of a 50 MB budget.
            from edge_agent.mqtt.homeassistant import (
                HomeAssistantDiscovery,
                retained_publisher,
            )

            # Between the pipeline and the transport: a sensor is announced before its first verdict.
            discovery = HomeAssistantDiscovery(cfg, self.transport, retained_publisher(self.transport))
            self.transport.add_listener(cfg.homeassistant.status_topic, discovery.on_status)
            sink = discovery
        self.pipeline = Pipeline(
            self.engine,
            sink,
            self.metrics,
            learner=self.learner,
            queue_size=cfg.pipeline.queue_size,
            max_batch=cfg.pipeline.max_batch,
            error_log_interval=cfg.pipeline.error_log_interval,
            error_report_rate=cfg.pipeline.error_report_rate,
        )
        self.intake: Callable[[Envelope], None] = self.pipeline.submit
        self.http = (
            HttpApi(cfg.http, self.engine.predict, self.readiness, self.registry,
                    token=http_token(cfg, environment))
            if cfg.http.enabled else None
        )
        self.http_address: tuple[str, int] | None = None
        self._stopped = threading.Event()

    def _fit_in_thread(self, request: LearnRequest, version: str) -> SensorModel:
        model = fit_request(request, version)
        self.metrics.fits.labels(FIT_IN_THREAD).inc()
        return model

    def _fit_event(self, what: str) -> None:
        if what == WORKER_DIED:
            self.metrics.fit_worker_deaths.inc()
            return
        self.metrics.fits.labels(what).inc()
        if self.fit_worker is not None:
            self.metrics.fit_worker_rss.set(self.fit_worker.rss_bytes() or 0)

    def readiness(self) -> tuple[bool, str]:
        if not self.engine.models and self.engine.learning is None:
            return False, "no model loaded and learning is off"
        if not self.transport.connected:
            return False, (f"broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port} not connected: {self.transport.not_ready()} "
                           f"({self.transport.last_error})")
        learner = self.learner
        if learner is not None and learner.save_error:
            return False, (f"state dir {learner.state_dir} cannot be written ({learner.save_error}): "
                           f"{len(learner.unsaved)} learned model(s) score from memory only, saving is retried")
        return True, ""

    def start(self) -> None:
        if self.http is not None:
            self.http_address = self.http.start()
            guarded = self.http.token is not None
            log.info("HTTP API on http://%s:%d: /predict %s, /metrics %s, /healthz and /readyz open%s", *self.http_address,
                     "needs the token" if guarded else "open (no token set)",
                     "needs the token" if guarded and self.cfg.http.metrics_token else "open",
                     "" if self.http_address[0] in ("127.0.0.1", "::1") else
                     " to every network this host is on (http.host=127.0.0.1 keeps it on this machine)")
        self.pipeline.start()
        self.transport.start(self.intake)

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the readings in hand, publish their verdicts and ``offline``; True if all in time."""
        if self._stopped.is_set():
            return True
        self._stopped.set()
        timeout = self.cfg.pipeline.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.transport.stop_intake()
        drained = self.pipeline.drain_and_stop(timeout)
        acked = self.transport.wait_for_acks(max(0.0, deadline - time.monotonic()))
        self.transport.close()
        if self.http is not None:
            self.http.stop()
        if self.learner is not None:
            self.learner.stop()
        if self.fit_worker is not None:
            self.fit_worker.close()
        if not (drained and acked):
            log.warning("stopped before every reading in hand was answered; the broker redelivers the rest")
        return drained and acked

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; a second signal exits at once."""
        return run_until_signalled(self.start, self.stop, "finishing the readings in hand")


def run_until_signalled(start: Callable[[], None], stop: Callable[[], object], doing: str) -> int:
    """``start``, wait for SIGTERM/SIGINT, ``stop`` (logging ``doing``); a second signal exits at once."""
    signals_seen = 0
    wake = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("received %s: %s", signal.Signals(signum).name, doing)
        wake.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        start()
        while not wake.wait(1.0):
            pass
        stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
