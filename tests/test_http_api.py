"""The HTTP API over real loopback sockets: the /predict contract, errors, keep-alive, timeouts, fuzz."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import IsolationForest

from edge_agent.config import HTTPConfig
from edge_agent.core.domain import Verdict
from edge_agent.core.engine import ScoringEngine
from edge_agent.core.features import FeatureSpec, feature_matrix
from edge_agent.core.forest import Forest
from edge_agent.core.model import SensorModel, build_model
from edge_agent.http.api import HttpApi
from edge_agent.http.server import MAX_HEAD_BYTES

READ_TIMEOUT = 0.5
MAX_BODY = 1024
Address = tuple[str, int]


def train(name: str, fields: tuple[str, ...], data: np.ndarray) -> SensorModel:
    spec = FeatureSpec(fields=fields, transforms=("value",))
    features = feature_matrix(spec, data)
    estimator = IsolationForest(n_estimators=50, random_state=0).fit(features)
    return build_model(name=name, version="1", spec=spec, forest=Forest.from_sklearn(estimator), features=features, training={})


@pytest.fixture(scope="module")
def models() -> dict[str, SensorModel]:
    rng = np.random.default_rng(0)
    return {
        "t": train("t", ("value",), rng.normal(1.0, 0.1, size=(500, 1))),
        "mv": train("mv", ("temp", "hum"), rng.normal([20.0, 50.0], [0.5, 2.0], size=(500, 2))),
    }


@dataclass
class Ready:
    state: tuple[bool, str] = (True, "")

    def __call__(self) -> tuple[bool, str]:
        return self.state


@dataclass
class Served:
    api: HttpApi
    address: Address
    registry: CollectorRegistry
    ready: Ready


def serve(predict, max_connections: int = 256, read_timeout: float = READ_TIMEOUT) -> Served:
    registry = CollectorRegistry()
    ready = Ready()
    cfg = HTTPConfig(host="127.0.0.1", port=0, max_body_bytes=MAX_BODY, read_timeout=read_timeout)
    api = HttpApi(cfg, predict, ready, registry, max_connections=max_connections)
    return Served(api, api.start(), registry, ready)


@pytest.fixture(scope="module")
def served(models: dict[str, SensorModel]) -> Iterator[Served]:
    engine = ScoringEngine(models, assign=[("mv-*", "mv")], default="t")
    s = serve(engine.predict)
    yield s
    s.api.stop()


@pytest.fixture(scope="module")
def addr(served: Served) -> Address:
    return served.address


def call(addr: Address, method: str, path: str, body: object = None, headers: Mapping[str, str] | None = None,
         raw_body: bytes | None = None) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def predict(addr: Address, body: object, **kw) -> tuple[int, dict]:
    status, _, data = call(addr, "POST", "/predict", body, **kw)
    return status, json.loads(data)


def exchange(addr: Address, data: bytes, timeout: float = 5.0, half_close: bool = True, reset_ok: bool = True) -> bytes:
    """Send raw bytes, optionally stop sending, and read everything until the server closes."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_until_closed(s, reset_ok)


