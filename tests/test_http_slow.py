"""Slow clients cannot take HTTP down: 300 connections dripping bytes, real calls and probes still answered."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge_agent.config import HTTPConfig
from edge_agent.core.engine import ScoringEngine
from edge_agent.http.api import HttpApi
from edge_agent.model_files import load_model

SLOW = 300  # more than the server's 256 connections
DRIP_SECONDS = 0.5
TEST_SECONDS = 8.0


def _drip(address: tuple[str, int], stop: threading.Event, reopened: list[int]) -> None:
    """SLOW connections, each sending one byte of a request head every DRIP_SECONDS; reopened when cut."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    socks: dict[socket.socket, int] = {}

    def open_one() -> None:
        s = socket.create_connection(address, timeout=2)
        s.setblocking(False)
        socks[s] = 0

    for _ in range(SLOW):
        open_one()
    while not stop.is_set():
        for s in list(socks):
            try:
                s.send(head[socks[s] % len(head):][:1])
                socks[s] += 1
            except OSError:
                socks.pop(s)
                s.close()
                reopened[0] += 1
                open_one()
        readable, _, _ = select.select(list(socks), [], [], 0)
        for s in readable:  # a 408/503 or a close: the server cut it; the attacker comes back
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data or b"HTTP/1.1" in data:
                socks.pop(s)
                s.close()
                reopened[0] += 1
                open_one()
        stop.wait(DRIP_SECONDS)
    for s in socks:
        s.close()


def _call(address: tuple[str, int], method: str, path: str, body: bytes | None = None) -> int:
    try:
        conn = http.client.HTTPConnection(*address, timeout=5)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def test_300_slow_connections_leave_predict_and_healthz_answered(models_dir: Path) -> None:
    engine = ScoringEngine({"default": load_model(models_dir / "default")}, default="default")
    api = HttpApi(HTTPConfig(host="127.0.0.1", port=0), engine.predict, lambda: (True, ""), CollectorRegistry())
    address = api.start()
    stop = threading.Event()
    reopened = [0]
    attacker = threading.Thread(target=_drip, args=(address, stop, reopened), daemon=True)
    try:
        attacker.start()
        time.sleep(1.0)  # the slow connections are in
        predict: list[int] = []
        health: list[int] = []
        end = time.monotonic() + TEST_SECONDS
        while time.monotonic() < end:
            predict.append(_call(address, "POST", "/predict", json.dumps({"value": 0.9}).encode()))
            if len(predict) % 5 == 0:
                health.append(_call(address, "GET", "/healthz"))
            time.sleep(0.02)
    finally:
        stop.set()
        attacker.join(10)
        api.stop()
    answered = sum(s == 200 for s in predict) / len(predict)
    print(f"FIGURE: {SLOW} slow connections ({reopened[0]} reopened after being cut): {sum(s == 200 for s in predict)} of "
          f"{len(predict)} /predict and {sum(s == 200 for s in health)} of {len(health)} /healthz answered")
    assert len(predict) >= 100 and len(health) >= 20
    assert answered >= 0.99, f"{answered:.1%} of {len(predict)} /predict answered; statuses {sorted(set(predict))}"
    assert all(s == 200 for s in health), f"/healthz: {health}"


class _SlowCollector:
    """A registry collector that takes a while: /metrics connections stay busy answering."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def collect(self):
        time.sleep(self.seconds)
        return iter(())


def test_probes_are_answered_when_every_connection_is_busy(models_dir: Path) -> None:
    registry = CollectorRegistry()
    registry.register(_SlowCollector(1.5))
    engine = ScoringEngine({"default": load_model(models_dir / "default")}, default="default")
    api = HttpApi(HTTPConfig(host="127.0.0.1", port=0), engine.predict, lambda: (True, ""), registry, max_connections=2)
    address = api.start()
    busy = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        for sock in busy:  # both connections wait for a render: nothing to shed
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        time.sleep(0.3)
        assert _call(address, "GET", "/healthz") == 200
        assert _call(address, "GET", "/readyz") == 200
        assert _call(address, "POST", "/predict", json.dumps({"value": 0.9}).encode()) == 503
    finally:
        for sock in busy:
            sock.close()
        api.stop()
