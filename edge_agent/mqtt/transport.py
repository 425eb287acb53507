"""Everything MQTT: connections, session, subscriptions, verdict publishing and acknowledgements.

Delivery contract: the agent keeps a persistent session (MQTT 5, clean start off,
session expiry from the config) and acknowledges a reading only after the broker
has acknowledged its verdict. A reading the broker accepted is therefore either
answered or redelivered, whatever happens to the agent in between.

Two connections to the broker. The *intake* (the agent's client id) holds the persistent
session and the subscriptions, receives the readings and acknowledges them. The
*publishing* connection (``<client id>-out``, clean session, it subscribes to nothing)
carries verdicts, alerts, error reports, the status topic and its will, and Home
Assistant discovery. Apart, the intake can stop reading its socket while the agent holds
``mqtt.receive_maximum`` readings (the broker then holds the rest, TCP backpressure)
without stopping the PUBACKs that settle those readings: Mosquitto 2.0 does not keep to
the receive maximum by itself (docs/broker.md).

Which publish settles which reading, what a reconnect invalidates and how many publishes
may be in flight is decided by the ack ledger (edge_agent/mqtt/ledger.py, no paho); this module
carries its decisions out on the wire. Every publish goes through
:meth:`MQTTTransport._publish`, which registers its message id with the ledger.
A verdict whose reading the broker flagged as a redelivery (DUP) and that the engine did
not recognise (the agent restarted in between) carries ``"redelivered": true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import AgentConfig, client_id, publisher_id
from edge_agent.core.domain import InvalidReading, Reading, Verdict, clip
from edge_agent.core.episodes import NEW_NORMAL
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt.access import apply_access
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.ledger import AckLedger, Outcome, Receipt
from edge_agent.mqtt.session import SubscriptionRecord
from edge_agent.mqtt.topics import TopicTemplate, render
from edge_agent.pipeline import Envelope

log = logging.getLogger(__name__)

# last_error before the first connection attempt has ended (readiness shows it).
NOT_TRIED = "not connected yet"
REFUSED = "broker refused the connection"


# MQTT's own ceiling on a packet's size (its remaining-length field).
MQTT_MAX_PACKET = 268_435_455


def max_packet_size(max_payload_bytes: int) -> int:
    """The Maximum Packet Size the agent announces (MQTT 5): what one message may cost it in memory.

    Payloads up to a few times max_payload_bytes (at least 1 MiB) still arrive, to be counted
    and reported as too_large; the broker drops larger ones for the agent instead of making it
    read, say, 256 MB into memory.
    """
    return min(MQTT_MAX_PACKET, max(4 * max_payload_bytes, 2**20) + 65_536)


# Characters of a topic, sensor id or detail an error report carries: a 65,000-character
# topic must not become a 65 KB report.
REPORT_CHARS = 200


def packet_size(topic: bytes, payload: bytes, v5: bool) -> int:
    """Bytes of a QoS 1 PUBLISH packet without properties, as the broker counts them against its maximum."""
    remaining = 2 + len(topic) + 2 + (1 if v5 else 0) + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


# Retained messages already counted, remembered (by a hash of topic and payload) so a
# reconnect's replay of them is acknowledged without a count or a report each time.
RETAINED_MEMORY = 100_000

_PUBLISH = 0x30
# A PUBLISH's topic (2 + up to 65,535 bytes) and packet id: what is kept of one too large to read.
_PUBLISH_HEAD = 2 + 65_535 + 2
_SKIP_CHUNK = 65_536


class BoundedClient(paho.Client):
    """paho's client, never holding an incoming PUBLISH larger than ``incoming_limit`` whole.

    MQTT 3.1.1 has no Maximum Packet Size, and paho reads every packet whole into one
    growing bytes object (a 256 MB payload: peak RSS 47 -> 819 MiB). paho has no option
    or hook for this, so this overrides its private ``_sock_recv``, which ``_packet_read``
    calls once the packet's remaining length is known: past the limit it keeps only the
    topic and packet id and throws the rest away as it arrives, in chunks. The message
    then reaches ``on_message`` with a cut payload and ``oversized`` set to its true
    length, to be reported as too_large and acknowledged (tests/test_poison.py checks
    this against the paho version installed).
    """

    incoming_limit = MQTT_MAX_PACKET
    oversized = 0  # remaining length of the PUBLISH being (or just) skipped; 0: none

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if not packet["have_remaining"]:
            self.oversized = 0  # a new packet begins
        elif (packet["command"] & 0xF0) == _PUBLISH and packet["remaining_length"] > self.incoming_limit:
            self.oversized = packet["remaining_length"]
            if len(packet["packet"]) > _PUBLISH_HEAD:
                packet["packet"] = packet["packet"][:_PUBLISH_HEAD]
            bufsize = min(bufsize, _SKIP_CHUNK)
        return super()._sock_recv(bufsize)


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Send each small packet (a verdict, a PUBACK) at once instead of waiting to coalesce.

    paho leaves Nagle's algorithm on; with acknowledgements that wait for verdicts,
    a verdict held back for a delayed TCP ACK stalls the readings behind it.
    """
    import socket

    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a test double, a unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        self._submit: Callable[[Envelope], None] | None = None
        self._subscriptions = list(parser.subscriptions)
        self._sensor_filters = len(self._subscriptions)  # the first ones; listeners' follow
        self._retained_seen: set[int] = set()
        agent = cfg.agent_id
        self._verdict_topic = TopicTemplate(cfg.topics.verdicts)
        self._alert_topic = TopicTemplate(cfg.topics.alerts)
        self._errors_topic = render(cfg.topics.errors, agent_id=agent)
        self.status_topic = render(cfg.topics.status, agent_id=agent)
        self._agent_id = agent

        # Which publish settles which reading, and what a reconnect invalidates.
        self.ledger = AckLedger(cfg.mqtt.max_in_flight)
        metrics.readings_in_hand.set_function(lambda: self.ledger.in_hand)
        metrics.publishes_in_flight.set_function(lambda: self.ledger.in_flight)
        self._lock = threading.Lock()  # guards the fields below; never held while calling paho
        self._connected = False  # the intake connection
        self._subscribed = False
        self._publishing = False  # the publishing connection
        self._closing = False
        # Publishes waiting for the publishing connection to acknowledge them (the worker waits for
        # room below mqtt.max_in_flight, and while the connection is down or re-sending).
        metrics.verdicts_held.set_function(lambda: 0.0 if self._publishing else float(self.ledger.in_flight))
        self._last_refusal_log = 0.0
        self._refusing = False  # the broker refused a verdict and none has gone through since
        self.last_error: str = NOT_TRIED
        # Where the session's filters are remembered (set by the agent; None: not remembered).
        self.subscriptions_file: Path | None = None
        self._record: SubscriptionRecord | None = None
        self._v5 = cfg.mqtt.protocol == "5"
        # The largest packet the broker takes: the config's, lowered by what a CONNACK says.
        self.max_packet = cfg.mqtt.broker_max_packet_size or MQTT_MAX_PACKET
        self._last_too_large_log = 0.0

        self.client = self._make_intake(env)  # readings in, their acknowledgements out
        self.publisher = self._make_publisher(env)  # everything the agent publishes

    # -- setup ---------------------------------------------------------------------------

    def _make_intake(self, env: dict[str, str]) -> BoundedClient:
        client = BoundedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id(self.cfg),
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        # MQTT 5 tells the broker this limit (it drops larger messages for us); 3.1.1 cannot.
        client.incoming_limit = max_packet_size(self.cfg.max_payload_bytes)
        self._set_up(client, env, self._on_connect, self._on_connect_fail, self._on_disconnect)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def _make_publisher(self, env: dict[str, str]) -> paho.Client:
        """A clean session: it subscribes to nothing, and paho re-sends its QoS 1 publishes in flight
        on every reconnect whatever the session (their PUBACKs then settle their readings, ledger.py)."""
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=publisher_id(self.cfg),
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else True,
        )
        # No window of paho's own: the ledger's bound (mqtt.max_in_flight, or the broker's Receive
        # Maximum if smaller) holds the worker back, so every publish goes out at once. With a window,
        # paho walks its table of messages in flight on every PUBACK to find one to send next.
        client.max_inflight_messages_set(0)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self._set_up(client, env, self._on_publisher_connect, self._on_publisher_connect_fail, self._on_publisher_disconnect)
        client.on_publish = self._on_publish
        return client

    def _set_up(self, client: paho.Client, env: dict[str, str], on_connect: Any, on_connect_fail: Any, on_disconnect: Any) -> None:
        """What both connections share: backoff, log-in and TLS, TCP_NODELAY, the connection callbacks."""
        m = self.cfg.mqtt
        # paho annotates these as int but sleeps for float seconds (the tests use 0.2).
        client.reconnect_delay_set(min_delay=m.reconnect_min_delay, max_delay=m.reconnect_max_delay)  # type: ignore[arg-type]
        apply_access(client, self.cfg, env)
        client.on_socket_open = _no_delay
        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_disconnect = on_disconnect

    def start(self, submit: Callable[[Envelope], None]) -> None:
        """Connect in the background (retrying with backoff) and start delivering readings."""
        self._submit = submit
        if self.subscriptions_file is not None:
            self._record = SubscriptionRecord(self.subscriptions_file, self._subscriptions)
        m = self.cfg.mqtt
        if m.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry
            props.ReceiveMaximum = m.receive_maximum
            props.MaximumPacketSize = max_packet_size(self.cfg.max_payload_bytes)
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=False, properties=props)
            self.publisher.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=True)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
            self.publisher.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.publisher.loop_start()
        self.client.loop_start()

    def not_ready(self) -> str:
        """Which connection keeps :attr:`connected` false ("" when it is true)."""
        if not self._connected:
            return "intake connection down"
        if not self._subscribed:
            return "intake connection not subscribed"
        if not self._publishing:
            return "publishing connection down"
        return "the broker refuses verdicts" if self._refusing else ""

    @property
    def connected(self) -> bool:
        """Both connections up, the intake subscribed, and verdicts accepted: readings can flow."""
        return self._connected and self._subscribed and self._publishing and not self._refusing

    def add_listener(self, topic_filter: str, callback: Callable[[bytes], None]) -> None:
        """Also subscribe to ``topic_filter`` (call before ``start``); its payloads go to ``callback``, not to scoring.

        Used for Home Assistant's status topic. ``callback`` runs on the network thread.
        """

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                callback(bytes(message.payload))
            finally:
                if message.qos > 0:  # manual acks: nobody else acknowledges this one
                    client.ack(message.mid, message.qos)

        self._subscriptions.append(topic_filter)
        self.client.message_callback_add(topic_filter, on_message)

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"{REFUSED} (intake): {reason}"
            log.error("%s (%s:%d)", self.last_error, self.cfg.mqtt.host, self.cfg.mqtt.port)
            return
        # Readings of earlier connections can no longer be acknowledged; the broker redelivers them.
        self.ledger.intake_reconnected()
        with self._lock:
            self._connected = True
            self._subscribed = False
        if self._publishing:
            self.last_error = ""
        log.info(
            "intake connection connected to %s:%d as %s (session %s)", self.cfg.mqtt.host, self.cfg.mqtt.port,
            client_id(self.cfg), "resumed" if flags.session_present else "new",
        )
        record = self._record
        if record is not None and record.stale:
            # The session may still hold filters of an earlier config: they would deliver old topics.
            client.unsubscribe(list(record.stale))
        # Subscribe on every connect: a broker that lost the session has lost these too.
        # MQTT 5: retained readings are sent when a subscription is made, not again when a
        # resumed session already has it (retain handling 1). 3.1.1 gets them every time.
        sensors = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB) if self._v5 else 1
        filters = [(f, sensors if i < self._sensor_filters else 1) for i, f in enumerate(self._subscriptions)]
        client.subscribe(filters)  # type: ignore[arg-type]  # paho's annotation allows no list mixing options and QoS ints

    def _on_publisher_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"{REFUSED} (publishing): {reason}"
            log.error("%s (%s:%d)", self.last_error, self.cfg.mqtt.host, self.cfg.mqtt.port)
            return
        # Receipts stay valid: paho re-sends the publishes in flight, whose PUBACKs settle their readings.
        resent = self.ledger.publisher_reconnected(getattr(properties, "ReceiveMaximum", None) if properties is not None else None)
        announced = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        self.max_packet = min(self.cfg.mqtt.broker_max_packet_size or MQTT_MAX_PACKET, announced or MQTT_MAX_PACKET)
        with self._lock:
            self._publishing = True
        if self._connected:
            self.last_error = ""
        self.metrics.broker_connected.labels("publish").set(1)
        log.info("publishing connection connected to %s:%d as %s%s", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 publisher_id(self.cfg), f" ({resent} publishes in flight re-sent)" if resent else "")
        self._publish(self.status_topic, "online", retain=True)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        refused = [f for f, r in zip(self._subscriptions, reasons, strict=True) if r.is_failure]
        if refused:
            self.last_error = f"broker refused the subscription to {', '.join(refused)}"
            log.error("%s", self.last_error)
            return
        self._subscribed = True
        self.metrics.broker_connected.labels("intake").set(1)  # "connected and subscribed": readings can arrive now
        if self._record is not None:
            self._record.save()

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if self._record is not None and self._record.stale:
            log.info("unsubscribed from filters no longer configured: %s", ", ".join(self._record.stale))
            self._record.unsubscribed()  # the only UNSUBSCRIBE the agent sends

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` block: the exception says why
        # (refused, unreachable, a certificate that does not verify, a host name mismatch).
        error = sys.exc_info()[1]
        reason = str(error) if error is not None else "connection failed"
        self._attempt_failed(f"cannot connect to {self.cfg.mqtt.host}:{self.cfg.mqtt.port} (intake connection): {reason}")

    def _on_publisher_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        error = sys.exc_info()[1]
        reason = str(error) if error is not None else "connection failed"
        self._attempt_failed(f"cannot connect to {self.cfg.mqtt.host}:{self.cfg.mqtt.port} (publishing connection): {reason}")

    def _attempt_failed(self, why: str) -> None:
        self.last_error = why
        now = time.monotonic()
        if now - self._last_refusal_log >= 10.0:  # a broker that is away for an hour: not a line per retry
            self._last_refusal_log = now
            log.warning("%s; retrying", why)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._subscribed = False
        self.metrics.broker_connected.labels("intake").set(0)
        self._disconnected("intake", was_connected, reason)

    def _on_publisher_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            was_connected = self._publishing
            self._publishing = False
        self.ledger.publisher_disconnected()  # new verdicts wait until what was in flight is re-sent
        self.metrics.broker_connected.labels("publish").set(0)
        self._disconnected("publishing", was_connected, reason)

    def _disconnected(self, connection: str, was_connected: bool, reason: Any) -> None:
        if self._closing:
            return
        if was_connected:
            self.last_error = f"disconnected from broker ({connection} connection): {reason}"
            log.warning("%s; reconnecting", self.last_error)
        elif not self.last_error.startswith(REFUSED):  # a refused CONNACK is followed by a disconnect too: keep it
            # Closed before any CONNACK, e.g. by a TLS 1.3 broker that wants a client
            # certificate: it checks only after the handshake, so connecting "succeeded".
            self._attempt_failed(f"the broker closed the connection before accepting it ({connection} connection: {reason})")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        arrived = time.monotonic()
        if message.qos > 0:
            # Flow control: while the agent holds receive_maximum readings, this network thread
            # stops reading its socket and the broker holds the rest. Settles wake it (the
            # publishing connection's PUBACKs, rejections); their acknowledgements are queued on
            # this client and written once it runs again.
            bound = self.cfg.mqtt.receive_maximum
            while not self.ledger.wait_to_receive(bound, 0.25):
                if self._closing or not self._connected:
                    break
        if self._closing:
            return  # not acknowledged: redelivered to the next session
        receipt = self.ledger.receive(message.mid, message.qos, arrived) if message.qos > 0 else None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # Mosquitto refuses such topics, other brokers may not; paho hands them over undecoded.
            topic = None
        if topic is not None and self._record is not None and self._record.only_stale(topic):
            self.settle(receipt)  # queued for a filter the config no longer has: not a reading
            return
        oversized = getattr(client, "oversized", 0)
        items: list[Reading | InvalidReading]
        if topic is None:
            items = [InvalidReading("unknown_topic", "topic is not valid UTF-8", None, None)]
        elif oversized:
            items = [InvalidReading("too_large", f"message is {oversized} bytes, over the {self.client.incoming_limit} the agent "
                                    "reads (it was skipped, not read into memory)", topic, None)]
        elif message.retain:
            # A retained reading is an old one replayed on subscribe, not a new measurement:
            # counted and reported the first time, acknowledged quietly on later replays.
            seen = hash((topic, message.payload))
            if seen in self._retained_seen:
                self.settle(receipt)
                return
            if len(self._retained_seen) < RETAINED_MEMORY:
                self._retained_seen.add(seen)
            items = [InvalidReading("retained", "retained messages are old readings and are not scored", topic, None)]
        else:
            payload = cast(bytes, message.payload)  # bytes off the wire (bytearray only for messages built locally)
            items = self.parser.parse_message(topic, payload, time.time(), redelivered=bool(message.dup))
            if not items:  # nothing in it to score (see PayloadParser.parse_message)
                self.settle(receipt)
                return
        assert self._submit is not None
        for item in items[:-1]:
            self._submit(Envelope(item))
        self._submit(Envelope(items[-1], receipt))  # the last one's answer settles the message

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._carry_out(self.ledger.puback(mid, refused=bool(getattr(reason, "is_failure", False))), reason)

    def _carry_out(self, outcome: Outcome, reason: Any) -> None:
        """Do what the ledger decided about one publish's answer."""
        if outcome.refused:
            self._refused(reason)
            return
        if outcome.answered:
            self._refusing = False
        if outcome.settle is not None:
            self._ack(outcome.settle)
        if outcome.latency is not None:
            self.metrics.verdict_latency.observe(outcome.latency)

    def _ack(self, receipt: Receipt) -> None:
        self.client.ack(receipt.mid, receipt.qos)  # on the intake connection, from whichever thread settles

    def _refused(self, reason: Any) -> None:
        """The broker did not take a message (MQTT 5 PUBACK with an error, e.g. the ACL): its reading stays unacknowledged."""
        self._refusing = True
        self.last_error = f"broker refused a publish: {reason} (check the ACL for edge/{self._agent_id}/#)"
        now = time.monotonic()
        if now - self._last_refusal_log >= 10.0:
            self._last_refusal_log = now
            log.error("%s; the readings concerned are left to the broker, which redelivers them", self.last_error)

    # -- publishing (worker thread, and the network thread on connect) ----------------------

    def publish_retained(self, topic: str, payload: str) -> bool:
        """A retained QoS 1 message of another part of the agent (Home Assistant discovery), tracked like the rest."""
        return self._publish(topic, payload, retain=True).rc == paho.MQTT_ERR_SUCCESS

    def _publish(self, topic: str, payload: str, receipt: Receipt | None = None, retain: bool = False) -> paho.MQTTMessageInfo:
        """Publish at QoS 1 and settle ``receipt``'s reading once the broker has the message."""
        self.ledger.begin()
        info: paho.MQTTMessageInfo | None = None
        try:
            info = self.publisher.publish(topic, payload, qos=1, retain=retain)
        finally:
            # rc NO_CONN: paho queued it and sends it on reconnect; other codes: not queued at all.
            queued = info is not None and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)
            outcome = self.ledger.register(info.mid if queued and info is not None else None, receipt)
        self._carry_out(outcome, "not accepted")
        assert info is not None
        return info

    def publish_verdict(self, verdict: Verdict, envelope: Envelope) -> None:
        receipt = envelope.token if isinstance(envelope.token, Receipt) else None
        redelivered = isinstance(envelope.item, Reading) and envelope.item.redelivered and not verdict.duplicate
        self._publish_verdict(verdict, receipt, redelivered)

    def _publish_verdict(self, verdict: Verdict, receipt: Receipt | None, redelivered: bool = False) -> None:
        """Blocks while ``mqtt.max_in_flight`` publishes await their PUBACK (the worker's thread, never a network thread)."""
        # Also while the publishing connection is down, and after a reconnect until paho has re-sent
        # what was in flight: a verdict is never overtaken by the marked verdict of its reading's
        # redelivery (ledger.py, "Re-sent first").
        while not self.ledger.wait_for_room(1.0):
            if self._closing:
                break  # paho queues it; stopping must not wait for the broker
        body = verdict.to_payload()
        if redelivered:
            # The broker re-sent this reading and this process does not remember answering
            # it (it restarted): it may repeat a verdict published before.
            body["redelivered"] = True
        payload = json.dumps(body, separators=(",", ":"))
        sensor = verdict.sensor_id
        alert = (verdict.anomaly or verdict.event == NEW_NORMAL) and not verdict.duplicate
        topic = self._verdict_topic.render(agent_id=self._agent_id, sensor_id=sensor)
        alert_topic = self._alert_topic.render(agent_id=self._agent_id, sensor_id=sensor) if alert else ""
        size = max(self._size(topic, payload), self._size(alert_topic, payload) if alert else 0)
        if size > self.max_packet:
            self._too_large(sensor, size, receipt)
            return
        if alert:
            self._publish(alert_topic, payload)
        # Alert first: the broker handles one connection's packets in order, so the verdict's
        # PUBACK, which settles the reading, means it has the alert too.
        self._publish(topic, payload, receipt)

    def _size(self, topic: str, payload: str) -> int:
        return packet_size(topic.encode(), payload.encode(), self._v5)

    def _too_large(self, sensor_id: str, size: int, receipt: Receipt | None) -> None:
        """A verdict the broker would refuse (and disconnect for, again on every resend): report it instead.

        The short report's PUBACK acknowledges the reading, so the broker does not redeliver
        it; when even the report does not fit, the reading is acknowledged at once.
        """
        detail = f"its verdict takes {size} bytes; the broker takes packets of at most {self.max_packet}"
        self.metrics.invalid.labels(reason="verdict_too_large").inc()
        now = time.monotonic()
        if now - self._last_too_large_log >= 1.0:
            self._last_too_large_log = now
            log.warning("reading of sensor %r not answered with a verdict: %s", clip(sensor_id), detail)
        for chars in (REPORT_CHARS, 40, 0):  # the id cut shorter until the report fits
            body = {"topic": None, "sensor_id": clip(sensor_id, chars) if chars else None, "reason": "verdict_too_large",
                    "detail": detail, "ts": time.time()}
            report = json.dumps(body, separators=(",", ":"))
            if self._size(self._errors_topic, report) <= self.max_packet:
                self._publish(self._errors_topic, report, receipt)
                return
        self.settle(receipt)

    def publish_error(self, invalid: InvalidReading) -> None:
        """Report a rejected message on the errors topic (its settling is separate: :meth:`settle`)."""
        if self._publishing:
            body = {
                "topic": clip(invalid.topic, REPORT_CHARS),
                "sensor_id": clip(invalid.sensor_id, REPORT_CHARS),
                "reason": invalid.reason,
                "detail": clip(invalid.detail, REPORT_CHARS),
                "ts": time.time(),
            }
            report = json.dumps(body, separators=(",", ":"))
            if self._size(self._errors_topic, report) <= self.max_packet:
                self._publish(self._errors_topic, report)

    def settle(self, token: object) -> None:
        """Acknowledge a message nothing will answer (a rejection, another agent's sensor), if its connection is still up."""
        if isinstance(token, Receipt) and self.ledger.settle(token):
            self._ack(token)

    # -- shutdown ------------------------------------------------------------------------

    def stop_intake(self) -> None:
        """Stop handing over new readings (they stay unacknowledged at the broker)."""
        self._closing = True

    def wait_for_acks(self, timeout: float) -> bool:
        """Until every reading whose verdict is out has been acknowledged; False on timeout or disconnect."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = self.ledger.awaiting()
            if not waiting or not self._connected:
                return not waiting
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def close(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, disconnect both connections and stop their network threads."""
        self._closing = True
        if self._publishing:
            info = self._publish(self.status_topic, "offline", retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self.publisher.disconnect()
        self.publisher.loop_stop()
        for connection in ("intake", "publish"):
            self.metrics.broker_connected.labels(connection).set(0)