def read_until_closed(s: socket.socket, reset_ok: bool = True) -> bytes:
    """Everything the server sends until it closes; ``reset_ok``: a reset ends it too (else it fails)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            assert reset_ok, f"connection reset after {b''.join(chunks)[:200]!r}"
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def parse_responses(data: bytes, head: bool = False) -> list[RawResponse]:
    """Split a byte stream into HTTP responses (framed by Content-Length), failing on garbage.

    ``head``: the request may have been HEAD, whose answer has no body (recognised
    by the next response, or the end, following the head at once).
    """
    out = []
    while data:
        top, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response head: {data[:200]!r}"
        lines = top.decode("latin-1").split("\r\n")
        version, code, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        n = int(headers["content-length"]) if code != "100" else 0
        if head and (rest == b"" or rest.startswith(b"HTTP/1.1 ")):
            n = 0
        out.append(RawResponse(int(code), headers, rest[:n]))
        assert len(rest) >= n, "truncated response body"
        data = rest[n:]
    return [r for r in out if r.status != 100]


def post_bytes(body: bytes, extra: str = "", path: str = "/predict") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


# -- the /predict contract -------------------------------------------------------------------------


def test_seed_contract_normal_value(addr: Address) -> None:
    status, doc = predict(addr, {"value": 0.95})
    assert status == 200
    assert doc["anomaly"] in (0, 1)
    assert 0.0 <= doc["score"] <= 1.0
    assert (doc["model"], doc["model_version"]) == ("t", "1")


def test_far_value_is_anomalous_and_typical_one_is_not(addr: Address) -> None:
    _, far = predict(addr, {"value": 1e6})
    _, typical = predict(addr, {"value": 1.0})
    assert far["anomaly"] == 1
    assert typical["anomaly"] == 0
    assert far["score"] > typical["score"]


def test_response_matches_engine(addr: Address, models: dict[str, SensorModel]) -> None:
    engine = ScoringEngine(models, default="t")
    expected = engine.predict({"value": 1.37})
    _, doc = predict(addr, {"value": 1.37})
    assert doc["score"] == pytest.approx(expected.score, abs=1e-6)
    assert doc["anomaly"] == expected.anomaly


def test_multivariate_values_with_sensor_id(addr: Address) -> None:
    status, doc = predict(addr, {"sensor_id": "mv-1", "values": {"temp": 20.1, "hum": 49.0}})
    assert status == 200
    assert (doc["model"], doc["sensor_id"], doc["anomaly"]) == ("mv", "mv-1", 0)
    status, far = predict(addr, {"sensor_id": "mv-1", "values": {"temp": 20.1, "hum": 5000.0}})
    assert (status, far["anomaly"]) == (200, 1) and far["score"] > doc["score"]


def test_multivariate_missing_field_is_400_naming_it(addr: Address) -> None:
    status, doc = predict(addr, {"sensor_id": "mv-2", "values": {"temp": 20.1}})
    assert status == 400
    assert "hum" in doc["error"]


def test_unknown_sensor_without_default_is_404(models: dict[str, SensorModel]) -> None:
    engine = ScoringEngine(models, assign=[("known-*", "t")], default=None)
    s = serve(engine.predict)
    try:
        status, doc = predict(s.address, {"value": 1.0, "sensor_id": "stranger"})
        assert status == 404 and "stranger" in doc["error"]
        assert predict(s.address, {"value": 1.0})[0] == 404
        assert predict(s.address, {"value": 1.0, "sensor_id": "known-7"})[0] == 200
    finally:
        s.api.stop()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "JSON"),
        (b"", "empty"),
        (b"[1, 2]", "object"),
        (b'"0.95"', "object"),
        (b"{}", "value"),
        (b'{"value": "0.95"}', "'value' must be a JSON number"),
        (b'{"value": true}', "boolean"),
        (b'{"value": null}', "'value'"),
        (b'{"value": [1]}', "'value'"),
        (b'{"value": NaN}', "NaN"),
        (b'{"value": Infinity}', "Infinity"),
        (b'{"value": -Infinity}', "Infinity"),
        (b'{"value": 1e999}', "finite"),
        (b'{"value": 1' + b"0" * 400 + b"}", "finite"),
        (b'{"value": 1, "values": {"value": 1}}', "exactly one"),
        (b'{"values": [1]}', "'values'"),
        (b'{"values": {}}', "'values'"),
        (b'{"values": {"temp": "hot", "hum": 1}}', "values.temp"),
        (b'{"values": {"temp": false, "hum": 1}}', "values.temp"),
        (b'{"value": 1, "sensor_id": 5}', "sensor_id"),
        (b'{"value": 1, "sensor_id": ""}', "sensor_id"),
        (b'{"value": 1, "sensor_id": ["a"]}', "sensor_id"),
        (b"\xff\xfe{", "JSON"),
        (b"[" * 5000 + b"]" * 5000, "JSON"),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(addr: Address, body: bytes, needle: str) -> None:
    body = body if len(body) <= MAX_BODY else body[:MAX_BODY]
    status, _, data = call(addr, "POST", "/predict", raw_body=body)
    assert status == 400
    assert needle in json.loads(data)["error"]


def test_unknown_keys_are_ignored(addr: Address) -> None:
    assert predict(addr, {"value": 1.0, "unit": "C", "ts": 5})[0] == 200


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", 200), ("application/json; charset=utf-8", 200), ("Application/JSON;charset=UTF-8", 200),
     ("application/x-www-form-urlencoded", 200),  # what `curl -d '{"value": 1}'` sends
     ("text/plain", 415), ("multipart/form-data; boundary=x", 415), ("application/json; charset=latin-1", 415)],
)
def test_content_type(addr: Address, content_type: str, status: int) -> None:
    got, _, data = call(addr, "POST", "/predict", {"value": 1.0}, headers={"Content-Type": content_type})
    assert got == status
    if status == 415:
        assert "Content-Type" in json.loads(data)["error"]


def test_missing_content_type_is_accepted(addr: Address) -> None:
    (resp,) = parse_responses(exchange(addr, post_bytes(b'{"value": 1.0}', "Connection: close\r\n")))
    assert resp.status == 200 and resp.json()["anomaly"] == 0


def test_oversized_body_is_413_before_the_body_is_sent(addr: Address) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    (resp,) = parse_responses(exchange(addr, head, half_close=False))  # server answers without waiting
    assert resp.status == 413 and "max_body_bytes" in resp.json()["error"]
    assert resp.headers["connection"] == "close"


def test_oversized_body_sent_anyway_still_gets_its_413(addr: Address) -> None:
    body = b'{"value": 1.0, "pad": "' + b"x" * 200_000 + b'"}'
    (resp,) = parse_responses(exchange(addr, post_bytes(body)))
    assert resp.status == 413


@pytest.mark.parametrize(
    ("request_bytes", "status", "needle"),
    [
        (b"POST /predict HTTP/1.1\r\nHost: t\r\n\r\n", 411, "Content-Length"),
        (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411, "Transfer-Encoding"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "Content-Length"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "Content-Length"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413, "too large"),
        (b"GARBAGE\r\n\r\n", 400, "request line"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400, "version"),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400, "target"),
        (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "header"),
        (b"GET /healthz HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "header"),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n", 431, "head"),
        (b"GET /healthz HTTP/1.1\r\n", 400, "incomplete"),
    ],
)
def test_malformed_requests(addr: Address, request_bytes: bytes, status: int, needle: str) -> None:
    (resp,) = parse_responses(exchange(addr, request_bytes))
    assert resp.status == status
    assert needle in resp.json()["error"]


def test_unknown_path_is_404(addr: Address) -> None:
    status, _, data = call(addr, "GET", "/nope?x=1")
    assert status == 404 and "/nope" in json.loads(data)["error"]


@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/predict", "POST"), ("POST", "/metrics", "GET, HEAD"),
                                                        ("DELETE", "/healthz", "GET, HEAD"), ("PUT", "/readyz", "GET, HEAD")])
def test_wrong_method_is_405_with_allow(addr: Address, method: str, path: str, allow: str) -> None:
    status, resp, data = call(addr, method, path, raw_body=b"{}" if method != "GET" else None)
    assert status == 405
    assert resp.getheader("Allow") == allow
    assert method in json.loads(data)["error"]


def test_internal_error_is_500_without_internals_and_counted() -> None:
    def broken(values: Mapping[str, float], sensor_id: str | None) -> Verdict:
        raise RuntimeError("secret internals")

    s = serve(broken)
    try:
        status, _, data = call(s.address, "POST", "/predict", {"value": 1.0})
        assert status == 500
        assert json.loads(data) == {"error": "internal server error"}
        assert s.registry.get_sample_value("edge_agent_http_requests_total", {"path": "/predict", "code": "500"}) == 1
        assert call(s.address, "GET", "/healthz")[0] == 200  # still serving
    finally:
        s.api.stop()


# -- connections ---------------------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(addr: Address) -> None:
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status": "ok"}'
        sock = conn.sock
        for i in range(20):
            body = json.dumps({"value": 1.0 + i / 100}) if i % 3 else "{oops"
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == (200 if i % 3 else 400)  # an error does not end the connection
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            assert conn.sock is sock
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(addr: Address) -> None:
    data = post_bytes(b'{"value": 1.0}') + b"GET /healthz HTTP/1.1\r\n\r\n" + post_bytes(b'{"value": 1e6}')
    responses = parse_responses(exchange(addr, data))
    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[1].json() == {"status": "ok"}
    assert [responses[0].json()["anomaly"], responses[2].json()["anomaly"]] == [0, 1]  # each answer is its request's


def test_body_of_a_get_is_skipped_and_the_connection_kept(addr: Address) -> None:
    data = b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nHELLOGET /readyz HTTP/1.1\r\n\r\n"
    responses = parse_responses(exchange(addr, data))
    assert [(r.status, r.json()) for r in responses] == [(200, {"status": "ok"}), (200, {"status": "ready"})]


def test_http10_and_connection_close_end_the_connection(addr: Address) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        (resp,) = parse_responses(read_until_closed(s))  # returns: the server closed
        assert resp.status == 200 and resp.headers["connection"] == "close"
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert parse_responses(read_until_closed(s))[0].status == 200


def test_http10_keep_alive(addr: Address) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        responses = parse_responses(read_until_closed(s))
    assert [r.headers.get("connection") for r in responses] == ["keep-alive", "close"]


def test_expect_100_continue(addr: Address) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        body = b'{"value": 1.0}'
        s.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        assert parse_responses(read_until_closed(s))[0].status == 200


def test_stalled_request_gets_408_and_is_closed(addr: Address) -> None:
    start = time.monotonic()
    (resp,) = parse_responses(exchange(addr, b"POST /predict HTTP/1.1\r\nContent-Length: 10\r\n\r\n{", half_close=False))
    assert resp.status == 408 and "read_timeout" in resp.json()["error"]
    assert READ_TIMEOUT * 0.9 <= time.monotonic() - start < READ_TIMEOUT + 2


def test_trickling_client_cannot_extend_the_timeout(addr: Address) -> None:
    start = time.monotonic()
    with socket.create_connection(addr, timeout=5) as s:
        s.setblocking(False)
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:  # 6 s worth of bytes, if allowed
            s.send(bytes([byte]))
            time.sleep(0.05)
            try:
                first = s.recv(65536)
                break  # the server answered (or closed): stop trickling
            except BlockingIOError:
                continue
        s.settimeout(5)
        data = first + read_until_closed(s)
    assert time.monotonic() - start < READ_TIMEOUT + 2
    assert parse_responses(data)[0].status == 408


def test_idle_keep_alive_connection_is_closed_quietly(addr: Address) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert read_until_closed(s) == b""
        assert time.monotonic() - start < READ_TIMEOUT + 2


def test_excess_connections_shed_the_one_waiting_longest(models: dict[str, SensorModel]) -> None:
    s = serve(ScoringEngine(models, default="t").predict, max_connections=2, read_timeout=5)
    held = [socket.create_connection(s.address, timeout=5) for _ in range(2)]
    try:
        for sock in held:  # two keep-alive connections, idle after one request each: the first waits longest
            sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.05)
        (resp,) = parse_responses(exchange(s.address, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"))
        assert resp.status == 200
        with contextlib.suppress(ConnectionResetError):
            assert held[0].recv(4096) == b""  # shed
        held[1].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert held[1].recv(4096).startswith(b"HTTP/1.1 200")  # kept
        assert s.registry.get_sample_value("edge_agent_http_connections_shed_total") == 1
    finally:
        for sock in held:
            sock.close()
        s.api.stop()


def test_port_in_use_raises_clear_oserror(served: Served) -> None:
    cfg = HTTPConfig(host="127.0.0.1", port=served.address[1])
    other = HttpApi(cfg, served.api.predict, Ready(), CollectorRegistry())
    with pytest.raises(OSError, match=str(served.address[1])):
        other.start()


def test_stop_closes_connections_promptly(models: dict[str, SensorModel]) -> None:
    s = serve(ScoringEngine(models, default="t").predict, read_timeout=30)
    conn = socket.create_connection(s.address, timeout=5)
    try:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        s.api.stop()
        assert time.monotonic() - start < 2
        assert read_until_closed(conn) == b""
        with pytest.raises(OSError):
            socket.create_connection(s.address, timeout=1).close()
    finally:
        conn.close()


# -- metrics, health, readiness ------------------------------------------------------------------------


def test_metrics_exposition_parses_and_counts(served: Served) -> None:
    marker = Counter("test_marker", "Incremented by the test.", registry=served.registry)
    marker.inc(3)
    predict(served.address, {"value": 1.0})
    status, resp, data = call(served.address, "GET", "/metrics")
    assert status == 200 and (resp.getheader("Content-Type") or "").startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(data.decode()) for s in family.samples}
    assert samples[("test_marker_total", ())] == 3
    assert samples[("edge_agent_http_requests_total", (("code", "200"), ("path", "/predict")))] >= 1
    paths = {dict(labels).get("path") for name, labels in samples if name == "edge_agent_http_requests_total"}
    assert paths <= {"/predict", "/metrics", "/healthz", "/readyz", "other"}


def test_request_counter_labels_stay_bounded(served: Served) -> None:
    before = served.registry.get_sample_value("edge_agent_http_requests_total", {"path": "other", "code": "404"}) or 0
    for i in range(3):
        call(served.address, "GET", f"/random-{i}")
    after = served.registry.get_sample_value("edge_agent_http_requests_total", {"path": "other", "code": "404"})
    assert after == before + 3


def test_head_metrics_has_no_body(addr: Address) -> None:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        head, _, body = read_until_closed(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 0" not in head and body == b""


def test_healthz(addr: Address) -> None:
    status, _, data = call(addr, "GET", "/healthz")
    assert (status, json.loads(data)) == (200, {"status": "ok"})


def test_readyz_follows_readiness(served: Served) -> None:
    try:
        status, _, data = call(served.address, "GET", "/readyz")
        assert (status, json.loads(data)) == (200, {"status": "ready"})
        served.ready.state = (False, "broker not connected")
        status, _, data = call(served.address, "GET", "/readyz")
        assert (status, json.loads(data)) == (503, {"status": "not ready", "reason": "broker not connected"})
    finally:
        served.ready.state = (True, "")


def test_readiness_that_raises_is_not_ready(models: dict[str, SensorModel]) -> None:
    s = serve(ScoringEngine(models, default="t").predict)

    def explode() -> tuple[bool, str]:
        raise RuntimeError("boom")

    s.api.readiness = explode
    try:
        status, _, data = call(s.address, "GET", "/readyz")
        assert status == 503 and json.loads(data)["status"] == "not ready"
    finally:
        s.api.stop()


def test_concurrent_clients_all_get_answers(addr: Address) -> None:
    errors: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection(*addr, timeout=5)
        try:
            for _ in range(25):
                conn.request("POST", "/predict", body=b'{"value": 1.0}')
                resp = conn.getresponse()
                assert resp.status == 200 and json.loads(resp.read())["anomaly"] == 0
        except BaseException as e:  # noqa: BLE001 - any failure, assertions included, is reported below
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors


# -- fuzz: no input makes the server fail --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
header_lines = st.lists(
    st.sampled_from([b"Content-Length: 5", b"Content-Length: -1", b"Content-Type: text/plain", b"Connection: close",
                     b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"Host: x", b"X:\x00", b": x", b"A" * 50])
    | st.binary(max_size=40),
    max_size=5,
)


def assert_answered_without_server_error(addr: Address, data: bytes, head: bool = False) -> None:
    """The contract for any input: every answer well-formed, none a 5xx, errors in JSON, a clean close
    (no reset), and at least one answer unless the input was only whitespace (blank lines are skipped)."""
    responses = parse_responses(exchange(addr, data, reset_ok=False), head)
    if data.strip():
        assert responses, f"no answer to {data[:200]!r}"
    for resp in responses:
        assert resp.status < 500, resp
        assert resp.headers["content-type"] == "application/json" or resp.status == 200


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_fuzz_raw_bytes(addr: Address, data: bytes) -> None:
    assert_answered_without_server_error(addr, data)


@settings(max_examples=120, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"post", b"G\x00T"]),
    path=st.sampled_from([b"/predict", b"/metrics", b"/healthz", b"/readyz", b"/", b"*", b"/\xff", b"http://h/predict"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/11"]),
    headers=header_lines,
    body=st.binary(max_size=64),
)
# A body cut short: the client gives up mid-request and must still get its 400.
@example(method=b"POST", path=b"/predict", version=b"HTTP/1.1", headers=[b"Content-Length: 5"], body=b"ab")
def test_fuzz_structured_requests(addr: Address, method: bytes, path: bytes, version: bytes, headers: list[bytes], body: bytes) -> None:
    data = method + b" " + path + b" " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    assert_answered_without_server_error(addr, data, head=method == b"HEAD")


@settings(max_examples=150, deadline=None)
@given(doc=st.one_of(json_values, st.dictionaries(st.sampled_from(["value", "values", "sensor_id", "x"]), json_values, max_size=3)))
def test_fuzz_json_bodies(addr: Address, doc: object) -> None:
    body = json.dumps(doc).encode()
    if len(body) > MAX_BODY:
        return
    (resp,) = parse_responses(exchange(addr, post_bytes(body, "Connection: close\r\n"), reset_ok=False))
    assert resp.status in (200, 400), resp
    value = doc.get("value") if isinstance(doc, dict) else None
    well_formed = isinstance(doc, dict) and set(doc) & {"value", "values"} == {"value"} and doc.get("sensor_id") is None
    # NaN or Infinity anywhere in the body (even under a key the server ignores) is not JSON: 400 is right.
    well_formed = well_formed and "NaN" not in body.decode() and "Infinity" not in body.decode()
    if well_formed and isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300 and value == value:
        assert resp.status == 200


def test_server_keeps_serving_after_fuzz(addr: Address) -> None:
    status, doc = predict(addr, {"value": 0.95})
    assert status == 200 and doc["anomaly"] in (0, 1)
