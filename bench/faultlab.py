"""Harness for the fault scenarios: a killable agent process, sensors, a verdict observer and the tally.

Used by ``bench/faults.py`` (the scenarios and the standalone table) and, through it, by
``tests/test_faults.py``. Everything talks to a Mosquitto of its own on a loopback port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.mqtt.local_broker import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
# Delivery limits copied from the shipped broker config, so the scenarios test what is deployed.
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


# --------------------------------------------------------------------------- the agent process


class AgentProcess:
    """``edge-agent run`` as a subprocess (so it can be SIGKILLed), with its HTTP port known in advance."""

    def __init__(
        self,
        broker: MosquittoBroker,
        workdir: Path,
        agent_id: str,
        overrides: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.broker = broker
        self.agent_id = agent_id
        self.http_port = free_port()
        self.log_path = workdir / f"agent-{agent_id}.log"
        self.overrides = [
            f"agent_id={agent_id}",
            f"mqtt.host={broker.host}",
            f"mqtt.port={broker.port}",
            "mqtt.reconnect_min_delay=0.2",
            "mqtt.reconnect_max_delay=1",
            "http.host=127.0.0.1",
            f"http.port={self.http_port}",
            # Another model directory: its "default" model scores every sensor.
            *([f"models.dir={models_dir}", "models.assign={}"] if models_dir is not None else []),
            *overrides,
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")}
        self.env = {**base, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(ROOT / "config.yaml")]
        for item in self.overrides:
            cmd += ["--set", item]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, cwd=str(self.log_path.parent))
        finally:
            log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (models loaded, broker connected and subscribed)."""
        deadline = time.monotonic() + timeout
        while self.http("/readyz")[0] != 200:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc and self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def metrics(self) -> str:
        status, body = self.http("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return body.decode()

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory now (``VmHWM``: the peak so far), from /proc."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) * 1024 if match else 0

    def peak_rss_bytes(self) -> int:
        """The most the agent has had resident since it started (VmHWM)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) * 1024 if match else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample from Prometheus text, 0 when absent."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def sensor_label_count(text: str) -> int:
    """Distinct sensor label values on the per-sensor readings counter."""
    return len(set(re.findall(r'^edge_agent_readings_total\{sensor="([^"]*)"\}', text, re.M)))


@dataclass(frozen=True)
class Lab:
    """Where a scenario keeps its logs, and which models its agents load (None: the repo's)."""

    workdir: Path
    models_dir: Path | None = None

    def agent(self, broker: MosquittoBroker, agent_id: str, overrides: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> AgentProcess:
        return AgentProcess(broker, self.workdir, agent_id, overrides, env, self.models_dir)


# --------------------------------------------------------------------------- sensors


@dataclass(slots=True)
class Sent:
    """One reading a sensor published, and whether the agent owes it a verdict."""

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
    """A sensor-side MQTT client: QoS 1, queues in memory while the broker is away (as paho does).

    At most ``window`` readings wait unacknowledged: past it, ``publish`` waits for the broker,
    so "as fast as it can" means as fast as the broker accepts, as for a real device.
    """

    def __init__(self, broker: MosquittoBroker, name: str = "", window: int = SENSOR_WINDOW,
                 window_timeout: float = 300.0) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-{name}-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(0.2, 1)
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

    def publish(self, topic: str, payload: bytes | str, *, sensor_id: str = "", ts: Any = None,
                good: bool = False, qos: int = 1, retain: bool = False) -> Sent:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._unacked) < self.window, self.window_timeout):
                raise TimeoutError(f"the broker acknowledged none of {len(self._unacked)} readings "
                                   f"in {self.window_timeout} s")
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
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

    def reading(self, sensor_id: str, ts: int, value: float) -> Sent:
        payload = json.dumps({"value": value, "ts": ts})
        return self.publish(f"sensors/{sensor_id}", payload, sensor_id=sensor_id, ts=ts, good=True)

    def wait_accepted(self, timeout: float) -> bool:
        """Until the broker has acknowledged everything published (QoS 1), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(s.accepted for s in self.sent if s.info.mid):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Sensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """Normal readings of a few sensors at a steady rate, from a thread, until stopped or ``count`` reached."""

    def __init__(self, sensor: Sensor, sensor_ids: Sequence[str], rate: float, count: int, ts_base: int = 1_700_000_000) -> None:
        self.sensor = sensor
        self.sensor_ids = list(sensor_ids)
        self.rate = rate
        self.count = count
        self.ts_base = ts_base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.count):
            if self._stop.is_set():
                return
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sensor_id = self.sensor_ids[i % len(self.sensor_ids)]
            # Values a vibration sensor reads in normal operation; ts unique per reading.
            self.sensor.reading(sensor_id, self.ts_base + i, round(0.9 + 0.02 * ((i * 7) % 5 - 2), 4))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # a scenario that failed half-way leaves no thread publishing behind it


# --------------------------------------------------------------------------- the observer


@dataclass(frozen=True, slots=True)
class Observed:
    at: float
    topic: str
    payload: bytes
    dup: bool


class Observer:
    """Subscribes to the agent's output with a persistent session, so a broker restart loses nothing of it."""

    def __init__(self, broker: MosquittoBroker, agent_id: str) -> None:
        self.agent_id = agent_id
        self.messages: list[Observed] = []
        # Verdict keys in arrival order, and as a set: a 500,000-reading backlog is checked as it drains.
        self._answered_log: list[tuple[str, Any]] = []
        self._answered: set[tuple[str, Any]] = set()
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{agent_id}", protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("observer did not subscribe")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"edge/{self.agent_id}/verdicts/#", 1), (f"edge/{self.agent_id}/errors", 1),
                              (f"edge/{self.agent_id}/status", 1)])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        observed = Observed(time.time(), message.topic, message.payload, bool(message.dup))
        key = _key(observed) if message.topic.startswith(f"edge/{self.agent_id}/verdicts/") else None
        with self._cond:
            self.messages.append(observed)
            if key is not None:
                self._answered.add(key)
                self._answered_log.append(key)
            self._cond.notify_all()

    def verdicts(self) -> list[Observed]:
        prefix = f"edge/{self.agent_id}/verdicts/"
        with self._cond:
            return [m for m in self.messages if m.topic.startswith(prefix)]

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

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(m: Observed) -> tuple[str, Any]:
    v = json.loads(m.payload)
    return (v["sensor_id"], v["ts"])


