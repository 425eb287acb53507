"""Brokers started locally: a Mosquitto process on a free port, or an embedded pure-Python one.

The demo uses them when no broker is reachable, and the tests use them so that
every test has a broker of its own that it can stop and restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class MosquittoBroker:
    """A mosquitto process on loopback with persistence in its own temp dir."""

    kind = "mosquitto"

    def __init__(self, extra_config: str = "", port: int | None = None) -> None:
        if MOSQUITTO is None:
            raise FileNotFoundError("no mosquitto binary on this machine")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # mosquitto started as root drops to the mosquitto user: the data dir must be writable by it.
        self.dir = Path(tempfile.mkdtemp(prefix="edge-broker-"))
        os.chmod(self.dir, 0o777)
        self.log_path = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "persistent_client_expiration 1d\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra_config}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("the mosquitto binary is not installed")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(self.host, self.port)
        except TimeoutError:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {err}") from None

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedBroker:
    """amqtt in a thread of its own: the broker of last resort, used where no mosquitto exists."""

    kind = "embedded"

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._thread: threading.Thread | None = None
        self._loop: Any = None
        self._broker: Any = None

    def start(self) -> None:
        import asyncio

        from amqtt.broker import Broker

        ready = threading.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "auth": {"allow-anonymous": True},
            "topic-check": {"enabled": False},
        }

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def boot() -> Any:
                broker = Broker(config)
                await broker.start()
                return broker

            try:
                self._broker = loop.run_until_complete(boot())
            finally:
                ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        wait_listening(self.host, self.port)

    def stop(self) -> None:
        import asyncio

        if self._loop is not None and self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(10)
        self._loop = self._broker = self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
