"""An agent of the group: scores the partitions the group assigns it, from the JetStream stream.

The scoring core, the hand-over and the learner are the single agent's; only the edges
differ. Readings come from pinned pulls (edge_agent.jetstream.group) instead of an MQTT
subscription, and a reading is acknowledged to JetStream only after its verdict (and alert)
is delivered to every configured output: at least once, with no gap. Redelivered readings
are marked as on MQTT (the engine's ``duplicate``, or ``redelivered``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import ObjectStoreConfig, StorageType
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_agent.agent import build_engine, run_until_signalled, state_dir
from edge_agent.config import AgentConfig, SourceConfig, http_token
from edge_agent.core.domain import InvalidReading, Reading, Verdict, clip
from edge_agent.core.model import SensorModel
from edge_agent.http.api import HttpApi
from edge_agent.jetstream.access import nats_access
from edge_agent.jetstream.bridge import layout_of
from edge_agent.jetstream.connection import NatsThread
from edge_agent.jetstream.envelope import HEADER, decode, untoken
from edge_agent.jetstream.group import Membership, PartitionConsumer, consumer_state
from edge_agent.jetstream.jsapi import NATS_ERRORS, ensure_consumers, ensure_stream
from edge_agent.jetstream.model_store import ModelStore
from edge_agent.jetstream.outputs import MqttOutput, subject_of, verdict_body
from edge_agent.learning import Learner, load_learned
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.topics import TopicTemplate, render
from edge_agent.pipeline import Envelope, Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JsAck:
    """What acknowledges one reading: its JetStream reply subject, and the partition that counts it."""

    reply: str
    consumer: PartitionConsumer


@dataclass(frozen=True, slots=True)
class _Out:
    messages: tuple[tuple[str, str], ...]  # (topic, payload), alert first
    ack: JsAck | None


class GroupMetrics:
    """What the group adds to /metrics: partitions held, their lag, pins and moves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.owned = Gauge("edge_agent_partitions_owned", "Partitions this agent consumes.", registry=registry)
        self.pending = Gauge("edge_agent_partition_pending", "Readings of the partition not yet delivered to any agent "
                             "(consumer lag), refreshed every heartbeat.", ["partition"], registry=registry)
        self.ack_pending = Gauge("edge_agent_partition_ack_pending", "Readings of the partition delivered and not yet "
                                 "acknowledged.", ["partition"], registry=registry)
        self.pins = Counter("edge_agent_partition_pins", "Times the server pinned this agent to a partition (a first pin "
                            "or a re-pin after the pin moved).", registry=registry)
        self.takes = Counter("edge_agent_partition_takes", "Partitions this agent took.", registry=registry)
        self.releases = Counter("edge_agent_partition_releases", "Partitions this agent let go of.", registry=registry)
        self.models_loaded = Counter("edge_agent_partition_models_loaded", "Learned models loaded from the model store "
                                     "when a partition was taken.", registry=registry)



def _js_ack(token: object) -> JsAck | None:
    return token if isinstance(token, JsAck) else None


