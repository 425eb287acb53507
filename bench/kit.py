"""The one test kit, shared by the tests and the benches: brokers, MQTT clients, a sensor and a collector.

- ``start_test_broker()`` / ``running_broker()``: a real broker of its own on a free loopback port,
  which the caller may stop, kill and restart.
- ``client(...)``: every paho client the tests and benches build comes from here (TLS, auth,
  MQTT 3.1.1 and persistent sessions are arguments, not copies).
- ``Sensor``: publishes readings and records, per message, whether the broker acknowledged it
  (QoS 1 PUBACK seen by ``on_publish``; no private paho fields).
- ``Collector``: records what arrives on its subscriptions, optionally with a persistent session
  that survives a broker restart, with wait helpers. ``Observer`` is a collector of one agent's
  output that also keeps the (sensor, ts) keys its verdicts answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edge_agent.mqtt.local_broker import MOSQUITTO, EmbeddedBroker, MosquittoBroker, free_port, wait_listening

__all__ = [
    "MOSQUITTO", "Broker", "MosquittoBroker", "EmbeddedBroker", "ContainerBroker", "free_port", "wait_listening",
    "start_test_broker", "running_broker", "shipped_broker_limits",
    "Endpoint", "client", "Sent", "Sensor", "Observed", "Collector", "Observer", "metrics_text", "metric", "proc_status", "proc_cpu_seconds",
]

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- brokers


class Broker(Protocol):
    """What the kit's clients and the tests need of a broker: where it listens, and stopping it."""

    host: str
    port: int
    kind: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def close(self) -> None: ...


class ContainerBroker:
    """testcontainers' Mosquitto, for machines with a Docker engine but no mosquitto binary."""

    kind = "testcontainers"

    def __init__(self) -> None:
        from testcontainers.community.mqtt import MosquittoContainer

        self._container = MosquittoContainer()
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> None:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(self._container.MQTT_PORT))
        wait_listening(self.host, self.port)

    def stop(self) -> None:
        self._container.get_wrapped_container().stop()

    def restart(self) -> None:
        self._container.get_wrapped_container().restart()
        wait_listening(self.host, self.port)

    def close(self) -> None:
        self._container.stop()


def docker_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False).returncode == 0


def start_test_broker() -> MosquittoBroker | ContainerBroker | EmbeddedBroker:
    """Mosquitto if installed, else testcontainers' Mosquitto if Docker answers, else amqtt (MQTT 3.1.1 only)."""
    broker: MosquittoBroker | ContainerBroker | EmbeddedBroker
    if MOSQUITTO is not None:
        broker = MosquittoBroker()
    elif docker_available():
        broker = ContainerBroker()
    else:
        broker = EmbeddedBroker()
    broker.start()
    return broker


# Delivery limits copied from the shipped broker config, so the fault scenarios test what is deployed.
_SHIPPED_LIMITS = ("max_queued_messages", "max_queued_bytes", "max_inflight_messages", "persistent_client_expiration")


def shipped_broker_limits() -> str:
    """The delivery-limit lines of ``broker/mosquitto.conf``, to append to a test broker's config."""
    text = (ROOT / "broker" / "mosquitto.conf").read_text()
    lines = [line for line in text.splitlines() if line.split(" ", 1)[0] in _SHIPPED_LIMITS]
    return "\n".join(lines)


@contextmanager
def running_broker(extra_config: str = "") -> Iterator[MosquittoBroker]:
    """A Mosquitto of its own on a free loopback port, with persistence and the shipped limits (then ``extra_config``)."""
    broker = MosquittoBroker(extra_config=f"{shipped_broker_limits()}\n{extra_config}")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Endpoint:
    """Where an MQTT server listens, for one that is not a kit broker (NATS' MQTT port, say)."""

    host: str
    port: int


def client(
    name: str = "kit",
    *,
    client_id: str | None = None,
    protocol: MQTTProtocolVersion = paho.MQTTv311,
    clean_session: bool | None = None,
    manual_ack: bool = False,
    max_inflight: int | None = None,
    reconnect_delay: tuple[float, float] | None = None,
    auth: tuple[str, str] | None = None,
    tls: dict[str, Any] | None = None,
) -> paho.Client:
    """A paho client (callback API 2), not yet connected: ``client_id`` or ``name`` plus a random suffix."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id if client_id is not None else f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=protocol,
        # None: paho's default (a clean session for 3.1.1; MQTT 5 takes clean_start in connect()).
        clean_session=clean_session,
        manual_ack=manual_ack,
    )
    if max_inflight is not None:
        c.max_inflight_messages_set(max_inflight)
    if reconnect_delay is not None:
        c.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]  # paho annotates int; it sleeps a float
    if auth is not None:
        c.username_pw_set(*auth)
    if tls is not None:
        c.tls_set(**tls)
    return c


def session_properties(expiry_s: int, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties of an MQTT 5 persistent session (connect it with ``clean_start=False``)."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


# --------------------------------------------------------------------------- the sensor


@dataclass(slots=True)
class Sent:
    """One message a sensor published, and whether the agent owes it a verdict."""

    sensor_id: str
    ts: Any
    info: paho.MQTTMessageInfo
    good: bool
    at: float
    # The broker acknowledged it (PUBACK, seen by the sensor's on_publish): from here on
    # it must not be lost. (info.is_published() raises for a message published while
    # disconnected, though paho queues it and sends it on reconnect.)
    accepted: bool = False

    @property
    def key(self) -> tuple[str, Any]:
        return (self.sensor_id, self.ts)


# Readings a Sensor holds unacknowledged at most. paho numbers QoS 1 messages with 16-bit ids
# that wrap after 65,535 and refuses a publish (MQTT_ERR_QUEUE_SIZE) whose id a queued message
# still holds: a sensor publishing faster than the broker acknowledges must wait below that.
SENSOR_WINDOW = 60_000


class PublishRefused(RuntimeError):
    """The sensor's own client refused a reading: it never left the sensor, so nothing is owed for it."""


