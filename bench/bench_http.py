"""Throughput and latency of POST /predict: a real model behind HttpApi, driven by keep-alive clients.

    python -m bench.bench_http                  # wrk if installed, else Python client processes
    python -m bench.bench_http --client python --clients 16 --duration 10

The server runs in this process (its own thread, as in the agent); the load comes
from ``wrk`` or from client processes driving several connections each (so the
clients do not compete with the server for this interpreter's GIL). Every
connection is a closed loop: its next request goes out when its answer is in.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from prometheus_client import CollectorRegistry

from edge_agent.config import HTTPConfig
from edge_agent.core.engine import ScoringEngine
from edge_agent.core.features import FeatureSpec
from edge_agent.core.forest import Forest
from edge_agent.core.model import SensorModel, build_model
from edge_agent.http.api import HttpApi

BODY = b'{"value": 0.95}'
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Result:
    client: str
    clients: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def train(trees: int) -> SensorModel:
    """A one-feature model (value only): the cheapest forest, for --model toy."""
    from sklearn.ensemble import IsolationForest

    x = np.random.default_rng(0).normal(1.0, 0.1, size=(2000, 1))
    spec = FeatureSpec(fields=("value",), transforms=("value",))
    estimator = IsolationForest(n_estimators=trees, random_state=0).fit(x)
    return build_model("bench", "1", spec, Forest.from_sklearn(estimator), x, training={})


def shipped_model() -> SensorModel:
    """The model /predict really uses out of the box: models/default (five streaming features)."""
    from edge_agent.model_files import load_model

    return load_model(Path(__file__).resolve().parent.parent / "models" / "default")


def request_bytes(host: str, port: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


def read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one Content-Length-framed response from ``buf``+socket; returns its status code."""
    while (status := take_response(buf)) is None:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return status


def take_response(buf: bytearray) -> int | None:
    """Remove one complete response from ``buf`` and return its status, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    if len(buf) < end + 4 + length:
        return None
    del buf[: end + 4 + length]
    return int(head[9:12])


def python_clients(host: str, port: int, connections: int, start_at: float, stop_at: float, out: mp.Queue) -> None:
    """Drive several keep-alive connections from one process: each sends its next request
    as soon as its previous answer is in (a closed loop, like wrk). Reports latencies after warm-up."""
    request = request_bytes(host, port)
    latencies: list[int] = []
    errors = 0
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
        sel.register(sock, selectors.EVENT_READ, [bytearray(), 0])  # [buffer, sent at (ns)]
    while time.time() < start_at - WARMUP_SECONDS:
        time.sleep(0.01)
    for key in sel.get_map().values():
        key.data[1] = time.perf_counter_ns()
        key.fileobj.send(request)  # type: ignore[union-attr]
    measuring = False
    while True:
        now = time.time()
        if now >= stop_at:
            break
        measuring = measuring or now >= start_at
        for key, _ in sel.select(timeout=1.0):
            conn, state = cast(socket.socket, key.fileobj), key.data
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            state[0] += chunk
            status = take_response(state[0])
            if status is None:
                continue
            done = time.perf_counter_ns()
            if measuring:
                latencies.append(done - state[1])
                errors += status != 200
            state[1] = time.perf_counter_ns()
            conn.send(request)
    for sock in socks:
        sock.close()
    out.put((latencies, errors))


def run_python(host: str, port: int, clients: int, duration: float, procs: int) -> Result:
    ctx = mp.get_context("spawn")  # no fork of a process that runs the server thread
    out: mp.Queue = ctx.Queue()
    procs = max(1, min(procs, clients))
    start_at = time.time() + 2.0 + WARMUP_SECONDS  # time for the interpreters to start, then warm-up
    stop_at = start_at + duration
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers = [ctx.Process(target=python_clients, args=(host, port, n, start_at, stop_at, out)) for n in shares]
    for w in workers:
        w.start()
    results = [out.get(timeout=duration + 60) for _ in workers]
    for w in workers:
        w.join(10)
    latencies = np.concatenate([np.asarray(r[0], dtype=np.float64) for r in results]) / 1e6
    errors = sum(r[1] for r in results)
    return Result(f"python, {procs} processes", clients, duration, len(latencies), errors,
                  float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)))


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


def _wrk_ms(text: str, label: str) -> float:
    m = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if m is None:
        raise RuntimeError(f"no {label} latency in wrk output:\n{text}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def run_wrk(wrk: str, host: str, port: int, clients: int, duration: float, threads: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "predict.lua"
        script.write_text(WRK_SCRIPT % BODY.decode())
        url = f"http://{host}:{port}/predict"
        # A short run first: the steady state is what the table reports.
        subprocess.run([wrk, "-t1", f"-c{clients}", f"-d{max(1, int(WARMUP_SECONDS))}s", "-s", str(script), url],
                       check=True, capture_output=True)
        proc = subprocess.run(
            [wrk, f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
            check=True, capture_output=True, text=True,
        )
    text = proc.stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)s", text).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock_errors.groups())) if sock_errors else 0)
    return Result(f"wrk -t{threads}", clients, seconds, requests, errors, _wrk_ms(text, "50%"), _wrk_ms(text, "99%"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (leave the other core to the server)")
    parser.add_argument("--procs", type=int, default=2, help="client processes for --client python")
    parser.add_argument("--trees", type=int, default=100, help="trees of the --model toy forest")
    parser.add_argument("--model", choices=["shipped", "toy"], default="shipped",
                        help="shipped: models/default, as the agent serves it (default); toy: a one-feature forest")
    args = parser.parse_args(argv)

    model = shipped_model() if args.model == "shipped" else train(args.trees)
    engine = ScoringEngine({"bench": model}, default="bench")
    cfg = HTTPConfig(host="127.0.0.1", port=0)
    api = HttpApi(cfg, engine.predict, lambda: (True, ""), CollectorRegistry())
    host, port = api.start()
    try:
        with socket.create_connection((host, port)) as s:  # the server answers before the load starts
            s.sendall(request_bytes(host, port))
            assert read_response(s, bytearray()) == 200
        t0 = time.perf_counter()
        for _ in range(2000):
            engine.predict({"value": 0.95})
        predict_us = (time.perf_counter() - t0) / 2000 * 1e6

        wrk = shutil.which("wrk")
        results = []
        if args.client in ("auto", "wrk"):
            if wrk is None:
                if args.client == "wrk":
                    print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
                    return 2
            else:
                results.append(run_wrk(wrk, host, port, args.clients, args.duration, args.wrk_threads))
        if args.client == "python" or (args.client == "auto" and wrk is None):
            results.append(run_python(host, port, args.clients, args.duration, args.procs))
    finally:
        api.stop()

    print(f"POST /predict, model: {args.trees} trees, engine.predict alone: {predict_us:.1f} us/call\n")
    print("| client | connections | seconds | requests | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.client} | {r.clients} | {r.seconds:.1f} | {r.requests} | {r.rate:,.0f} | "
              f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
