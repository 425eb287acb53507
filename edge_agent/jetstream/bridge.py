"""``edge-agent bridge``: MQTT readings into the JetStream stream, acknowledged on MQTT only once JetStream has them.

It reads MQTT with the agent's own ``sources`` rules and ingest code, so sensor ids agree,
and publishes each reading on ``<subject>.<sensor>`` with a ``Nats-Msg-Id`` (the sensor and
its timestamp). The MQTT message is acknowledged only after every reading in it has its
PubAck from the stream: a killed bridge leaves the message unacknowledged in its persistent
MQTT session, the broker redelivers it, and the stream drops the copies it already stored.
Readings keep their MQTT order: each batch is written to the connection in order.
Rejected messages are reported on the errors topic, as the agent does, and acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge_agent.config import AgentConfig
from edge_agent.core.domain import InvalidReading, Reading, clip
from edge_agent.jetstream.access import nats_access
from edge_agent.jetstream.connection import NatsThread
from edge_agent.jetstream.envelope import HEADER, VERSION, encode, msg_id, token
from edge_agent.jetstream.jsapi import Layout, ensure_stream
from edge_agent.mqtt.access import apply_access
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.topics import render

log = logging.getLogger(__name__)

BATCH = 256  # readings written to NATS before waiting for their PubAcks


@dataclass
class _Message:
    """One MQTT message on its way: acknowledged when its readings are all stored."""

    mid: int
    qos: int
    generation: int
    readings: list[Reading] = field(default_factory=list)


def layout_of(cfg: AgentConfig) -> Layout:
    n = cfg.nats
    return Layout(n.stream, n.subject, n.partitions, n.replicas, n.group)


class Bridge:
    """One bridge process: ``start``, then ``stop``."""

    def __init__(self, cfg: AgentConfig, registry: CollectorRegistry, env: dict[str, str]) -> None:
        self.cfg = cfg
        self.layout = layout_of(cfg)
        self.parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
        self.access = nats_access(cfg, env)  # before any thread starts: a missing secret is a ConfigError
        self.nats = NatsThread("nats-bridge")
        self._queue: asyncio.Queue[_Message] | None = None
        self._generation = 0
        self._closing = False
        self._errors_topic = render(cfg.topics.errors, agent_id=cfg.agent_id)
        self.stored = Counter("edge_bridge_readings_stored", "Readings the stream acknowledged.", registry=registry)
        self.duplicates = Counter("edge_bridge_readings_duplicate", "Readings the stream already had (a resend after a crash).",
                                  registry=registry)
        self.rejected = Counter("edge_bridge_messages_rejected", "MQTT messages that held no valid reading.", ["reason"],
                                registry=registry)
        self.retries = Counter("edge_bridge_publish_retries", "Publishes to the stream retried (NATS away or slow).",
                               registry=registry)
        self.in_flight = Gauge("edge_bridge_messages_in_flight", "MQTT messages received and not yet acknowledged.",
                               registry=registry)
        self.connected = threading.Event()
        m = cfg.mqtt
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=m.client_id or f"edge-bridge-{cfg.agent_id}",
                                  protocol=paho.MQTTv5, manual_ack=True)
        apply_access(self.client, cfg, env)  # the agent's user, password and TLS: this connection is no weaker
        self.client.reconnect_delay_set(int(m.reconnect_min_delay), max(1, int(m.reconnect_max_delay)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message

    def start(self) -> None:
        nc = self.nats.connect(self.cfg.nats, f"edge-bridge-{self.cfg.agent_id}", self.access)
        n = self.cfg.nats
        self.nats.run(ensure_stream(nc, self.layout, float(n.duplicate_window), float(n.max_age))).result(30)
        self._queue = self.nats.run(_make_queue()).result()
        self.nats.run(self._forward())
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry
        props.ReceiveMaximum = m.receive_maximum
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Stop reading; messages not yet stored stay unacknowledged, for the broker to resend."""
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        self.nats.close()

    # -- MQTT (paho's thread) ----------------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the bridge: %s", reason)
            return
        self._generation += 1  # acknowledgements of earlier connections are void: the broker resends those
        client.subscribe([(f, 1) for f in self.parser.subscriptions])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        # Connected means subscribed: a reading published before the broker granted the
        # subscription (of a first session) would not be kept for the bridge.
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("broker refused the bridge's subscriptions %s: %s", ", ".join(self.parser.subscriptions), ", ".join(refused))
            return
        self.connected.set()
        log.info("bridge connected to %s:%d, forwarding %s to stream %s", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 ", ".join(self.parser.subscriptions), self.layout.stream)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._closing:
            return
        message_entry = _Message(message.mid, message.qos, self._generation)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = None
        if topic is None or message.retain:
            reason = "unknown_topic" if topic is None else "retained"
            self._reject(InvalidReading(reason, "not a reading the bridge forwards", topic, None))
            self._ack(message_entry)
            return
        for item in self.parser.parse_message(topic, bytes(message.payload), time.time(), redelivered=bool(message.dup)):
            if isinstance(item, InvalidReading):
                self._reject(item)
            else:
                message_entry.readings.append(item)
        if not message_entry.readings:
            self._ack(message_entry)
            return
        self.in_flight.inc()
        assert self._queue is not None
        self.nats.loop.call_soon_threadsafe(self._queue.put_nowait, message_entry)

    def _reject(self, invalid: InvalidReading) -> None:
        self.rejected.labels(invalid.reason).inc()
        body = {"topic": clip(invalid.topic, 200), "sensor_id": clip(invalid.sensor_id, 200), "reason": invalid.reason,
                "detail": clip(invalid.detail, 200), "ts": time.time()}
        self.client.publish(self._errors_topic, json.dumps(body, separators=(",", ":")), qos=1)

    def _ack(self, message: _Message) -> None:
        if message.qos > 0 and message.generation == self._generation:
            self.client.ack(message.mid, message.qos)

    # -- NATS (the loop's thread) ------------------------------------------------------------

    async def _forward(self) -> None:
        assert self._queue is not None and self.nats.nc is not None
        js = self.nats.nc.jetstream()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            pending = [(m, r) for m in batch for r in m.readings]
            delay = 0.1
            while pending and not self._closing:
                # Tasks start in order, so the requests go out in MQTT order.
                results = await asyncio.gather(*(self._store(js, r) for _, r in pending), return_exceptions=True)
                failed = [(m, r) for (m, r), res in zip(pending, results, strict=True) if isinstance(res, BaseException)]
                if failed:
                    self.retries.inc(len(failed))
                    log.warning("stream %s did not take %d reading(s) (%s); retrying", self.layout.stream, len(failed),
                                next(res for res in results if isinstance(res, BaseException)))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                pending = failed
            if pending:
                return  # closing: those messages stay unacknowledged
            for m in batch:
                self._ack(m)
                self.in_flight.dec()

    async def _store(self, js: Any, reading: Reading) -> None:
        headers = {HEADER: VERSION}
        dedup = msg_id(reading)
        if dedup is not None:
            headers["Nats-Msg-Id"] = dedup
        ack = await js.publish(f"{self.layout.subject}.{token(reading.sensor_id)}", encode(reading), headers=headers, timeout=5)
        (self.duplicates if ack.duplicate else self.stored).inc()


async def _make_queue() -> asyncio.Queue[_Message]:
    return asyncio.Queue()