class Sensor:
    """A sensor-side MQTT client: QoS 1 by default, queues in memory while the broker is away (as paho does).

    ``publish`` returns at once with the record; ``send`` waits until the broker has the message.
    At most ``window`` readings wait unacknowledged: past it, ``publish`` waits for the broker,
    so "as fast as it can" means as fast as the broker accepts, as for a real device.
    """

    def __init__(self, broker: Any, name: str = "", *, max_inflight: int = 200, window: int = SENSOR_WINDOW,
                 window_timeout: float = 300.0, **client_args: Any) -> None:
        self.client = client(f"sensor-{name}" if name else "sensor", max_inflight=max_inflight,
                             reconnect_delay=(0.2, 1), **client_args)
        self.sent: list[Sent] = []
        self.window = window
        self.window_timeout = window_timeout
        self._lock = threading.Condition()
        # paho does not reuse a message id while its message is unacknowledged (it refuses the
        # publish instead, which publish() raises), so an id maps to one Sent; a PUBACK can beat
        # publish() to the record (_early).
        self._unacked: dict[int, Sent] = {}
        self._early: set[int] = set()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str | float, *, sensor_id: str = "", ts: Any = None,
                good: bool = False, qos: int = 1, retain: bool = False) -> Sent:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._unacked) < self.window, self.window_timeout):
                raise TimeoutError(f"the broker acknowledged none of {len(self._unacked)} readings "
                                   f"in {self.window_timeout} s")
        info = self.client.publish(topic, str(payload) if isinstance(payload, float) else payload, qos=qos, retain=retain)
        # Queued while disconnected (NO_CONN) is sent on reconnect; anything else never leaves.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise PublishRefused(f"paho refused {topic} (rc {info.rc}: {paho.error_string(info.rc)})")
        record = Sent(sensor_id, ts, info, good, time.time())
        with self._lock:
            self.sent.append(record)
            if info.mid in self._early:
                self._early.discard(info.mid)
                record.accepted = True
            elif qos > 0:
                self._unacked[info.mid] = record
        return record

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            record = self._unacked.pop(mid, None)
            if record is None:
                self._early.add(mid)
            else:
                record.accepted = True
            self._lock.notify_all()

    def send(self, topic: str, payload: bytes | str | float, qos: int = 1, retain: bool = False,
             timeout: float = 10.0) -> Sent:
        """Publish and, at QoS 1 or 2, wait until the broker has acknowledged it (TimeoutError if not)."""
        record = self.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            with self._lock:
                if not self._lock.wait_for(lambda: record.accepted, timeout):
                    raise TimeoutError(f"the broker did not acknowledge {topic} in {timeout} s")
        return record

    def send_json(self, topic: str, obj: Any, qos: int = 1) -> Sent:
        return self.send(topic, json.dumps(obj), qos=qos)

    def reading(self, sensor_id: str, ts: int, value: float) -> Sent:
        """A reading the agent owes a verdict (``good``), on the default topic, not waited for."""
        payload = json.dumps({"value": value, "ts": ts})
        return self.publish(f"sensors/{sensor_id}", payload, sensor_id=sensor_id, ts=ts, good=True)

    def wait_accepted(self, timeout: float) -> bool:
        """Until the broker has acknowledged everything published (QoS 1), or ``timeout``."""
        with self._lock:
            # O(1) a wake-up: a scan of every record on each PUBACK made 66,000 of them take minutes.
            return self._lock.wait_for(lambda: not self._unacked, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Sensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the collector


@dataclass(frozen=True, slots=True)
class Observed:
    """One message as it arrived (``at``: wall clock, to compare with ``Sent.at`` and payload timestamps)."""

    at: float
    topic: str
    payload: bytes
    dup: bool
    retain: bool = False
    qos: int = 0

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """An MQTT client that records every message on its subscriptions.

    With ``session_expiry`` it connects with MQTT 5, a fixed ``client_id`` and ``clean_start=False``:
    the broker keeps its subscriptions and queued messages across a restart or a reconnect.
    """

    def __init__(self, broker: Any, topics: Sequence[str], *, client_id: str | None = None,
                 session_expiry: int | None = None, **client_args: Any) -> None:
        self.topics = list(topics)
        self.messages: list[Observed] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        persistent = session_expiry is not None
        if persistent:
            client_args.setdefault("protocol", paho.MQTTv5)
        self.client = client("collector", client_id=client_id, reconnect_delay=(0.2, 1), **client_args)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if persistent:
            assert session_expiry is not None
            self.client.connect(broker.host, broker.port, keepalive=10, clean_start=False,
                                properties=session_properties(session_expiry))
        else:
            self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        observed = Observed(time.time(), message.topic, bytes(message.payload), bool(message.dup), bool(message.retain), message.qos)
        with self._cond:
            self.messages.append(observed)
            self._arrived(observed)
            self._cond.notify_all()

    def _arrived(self, observed: Observed) -> None:
        """Called under the lock for each message: a subclass's own bookkeeping."""

    def wait_for(self, predicate: Callable[[list[Observed]], bool], timeout: float = 10.0) -> list[Observed]:
        """Until ``predicate`` holds for the messages so far (TimeoutError naming the last few if not)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met in {timeout} s; got {len(self.messages)} messages: "
                                       f"{[(m.topic, m.payload[:80]) for m in self.messages[-5:]]}")
                self._cond.wait(left)
            return list(self.messages)

    def wait_count(self, topic_prefix: str, n: int, timeout: float = 10.0) -> list[Observed]:
        msgs = self.wait_for(lambda ms: sum(m.topic.startswith(topic_prefix) for m in ms) >= n, timeout)
        return [m for m in msgs if m.topic.startswith(topic_prefix)]

    def under(self, topic_prefix: str) -> list[Observed]:
        with self._cond:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def json(self, topic_prefix: str) -> list[Any]:
        return [m.json() for m in self.under(topic_prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Observer(Collector):
    """One agent's output (verdicts, errors, status) with a persistent session: a broker restart loses none of it."""

    def __init__(self, broker: Any, agent_id: str) -> None:
        self.agent_id = agent_id
        self._verdict_prefix = f"edge/{agent_id}/verdicts/"
        # Verdict keys in arrival order, and as a set: a 500,000-reading backlog is checked as it drains.
        self._answered_log: list[tuple[str, Any]] = []
        self._answered: set[tuple[str, Any]] = set()
        super().__init__(broker, [f"{self._verdict_prefix}#", f"edge/{agent_id}/errors", f"edge/{agent_id}/status"],
                         client_id=f"observer-{agent_id}", session_expiry=600)

    def _arrived(self, observed: Observed) -> None:
        if observed.topic.startswith(self._verdict_prefix):
            key = verdict_key(observed)
            self._answered.add(key)
            self._answered_log.append(key)

    def verdicts(self) -> list[Observed]:
        return self.under(self._verdict_prefix)

    def errors(self) -> list[Observed]:
        topic = f"edge/{self.agent_id}/errors"
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def answered_keys(self) -> set[tuple[str, Any]]:
        with self._cond:
            return set(self._answered)

    def wait_answered(self, keys: Iterable[tuple[str, Any]], timeout: float) -> bool:
        """Until a verdict for every key has arrived, or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            pending = set(keys) - self._answered
            seen = len(self._answered_log)
            while True:
                pending.difference_update(self._answered_log[seen:])
                seen = len(self._answered_log)
                if not pending:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))

    def __enter__(self) -> Observer:
        return self


def verdict_key(m: Observed) -> tuple[str, Any]:
    """The reading a verdict answers: (sensor_id, ts)."""
    v = json.loads(m.payload)
    return (v["sensor_id"], v["ts"])


# --------------------------------------------------------------------------- a process, from /proc


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (memory in kB, Threads); 0 if it has no such field."""
    match = re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def proc_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of a process (and, with ``reaped_children``, of its children it has waited for)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(fields[i]) for i in ((11, 12, 13, 14) if reaped_children else (11, 12)))
    return ticks / CLOCK_TICKS


# --------------------------------------------------------------------------- an agent's /metrics


def metrics_text(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """An agent's /metrics, or "" while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def samples(text: str, name: str) -> list[Sample]:
    """The samples named ``name`` in Prometheus text, read by the client library's own parser."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def sample_sum(text: str, name: str) -> float | None:
    """The sum of a metric's samples over its labels in Prometheus text; None if it has none."""
    found = samples(text, name)
    return sum(s.value for s in found) if found else None


def metric(port: int, name: str, host: str = "127.0.0.1") -> float | None:
    """The sum of a metric's samples over its labels; None while the agent does not answer or has no such sample."""
    return sample_sum(metrics_text(port, host), name)
