"""Everything MQTT: connection, session, subscriptions, verdict publishing and acknowledgements.

Delivery contract: the agent keeps a persistent session (MQTT 5, clean start off,
session expiry from the config) and acknowledges a reading only after the broker
has acknowledged its verdict. A reading the broker accepted is therefore either
answered or redelivered, whatever happens to the agent in between.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import AgentConfig, client_id, mqtt_password
from edge_agent.domain import InvalidReading, Reading, Verdict
from edge_agent.ingest import PayloadParser
from edge_agent.metrics import AgentMetrics
from edge_agent.topics import TopicTemplate, render

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AckToken:
    """What is needed to acknowledge one incoming message, on the connection it came in on."""

    mid: int
    qos: int
    generation: int


class MQTTTransport:
    """Subscribes, hands messages over, publishes verdicts and acknowledges readings."""

    def __init__(
        self,
        cfg: AgentConfig,
        parser: PayloadParser,
        metrics: AgentMetrics,
        env: dict[str, str],
    ) -> None:
        self.cfg = cfg
        self.parser = parser
        self.metrics = metrics
        self._submit: Callable[[Reading | InvalidReading], None] | None = None
        self._subscriptions = list(parser.subscriptions)
        agent = cfg.agent_id
        self._verdict_topic = TopicTemplate(cfg.topics.verdicts)
        self._alert_topic = TopicTemplate(cfg.topics.alerts)
        self._errors_topic = render(cfg.topics.errors, agent_id=agent)
        self.status_topic = render(cfg.topics.status, agent_id=agent)
        self._agent_id = agent

        self._lock = threading.Lock()  # guards the fields below; never held while calling paho
        self._generation = 0
        self._connected = False
        self._subscribed = False
        self._closing = False
        self._pending: dict[int, AckToken] = {}  # verdict mid -> reading to acknowledge
        self._early: set[int] = set()  # verdict mids acknowledged before we registered them
        self._held: deque[tuple[Verdict, AckToken | None]] = deque()
        self.last_error: str = "not connected yet"

        self.client = self._make_client(env)

    # -- setup ---------------------------------------------------------------------------

    def _make_client(self, env: dict[str, str]) -> paho.Client:
        m = self.cfg.mqtt
        v5 = m.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id(self.cfg),
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        # Outgoing verdicts in flight at once; paho queues the rest (bounded by us, see _held).
        client.max_inflight_messages_set(max(20, m.receive_maximum))
        client.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_delay)), max_delay=max(1, int(m.reconnect_max_delay)))
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if m.username is not None:
            client.username_pw_set(m.username, mqtt_password(self.cfg, env))
        if m.tls.enabled:
            client.tls_set(
                ca_certs=m.tls.ca_file,
                certfile=m.tls.cert_file,
                keyfile=m.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(not m.tls.check_hostname)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def start(self, submit: Callable[[Reading | InvalidReading], None]) -> None:
        """Connect in the background (retrying with backoff) and start delivering readings."""
        self._submit = submit
        m = self.cfg.mqtt
        if m.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry
            props.ReceiveMaximum = m.receive_maximum
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=False, properties=props)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        """Connected and subscribed: readings can flow."""
        return self._connected and self._subscribed

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("%s (%s:%d)", self.last_error, self.cfg.mqtt.host, self.cfg.mqtt.port)
            return
        with self._lock:
            self._generation += 1
            self._connected = True
            self._subscribed = False
            self._pending.clear()
            self._early.clear()
            held = list(self._held)
            self._held.clear()
        self.last_error = ""
        self.metrics.broker_connected.set(1)
        self.metrics.verdicts_held.set(0)
        log.info(
            "connected to %s:%d (session %s)", self.cfg.mqtt.host, self.cfg.mqtt.port,
            "resumed" if flags.session_present else "new",
        )
        client.publish(self.status_topic, "online", qos=1, retain=True)
        # Subscribe on every connect: a broker that lost the session has lost these too.
        client.subscribe([(f, 1) for f in self._subscriptions])
        for verdict, _ in held:
            # Their readings came in on a connection that is gone; the broker redelivers
            # them and the engine marks those verdicts as duplicates.
            self._publish_verdict(verdict, None)
        if held:
            log.info("published %d verdicts held while disconnected", len(held))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        refused = [f for f, r in zip(self._subscriptions, reasons) if r.is_failure]
        if refused:
            self.last_error = f"broker refused the subscription to {', '.join(refused)}"
            log.error("%s", self.last_error)
            return
        self._subscribed = True

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            self._connected = False
            self._subscribed = False
            self._pending.clear()
            self._early.clear()
        self.metrics.broker_connected.set(0)
        if not self._closing:
            self.last_error = f"disconnected from broker: {reason}"
            log.warning("%s; reconnecting", self.last_error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._closing:
            return  # not acknowledged: redelivered to the next session
        token = AckToken(message.mid, message.qos, self._generation) if message.qos > 0 else None
        if message.retain:
            # A retained reading is an old one replayed on subscribe, not a new measurement.
            item: Reading | InvalidReading = InvalidReading(
                "retained", "retained messages are old readings and are not scored", message.topic, None, token
            )
        else:
            item = self.parser.parse(message.topic, message.payload, time.time(), ack=token, redelivered=bool(message.dup))
        assert self._submit is not None
        self._submit(item)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            token = self._pending.pop(mid, None)
            if token is None:
                self._early.add(mid)
                return
            generation = self._generation
        if token.generation == generation:
            client.ack(token.mid, token.qos)

    # -- publishing (worker thread) ------------------------------------------------------

    def publish_verdict(self, verdict: Verdict, reading: Reading) -> None:
        self._publish_verdict(verdict, reading.ack)

    def _publish_verdict(self, verdict: Verdict, token: AckToken | None) -> None:
        if not self._connected:
            self._hold(verdict, token)
            return
        payload = json.dumps(verdict.to_payload(), separators=(",", ":"))
        sensor = verdict.sensor_id
        info = self.client.publish(self._verdict_topic.render(agent_id=self._agent_id, sensor_id=sensor), payload, qos=1)
        if verdict.anomaly and not verdict.duplicate:
            self.client.publish(self._alert_topic.render(agent_id=self._agent_id, sensor_id=sensor), payload, qos=1)
        if token is not None:
            self._ack_after(info.mid, token)

    def _ack_after(self, verdict_mid: int, token: AckToken) -> None:
        with self._lock:
            if verdict_mid in self._early:
                self._early.discard(verdict_mid)
                ack_now = token.generation == self._generation
            else:
                self._pending[verdict_mid] = token
                ack_now = False
        if ack_now:
            self.client.ack(token.mid, token.qos)

    def _hold(self, verdict: Verdict, token: AckToken | None) -> None:
        limit = self.cfg.pipeline.held_verdicts
        with self._lock:
            self._held.append((verdict, token))
            dropped = 0
            while len(self._held) > limit:
                self._held.popleft()
                dropped += 1
            held = len(self._held)
        if dropped:
            self.metrics.verdicts_dropped.inc(dropped)
        self.metrics.verdicts_held.set(held)

    def publish_error(self, invalid: InvalidReading, report: bool) -> None:
        if report and self._connected:
            body = {
                "topic": invalid.topic,
                "sensor_id": invalid.sensor_id,
                "reason": invalid.reason,
                "detail": invalid.detail,
                "ts": time.time(),
            }
            self.client.publish(self._errors_topic, json.dumps(body, separators=(",", ":")), qos=1)
        token = invalid.ack
        if isinstance(token, AckToken) and token.generation == self._generation:
            # Nothing will ever make a rejected message valid: acknowledge it now.
            self.client.ack(token.mid, token.qos)

    # -- shutdown ------------------------------------------------------------------------

    def stop_intake(self) -> None:
        """Stop handing over new readings (they stay unacknowledged at the broker)."""
        self._closing = True

    def wait_for_acks(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending or not self._connected:
                    return not self._pending
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, disconnect and stop the network thread."""
        self._closing = True
        if self._connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.metrics.broker_connected.set(0)