# --------------------------------------------------------------------------- the tally


@dataclass(frozen=True)
class Tally:
    """Delivery numbers for the readings that were owed a verdict."""

    sent: int  # good readings published
    accepted: int  # of those, acknowledged by the broker
    answered: int  # distinct accepted readings with at least one verdict
    lost: int  # accepted readings without a verdict
    duplicated: int  # verdicts beyond the first for one reading
    unmarked_duplicates: int  # of those, without "duplicate" or "redelivered" (a consumer could not tell)


def tally(sent: Sequence[Sent], verdicts: Sequence[Observed]) -> Tally:
    owed = [s for s in sent if s.good]
    accepted = {s.key for s in owed if s.accepted}
    copies: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    seen_payloads: set[tuple[str, bytes]] = set()
    for m in verdicts:
        # The broker re-sending one message to the observer (DUP set, identical bytes) is the
        # observer's own at-least-once, not a second verdict from the agent.
        if m.dup and (m.topic, m.payload) in seen_payloads:
            continue
        seen_payloads.add((m.topic, m.payload))
        body = json.loads(m.payload)
        copies.setdefault((body["sensor_id"], body["ts"]), []).append(body)
    answered = accepted & set(copies)
    extra = [c for key in copies for c in copies[key][1:]]
    unmarked = [c for c in extra if not (c.get("duplicate") or c.get("redelivered"))]
    return Tally(
        sent=len(owed),
        accepted=len(accepted),
        answered=len(answered),
        lost=len(accepted - answered),
        duplicated=len(extra),
        unmarked_duplicates=len(unmarked),
    )


@dataclass
class ScenarioResult:
    """One row of the fault table, plus the scenario's own measurements for its assertions."""

    name: str
    tally: Tally
    recovery_s: float | None = None
    peak_rss: int | None = None  # the agent's, in bytes, where the scenario measured it
    p99_s: float | None = None  # publish-to-verdict latency of the readings owed one, where measured
    hostile: int = 0  # messages (or requests) sent that the agent must refuse
    rejected: int = 0  # of those, refused and counted by the agent
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)


TABLE_HEADER = (
    ("| scenario | sent | accepted | answered | lost | duplicates (all marked) | peak RSS | p99 latency "
     "| hostile rejected | recovery | notes |"),
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
)


def table_row(r: ScenarioResult) -> str:
    t = r.tally
    recovery = f"{r.recovery_s:.1f} s" if r.recovery_s is not None else "-"
    marked = "yes" if t.unmarked_duplicates == 0 else f"no: {t.unmarked_duplicates} unmarked"
    hostile = f"{r.rejected} of {r.hostile}" if r.hostile else "-"
    rss = f"{r.peak_rss / 2**20:.0f} MiB" if r.peak_rss is not None else "-"
    p99 = f"{r.p99_s * 1000:.0f} ms" if r.p99_s is not None else "-"
    return (f"| {r.name} | {t.sent} | {t.accepted} | {t.answered} | {t.lost} | {t.duplicated} ({marked}) "
            f"| {rss} | {p99} | {hostile} | {recovery} | {r.notes} |")


def markdown_table(results: Iterable[ScenarioResult]) -> str:
    return "\n".join([*TABLE_HEADER, *(table_row(r) for r in results)])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
