"""Harness for the fault scenarios: a killable agent process, a steady stream of readings and the tally.

Used by ``bench/faults.py`` (the scenarios and the standalone table) and, through it, by
``tests/test_faults.py``. The broker, the sensor and the verdict observer are the shared test
kit's (``bench/kit.py``); everything talks to a Mosquitto of its own on a loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.kit import ROOT, MosquittoBroker, Observed, Sensor, Sent, free_port, proc_cpu_seconds, proc_status, samples

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
        self.started_at = 0.0  # time.monotonic() of the latest start

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(ROOT / "config.yaml")]
        for item in self.overrides:
            cmd += ["--set", item]
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, cwd=str(self.log_path.parent))
        finally:
            log.close()

    def wait_ready(self, timeout: float = 30.0, unready: str | None = None) -> None:
        """Until /readyz answers 200 (models loaded, broker connected and subscribed), or, with
        ``unready``, 503 for a reason that says so (a fault the scenario made on purpose)."""
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            status, body = self.http("/readyz")
            return status == 200 or (unready is not None and status == 503 and unready in body.decode(errors="replace"))

        while not ready():
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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory now (``VmHWM``: the peak so far), from /proc."""
        return proc_status(self.pid, field) * 1024

    def peak_rss_bytes(self) -> int:
        """The most the agent has had resident since it started (VmHWM)."""
        return self.rss_bytes("VmHWM")

    def threads(self) -> int:
        """Threads the agent runs now."""
        return proc_status(self.pid, "Threads")

    def children(self) -> list[int]:
        """The agent's child processes now (the fit process, while it runs)."""
        pids: list[int] = []
        for listing in Path(f"/proc/{self.pid}/task").glob("*/children"):  # each thread lists the children it started
            with suppress(OSError):
                pids.extend(int(pid) for pid in listing.read_text().split())
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of the agent and its children (the fit process), running or exited."""
        total = proc_cpu_seconds(self.pid, reaped_children=True)
        for child in self.children():
            with suppress(OSError):  # gone since: once the agent has reaped it, its time is in the agent's own count
                total += proc_cpu_seconds(child)
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def log_lines(self, containing: str) -> int:
        """Lines of the agent's log that contain ``containing``."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return sum(1 for line in text.splitlines() if containing in line)


class Peaks:
    """The most threads an agent ran and the most memory its children (the fit process) held,
    sampled from /proc every ``every`` seconds while the context is open."""

    def __init__(self, agent: AgentProcess, every: float = 0.1) -> None:
        self.agent = agent
        self.every = every
        self.threads = 0
        self.child_rss = 0  # bytes: the highest VmHWM a child showed
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peaks", daemon=True)

    def sample(self) -> None:
        with suppress(OSError):  # the agent or a child between two states
            self.threads = max(self.threads, self.agent.threads())
            for child in self.agent.children():
                self.child_rss = max(self.child_rss, proc_status(child, "VmHWM") * 1024)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> Peaks:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def sensor_label_count(text: str) -> int:
    """Distinct sensor label values on the per-sensor readings counter."""
    return len({s.labels["sensor"] for s in samples(text, "edge_agent_readings_total") if "sensor" in s.labels})


@dataclass(frozen=True)
class Lab:
    """Where a scenario keeps its logs, and which models its agents load (None: the repo's)."""

    workdir: Path
    models_dir: Path | None = None

    def agent(self, broker: MosquittoBroker, agent_id: str, overrides: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> AgentProcess:
        return AgentProcess(broker, self.workdir, agent_id, overrides, env, self.models_dir)


# --------------------------------------------------------------------------- sensors


class Stream:
    """Normal readings of a few sensors at a steady rate, from a thread, until stopped or ``count`` reached.

    The sensors take turns. ``rounds``: a sensor's n-th reading has ts ``ts_base + n`` and the
    n-th value of the pattern, however many sensors there are (by default the i-th reading of
    the stream has ts ``ts_base + i``, so that with many sensors a sensor's clock runs as many
    seconds a reading, and with five or ten a sensor reads one value only).
    """

    def __init__(self, sensor: Sensor, sensor_ids: Sequence[str], rate: float, count: int, ts_base: int = 1_700_000_000,
                 rounds: bool = False) -> None:
        self.sensor = sensor
        self.sensor_ids = list(sensor_ids)
        self.rate = rate
        self.count = count
        self.ts_base = ts_base
        self.rounds = rounds
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
            n = i // len(self.sensor_ids) if self.rounds else i
            # Values a vibration sensor reads in normal operation; ts unique per reading.
            self.sensor.reading(sensor_id, self.ts_base + n, round(0.9 + 0.02 * ((n * 7) % 5 - 2), 4))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # a scenario that failed half-way leaves no thread publishing behind it


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
    resent: int = 0  # byte-identical copies of a verdict message seen again (QoS 1 at least once), not counted above


def tally(sent: Sequence[Sent], verdicts: Sequence[Observed]) -> Tally:
    owed = [s for s in sent if s.good]
    accepted = {s.key for s in owed if s.accepted}
    copies: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    seen_payloads: set[tuple[str, bytes]] = set()
    resent = 0
    for m in verdicts:
        # One verdict message seen again byte for byte is MQTT's QoS 1 at least once, not a second
        # verdict: the broker re-sending it to the observer (DUP set), or, around a broker restart,
        # the agent's client re-sending a verdict whose PUBACK the restart lost (DUP on the agent's
        # leg only, so the observer sees no flag). A second verdict for a reading differs from the
        # first (its duplicate or redelivered mark) and is counted below.
        if (m.topic, m.payload) in seen_payloads:
            resent += 0 if m.dup else 1
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
        resent=resent,
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
    if t.resent:
        marked += f"; {t.resent} verdict message(s) re-sent as is"
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