class GroupAgent:
    """One member of the group: ``start``, then ``stop`` (or ``run`` until a signal)."""

    def __init__(self, cfg: AgentConfig, models: Mapping[str, SensorModel], env: Mapping[str, str] | None = None,
                 base: Path | None = None) -> None:
        self.cfg = cfg
        environment = dict(env if env is not None else os.environ)
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(self.registry, cfg.http.sensor_series)
        self.metrics.record_models(models.values())
        self.group_metrics = GroupMetrics(self.registry)
        self.layout = layout_of(cfg)
        self.state_dir = state_dir(cfg, base)
        self.learner: Learner | None = None
        learned: dict[str, SensorModel] = {}
        if cfg.learning.enabled:
            learned = load_learned(self.state_dir)
            self.metrics.record_models(learned.values())
            self.learner = Learner(self.state_dir, on_learned=self._learned)
        self.engine = build_engine(cfg, models, learned)
        if self.learner is not None:
            self.learner.attach(self.engine)
        # Readings published straight to NATS's MQTT listener, on <subject>/<sensor>: the default payload forms.
        self.direct = PayloadParser([SourceConfig(topic=cfg.nats.subject.replace(".", "/") + "/+")], cfg.max_payload_bytes)
        window = cfg.nats.max_ack_pending
        self.pipeline = Pipeline(
            self.engine, self, self.metrics, learner=self.learner,
            # Never full: at most max_ack_pending readings a partition are out, so pulls are the only backpressure.
            queue_size=max(cfg.pipeline.queue_size, cfg.nats.partitions * window + 1),
            max_batch=cfg.pipeline.max_batch, error_log_interval=cfg.pipeline.error_log_interval,
            error_report_rate=cfg.pipeline.error_report_rate,
        )
        self.access = nats_access(cfg, environment)  # before any thread starts: a missing secret is a ConfigError
        self.nats = NatsThread("nats-agent")
        outputs = cfg.nats.outputs
        self.to_nats = outputs in ("nats", "both")
        self.mqtt = MqttOutput(cfg, environment) if outputs in ("mqtt", "both") else None
        self._verdict_topic = TopicTemplate(cfg.topics.verdicts)
        self._alert_topic = TopicTemplate(cfg.topics.alerts)
        self._errors_topic = render(cfg.topics.errors, agent_id=cfg.agent_id)
        self.http = (
            HttpApi(cfg.http, self.engine.predict, self.readiness, self.registry, token=http_token(cfg, environment))
            if cfg.http.enabled else None
        )
        self.http_address: tuple[str, int] | None = None
        self.consumers: dict[int, PartitionConsumer] = {}
        self.membership: Membership | None = None
        self.models: ModelStore | None = None
        self._outq: asyncio.Queue[_Out] | None = None
        self._partition_of: dict[str, int] = {}  # sensor -> the partition it came on
        self._seen: set[str] = set()
        self._restarted: set[int] = set()  # partitions another agent consumed before this one took them
        self._fresh: set[str] = set()  # sensors whose next verdict says windows_restarted
        self._applying = asyncio.Lock()
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.http is not None:
            self.http_address = self.http.start()
        self.pipeline.start()
        if self.mqtt is not None:
            self.mqtt.start()
        self.nats.connect(self.cfg.nats, f"edge-agent-{self.cfg.agent_id}", self.access)
        self.nats.run(self._setup()).result(60)

    async def _setup(self) -> None:
        nc = self.nats.nc
        assert nc is not None
        n = self.cfg.nats
        await ensure_stream(nc, self.layout, float(n.duplicate_window), float(n.max_age))
        await ensure_consumers(nc, self.layout, float(n.ack_wait), n.max_ack_pending, float(n.pin_timeout))
        store = await nc.jetstream().create_object_store(n.models_bucket, config=ObjectStoreConfig(
            bucket=n.models_bucket, replicas=n.replicas, storage=StorageType.FILE))
        self.models = ModelStore(store, self.state_dir)
        self._outq = asyncio.Queue()
        asyncio.get_running_loop().create_task(self._deliver_outputs())
        self.membership = Membership(nc, n, self.cfg.agent_id, self._apply)
        await self.membership.start()

    @property
    def partitions(self) -> set[int]:
        """The partitions this agent pulls now."""
        return set(self.consumers)

    def readiness(self) -> tuple[bool, str]:
        nc = self.nats.nc
        if nc is None or not nc.is_connected:
            reason = f": {self.nats.last_error}" if self.nats.last_error else ""
            return False, f"NATS not connected ({', '.join(self.cfg.nats.servers)}){reason}"
        if self.mqtt is not None and not self.mqtt.connected.is_set():
            return False, f"broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port} not connected"
        return True, ""

    def stop(self, timeout: float | None = None) -> bool:
        """Hand the partitions over (what is held answered first), leave the group, stop."""
        if self._stopped.is_set():
            return True
        self._stopped.set()
        timeout = self.cfg.pipeline.shutdown_timeout if timeout is None else timeout
        try:
            settled = self.nats.run(self._leave(timeout)).result(timeout + 10)
        except (*NATS_ERRORS, concurrent.futures.TimeoutError) as e:  # NATS away: what is held is redelivered after ack_wait
            log.warning("leaving the group: %s", e)
            settled = False
        self.pipeline.drain_and_stop(2.0)
        if self.learner is not None:
            self.learner.stop()
        if self.mqtt is not None:
            self.mqtt.close()
        self.nats.close()
        if self.http is not None:
            self.http.stop()
        return settled

    async def _leave(self, timeout: float) -> bool:
        if self.membership is not None:
            self.membership._stopping = True
        async with self._applying:
            results = await asyncio.gather(*(c.release(timeout) for c in self.consumers.values()))
            self.consumers.clear()
        if self.membership is not None:
            await self.membership.leave()
        return all(results)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; a second signal exits at once."""
        return run_until_signalled(self.start, self.stop, "handing the partitions over")

    # -- partitions (the NATS loop) ------------------------------------------------------------

    async def _apply(self, owned: set[int]) -> None:
        if self._stopped.is_set():
            return
        async with self._applying:
            for p in sorted(set(self.consumers) - owned):
                consumer = self.consumers.pop(p)
                if not await consumer.release(float(self.cfg.nats.ack_wait)):
                    log.warning("partition %d handed over with readings unanswered; they are redelivered", p)
                self.group_metrics.releases.inc()
                # Its lag is now the new owner's to report: a stale series here would double it.
                self.group_metrics.pending.remove(str(p))
                self.group_metrics.ack_pending.remove(str(p))
                log.info("released partition %d", p)
            for p in sorted(owned - set(self.consumers)):
                await self._take(p)
            self.group_metrics.owned.set(len(self.consumers))
            await self._refresh_lag()

    async def _take(self, partition: int) -> None:
        """Load the partition's models before pulling its first reading, then pull."""
        nc = self.nats.nc
        assert nc is not None and self.models is not None
        loaded = await self.models.load(partition)
        for sensor_id, model in loaded.items():
            self.engine.install(sensor_id, model)
        self.metrics.record_models(loaded.values())
        self.group_metrics.models_loaded.inc(len(loaded))
        state = await consumer_state(nc, self.layout, partition)
        if state.get("delivered", {}).get("stream_seq", 0) > 0:
            self._restarted.add(partition)
        consumer = PartitionConsumer(nc, self.layout, partition, self.cfg.nats.max_ack_pending, self.cfg.pipeline.max_batch,
                                     self._deliver, lambda p: self.group_metrics.pins.inc())
        self.consumers[partition] = consumer
        consumer.start()
        self.group_metrics.takes.inc()
        log.info("took partition %d (%d learned model(s) loaded)", partition, len(loaded))

    async def _refresh_lag(self) -> None:
        nc = self.nats.nc
        assert nc is not None
        for p in list(self.consumers):
            try:
                state = await consumer_state(nc, self.layout, p)
            except NATS_ERRORS as e:  # a slow server: the next beat tries again
                log.debug("consumer state of partition %d: %s", p, e)
                continue
            if p not in self.consumers:  # released while its state was asked for
                continue
            self.group_metrics.pending.labels(str(p)).set(state.get("num_pending", 0))
            self.group_metrics.ack_pending.labels(str(p)).set(state.get("num_ack_pending", 0))

    def _deliver(self, msg: Msg, consumer: PartitionConsumer) -> None:
        ack = JsAck(msg.reply, consumer)
        try:
            redelivered = msg.metadata.num_delivered > 1
        except (ValueError, IndexError, nats.errors.Error):  # not a JetStream reply subject: a first delivery
            redelivered = False
        item: Reading | InvalidReading
        if (msg.headers or {}).get(HEADER):
            item = decode(msg.data, redelivered)
        else:
            sensor = untoken(msg.subject.rsplit(".", 1)[-1])
            topic = f"{self.cfg.nats.subject.replace('.', '/')}/{sensor}"
            item = self.direct.parse(topic, msg.data, time.time(), redelivered)
        sensor_id = item.sensor_id
        if sensor_id is not None and sensor_id not in self._seen:
            self._seen.add(sensor_id)
            self._partition_of[sensor_id] = consumer.partition
            if consumer.partition in self._restarted:
                self._fresh.add(sensor_id)
        self.pipeline.submit(Envelope(item, ack))

    def _learned(self, sensor_id: str, model: SensorModel) -> None:
        """On the learner's thread: count it, and keep it in the model store for whoever scores the sensor next."""
        self.metrics.record_models([model])
        partition = self._partition_of.get(sensor_id)
        if partition is None or self.models is None:
            return
        def saved(future: concurrent.futures.Future[None]) -> None:
            if future.exception() is not None:
                log.error("could not keep the model of %r in the model store (it relearns if it moves): %s",
                          clip(sensor_id), future.exception())

        self.nats.run(self.models.save(partition, sensor_id)).add_done_callback(saved)

    # -- outputs -------------------------------------------------------------------------------

    def publish_verdict(self, verdict: Verdict, envelope: Envelope) -> None:
        """On the scoring worker: hand the verdict to the output task (the NATS loop)."""
        sensor = verdict.sensor_id
        restarted = sensor in self._fresh
        if restarted:
            self._fresh.discard(sensor)
        reading = envelope.item
        redelivered = isinstance(reading, Reading) and reading.redelivered
        payload, alert = verdict_body(verdict, redelivered and not verdict.duplicate, restarted)
        topic = self._verdict_topic.render(agent_id=self.cfg.agent_id, sensor_id=sensor)
        messages = ((self._alert_topic.render(agent_id=self.cfg.agent_id, sensor_id=sensor), payload),) if alert else ()
        self._hand(_Out((*messages, (topic, payload)), _js_ack(envelope.token)))

    def publish_error(self, invalid: InvalidReading) -> None:
        """Report a rejected reading (the pipeline settles it apart, see ``settle``)."""
        body = {"topic": clip(invalid.topic, 200), "sensor_id": clip(invalid.sensor_id, 200), "reason": invalid.reason,
                "detail": clip(invalid.detail, 200), "ts": time.time()}
        self._hand(_Out(((self._errors_topic, json.dumps(body, separators=(",", ":"))),), None))

    def settle(self, token: object) -> None:
        """Acknowledge a reading to JetStream now: nothing will answer it (a rejection)."""
        self._hand(_Out((), _js_ack(token)))

    def _hand(self, out: _Out) -> None:
        assert self._outq is not None
        self.nats.loop.call_soon_threadsafe(self._outq.put_nowait, out)

    async def _deliver_outputs(self) -> None:
        """Publish a batch, wait until every output has it, then acknowledge its readings."""
        assert self._outq is not None and self.nats.nc is not None
        nc = self.nats.nc
        while True:
            batch = [await self._outq.get()]
            while not self._outq.empty() and len(batch) < 1024:
                batch.append(self._outq.get_nowait())
            try:
                await self._publish_batch(batch)
            except (*NATS_ERRORS, ConnectionError) as e:  # not delivered: the readings stay unacknowledged and come again after ack_wait
                log.warning("verdicts of %d reading(s) not delivered (%s); JetStream redelivers them", len(batch), e)
                for out in batch:
                    if out.ack is not None:
                        out.ack.consumer.settled()
                continue
            for out in batch:
                if out.ack is not None:
                    try:
                        await nc.publish(out.ack.reply, b"+ACK")
                    finally:
                        out.ack.consumer.settled()

    async def _publish_batch(self, batch: list[_Out]) -> None:
        nc = self.nats.nc
        assert nc is not None
        waits: list[concurrent.futures.Future[None]] = []
        for out in batch:
            for topic, payload in out.messages:
                if self.to_nats:
                    await nc.publish(subject_of(topic), payload.encode())
                if self.mqtt is not None:
                    waits.append(self.mqtt.publish(topic, payload))
        if self.to_nats:
            await nc.flush(timeout=10)
        if waits:
            await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(w) for w in waits)), float(self.cfg.nats.ack_wait))
