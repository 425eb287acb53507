"""Security: the /predict bearer token, broker passwords and the shipped ACL, and TLS against a real Mosquitto.

The broker with authentication runs exactly as compose runs it: broker/entrypoint.sh builds
the password file from the environment, then Mosquitto starts on broker/mosquitto.conf (its
listener, persistence, password file and ACL moved to a temporary directory). The TLS broker
gets certificates made here with the openssl command line.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from bench import kit
from conftest import REPO, agent_config
from edge_agent.agent import Agent, load_models
from edge_agent.config import ConfigError, HTTPConfig, http_token, load_config
from edge_agent.core.domain import Verdict
from edge_agent.http.api import HttpApi
from edge_agent.mqtt.local_broker import MOSQUITTO, MosquittoBroker, free_port, wait_listening
from edge_agent.mqtt.transport import NOT_TRIED
from tls_certs import Certs, generated_certs, needs_openssl

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")

TOKEN = "s3cret-Token_with.chars~+/="
PASSWORDS = {"agent": "agent-Pa55word", "sensor": "sensor-Pa55word", "viewer": "viewer-Pa55word"}


# --------------------------------------------------------------------------- HTTP bearer token


def _predict(values: Any, sensor_id: str | None) -> Verdict:
    return Verdict(sensor_id or "", dict(values), None, 0.1, 0, "m", "1")


@dataclass
class Api:
    port: int
    registry: CollectorRegistry


@contextmanager
def serving(token: str | None) -> Iterator[Api]:
    registry = CollectorRegistry()
    cfg = HTTPConfig(host="127.0.0.1", port=0, read_timeout=2.0)
    api = HttpApi(cfg, _predict, lambda: (True, ""), registry, token=token)
    _, port = api.start()
    try:
        yield Api(port, registry)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def guarded() -> Iterator[Api]:
    with serving(TOKEN) as api:
        yield api


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def predict(port: int, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    return request(port, "POST", "/predict", b'{"value": 0.95}', {"Authorization": auth} if auth is not None else {})


def test_predict_is_open_without_a_configured_token() -> None:
    with serving(None) as api:
        assert predict(api.port, None)[0] == 200
        assert predict(api.port, "Bearer anything")[0] == 200


def test_missing_token_is_401_with_json_error_and_challenge(guarded: Api) -> None:
    status, headers, body = predict(guarded.port, None)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["content-type"] == "application/json"
    assert "bearer token" in json.loads(body)["error"]


@pytest.mark.parametrize("auth", [
    "Bearer wrong", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer  x{TOKEN}",
])
def test_wrong_token_is_401_and_never_echoed(guarded: Api, auth: str) -> None:
    status, headers, body = predict(guarded.port, auth)
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"] or "missing" in body.decode()
    assert TOKEN not in body.decode() and TOKEN not in str(headers)


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer {TOKEN}  "])
def test_right_token_is_served(guarded: Api, auth: str) -> None:
    status, _, body = predict(guarded.port, auth)
    assert status == 200 and json.loads(body)["anomaly"] == 0


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_other_endpoints_stay_open(guarded: Api, path: str) -> None:
    assert request(guarded.port, "GET", path)[0] == 200


def test_unauthorised_requests_are_counted(guarded: Api) -> None:
    predict(guarded.port, "Bearer nope")
    text = generate_latest(guarded.registry).decode()
    assert re.search(r'edge_agent_http_requests_total\{code="401",path="/predict"\} [1-9]', text), text


def test_the_token_is_compared_in_constant_time(guarded: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the server looks it up on each call
    assert predict(guarded.port, f"Bearer {TOKEN}")[0] == 200
    assert predict(guarded.port, "Bearer nearly")[0] == 401
    assert seen == [(TOKEN.encode(), TOKEN.encode()), (b"nearly", TOKEN.encode())]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_any_authorization_header_is_401_unless_it_is_the_token(guarded: Api, value: bytes) -> None:
    import socket

    body = b'{"value": 0.95}'
    head = b"POST /predict HTTP/1.1\r\nAuthorization: " + value + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply[9:12])
    stripped = value.strip(b" \t")
    right = stripped[:7].lower() == b"bearer " and stripped[7:].strip(b" \t") == TOKEN.encode()
    assert status == (200 if right else 401) or status == 400  # 400: a header the parser refuses
    assert b"Traceback" not in reply


# --------------------------------------------------------------------------- token from env or file


def test_token_comes_from_env_then_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    cfg = load_config(None, [f"http.token_file={secret}"], env={})
    assert http_token(cfg, {}) == "from-file"
    assert http_token(cfg, {"EDGE_AGENT_HTTP_TOKEN": "from-env"}) == "from-env"
    assert http_token(cfg, {"EDGE_AGENT_HTTP_TOKEN": ""}) == "from-file"
    renamed = load_config(None, ["http.token_env=API_TOKEN"], env={})
    assert http_token(renamed, {"API_TOKEN": "x1", "EDGE_AGENT_HTTP_TOKEN": "x2"}) == "x1"
    assert http_token(load_config(None, [], env={}), {}) is None


@pytest.mark.parametrize("content, expected", [("", "empty"), ("two words", "printable ASCII"), ("caf\u00e9", "printable ASCII")])
def test_unusable_token_file_is_a_config_error_that_does_not_show_it(tmp_path: Path, content: str, expected: str) -> None:
    secret = tmp_path / "token"
    secret.write_text(content)
    cfg = load_config(None, [f"http.token_file={secret}"], env={})
    with pytest.raises(ConfigError) as caught:
        http_token(cfg, {})
    assert caught.value.problems[0].path == "http.token_file"
    assert expected in str(caught.value)
    if content:
        assert content not in str(caught.value)


def test_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"http.token_file={tmp_path / 'absent'}"], env={})
    with pytest.raises(ConfigError) as caught:
        http_token(cfg, {})
    assert caught.value.problems[0].path == "http.token_file"


def test_the_agent_guards_predict_with_the_token_from_its_environment(models_dir: Path) -> None:
    @dataclass
    class NoBroker:  # nothing listens there: the HTTP API is all this test needs
        host: str = "127.0.0.1"
        port: int = free_port()

    cfg = agent_config(NoBroker(), models_dir)
    agent = Agent(cfg, load_models(cfg), env={"EDGE_AGENT_HTTP_TOKEN": TOKEN})
    agent.start()
    try:
        assert agent.http_address is not None
        port = agent.http_address[1]
        assert predict(port, None)[0] == 401
        assert predict(port, f"Bearer {TOKEN}")[0] == 200
        assert request(port, "GET", "/healthz")[0] == 200
    finally:
        agent.stop(timeout=1)


# --------------------------------------------------------------------------- the broker as compose runs it


@dataclass
class AuthBroker:
    """Mosquitto on broker/mosquitto.conf with the shipped ACL and a password file from broker/entrypoint.sh."""

    host: str
    port: int
    workdir: Path
    kind: str = "mosquitto"

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def shipped_broker() -> Iterator[AuthBroker]:
    assert MOSQUITTO is not None
    # Not tmp_path: mosquitto drops root for its own user, which cannot enter pytest's 0700 directories.
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-"))
    workdir.chmod(0o777)
    port = free_port()
    conf = (REPO / "broker" / "mosquitto.conf").read_text()
    for pattern, line in [
        (r"^listener\s+1883\b.*$", f"listener {port} 127.0.0.1"),
        (r"^persistence_location\s+.*$", f"persistence_location {workdir}/"),
        (r"^password_file\s+.*$", f"password_file {workdir}/auth/passwd"),
        (r"^acl_file\s+.*$", f"acl_file {workdir}/acl"),
        (r"^log_dest\s+.*$", f"log_dest file {workdir}/mosquitto.log"),
    ]:
        conf, n = re.subn(pattern, line, conf, flags=re.M)
        assert n == 1, pattern
    (workdir / "mosquitto.conf").write_text(conf)
    shutil.copy(REPO / "broker" / "acl", workdir / "acl")
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(workdir / "auth" / "passwd"),
           **{f"MQTT_{user.upper()}_PASSWORD": pw for user, pw in PASSWORDS.items()}}
    proc = subprocess.Popen(["sh", str(REPO / "broker" / "entrypoint.sh"), MOSQUITTO, "-c", str(workdir / "mosquitto.conf")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port)
        yield AuthBroker("127.0.0.1", port, workdir)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[AuthBroker]:
    if MOSQUITTO is None:
        pytest.skip("needs the mosquitto binary")
    with shipped_broker() as broker:
        yield broker


class Client:
    """An MQTT 5 client logged in as one of the broker's users, recording what it receives and what is refused."""

    def __init__(self, broker: Any, user: str | None, password: str | None = None, **tls: Any) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.acks: dict[int, Any] = {}
        self.subacks: list[Any] = []
        self.connack = threading.Event()
        self.reason: Any = None
        self._cond = threading.Condition()
        login = (user, password if password is not None else PASSWORDS[user]) if user is not None else None
        self.client = kit.client("sec", protocol=paho.MQTTv5, auth=login, tls=tls or None)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._record(self.messages)
        self.client.on_publish = lambda c, u, mid, rc, p: self._store(self.acks, mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._store_list(self.subacks, rcs)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.connack.wait(10), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.reason = reason
        self.connack.set()

    def _record(self, into: list[Any]) -> Any:
        def on_message(client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
            self._store_list(into, message)
        return on_message

    def _store(self, into: dict[int, Any], key: int, value: Any) -> None:
        with self._cond:
            into[key] = value
            self._cond.notify_all()

    def _store_list(self, into: list[Any], value: Any) -> None:
        with self._cond:
            into.append(value)
            self._cond.notify_all()

    def wait(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def publish(self, topic: str, payload: str) -> Any:
        """The PUBACK reason code (MQTT 5 says when the ACL refuses a publish)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        assert self.wait(lambda: mid in self.acks), "no PUBACK"
        return self.acks[mid]

    def subscribe(self, topic: str) -> Any:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: len(self.subacks) > before), "no SUBACK"
        return self.subacks[-1][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def clients(broker: Any, *users: str) -> Iterator[list[Client]]:
    made = [Client(broker, user) for user in users]
    try:
        yield made
    finally:
        for c in made:
            c.close()


@needs_mosquitto
def test_broker_refuses_anonymous_and_wrong_passwords(auth_broker: AuthBroker) -> None:
    anonymous = Client(auth_broker, None)
    wrong = Client(auth_broker, "agent", "not-the-password")
    try:
        assert anonymous.reason.is_failure and wrong.reason.is_failure
    finally:
        anonymous.close()
        wrong.close()


@needs_mosquitto
def test_acl_sensor_writes_only_readings_and_agent_writes_only_edge(auth_broker: AuthBroker) -> None:
    with clients(auth_broker, "agent", "sensor", "viewer") as (agent, sensor, viewer):
        assert not agent.subscribe("sensors/#").is_failure
        assert not viewer.subscribe("edge/#").is_failure
        # A sensor can publish a reading, and the agent gets it ...
        assert not sensor.publish("sensors/pump-1", "0.9").is_failure
        assert agent.wait(lambda: any(m.topic == "sensors/pump-1" for m in agent.messages))
        # ... but cannot forge a verdict.
        assert sensor.publish("edge/edge-1/verdicts/pump-1", '{"anomaly": 0}').is_failure
        # Mosquitto grants any subscription and applies the ACL to each delivery: a sensor reads nothing.
        sensor.subscribe("sensors/#")
        sensor.subscribe("edge/#")
        # The agent publishes verdicts (the viewer reads them) but cannot inject readings.
        assert not agent.publish("edge/edge-1/verdicts/pump-1", '{"anomaly": 1}').is_failure
        assert viewer.wait(lambda: any(m.topic == "edge/edge-1/verdicts/pump-1" for m in viewer.messages))
        assert agent.publish("sensors/pump-2", "0.9").is_failure
        assert not sensor.publish("sensors/pump-3", "0.9").is_failure
        assert agent.wait(lambda: any(m.topic == "sensors/pump-3" for m in agent.messages))
        time.sleep(0.3)
        assert [m.topic for m in viewer.messages] == ["edge/edge-1/verdicts/pump-1"]  # the forged one never arrived
        assert [m.topic for m in agent.messages] == ["sensors/pump-1", "sensors/pump-3"]
        assert sensor.messages == []  # neither other readings nor verdicts


def start(cfg: Any, env: dict[str, str], wait_ready: bool = True) -> Agent:
    agent = Agent(cfg, load_models(cfg), env=env)
    agent.start()
    if wait_ready:
        deadline = time.monotonic() + 10
        while not agent.readiness()[0]:
            assert time.monotonic() < deadline, agent.readiness()[1]
            time.sleep(0.02)
    return agent


@needs_mosquitto
def test_agent_logs_in_with_the_password_from_env_or_file_and_scores(auth_broker: AuthBroker, models_dir: Path,
                                                                       tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["agent"] + "\n")
    aid = f"sec-{uuid.uuid4().hex[:6]}"
    with clients(auth_broker, "sensor", "viewer") as (sensor, viewer):
        viewer.subscribe(f"edge/{aid}/verdicts/#")
        for env, extra in [({"EDGE_AGENT_MQTT_PASSWORD": PASSWORDS["agent"]}, []), ({}, [f"mqtt.password_file={secret}"])]:
            cfg = agent_config(auth_broker, models_dir, f"agent_id={aid}", "mqtt.username=agent", *extra)
            agent = start(cfg, env)
            try:
                before = len(viewer.messages)
                assert not sensor.publish("sensors/pump-1", json.dumps({"value": 0.9, "ts": len(extra)})).is_failure
                assert viewer.wait(lambda: len(viewer.messages) > before)  # noqa: B023 - waited on in this iteration
            finally:
                agent.stop(timeout=5)


@needs_mosquitto
def test_wrong_password_is_refused_and_never_logged(auth_broker: AuthBroker, models_dir: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wr0ng-Secret-" + uuid.uuid4().hex
    cfg = agent_config(auth_broker, models_dir, "mqtt.username=agent", "log_level=DEBUG")
    caplog.set_level(logging.DEBUG)
    agent = start(cfg, {"EDGE_AGENT_MQTT_PASSWORD": wrong}, wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while "refused" not in agent.readiness()[1]:
            assert time.monotonic() < deadline, agent.readiness()
            time.sleep(0.05)
        ready, reason = agent.readiness()
        assert not ready and "not authori" in reason.lower()
        assert wrong not in reason and wrong not in caplog.text
        assert "refused" in caplog.text  # it is logged, only without the secret
    finally:
        agent.stop(timeout=2)


@needs_mosquitto
def test_cli_never_prints_the_password(auth_broker: AuthBroker, tmp_path: Path) -> None:
    wrong = "wr0ng-Secret-" + uuid.uuid4().hex
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(REPO / "config.yaml"),
           "--set", f"mqtt.host={auth_broker.host}", "--set", f"mqtt.port={auth_broker.port}",
           "--set", "mqtt.username=agent", "--set", "http.port=0", "--set", "log_level=DEBUG",
           "--set", "mqtt.reconnect_min_delay=0.2", "--set", "mqtt.reconnect_max_delay=0.5", "--set", "agent_id=sec-cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")} | {"EDGE_AGENT_MQTT_PASSWORD": wrong}
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while log.read_text(errors="replace").count("refused") < 2:  # two attempts, each logged
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    assert wrong not in log.read_text(errors="replace")


@needs_mosquitto
def test_a_verdict_the_acl_refuses_leaves_its_reading_with_the_broker(auth_broker: AuthBroker, models_dir: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    aid = f"sec-{uuid.uuid4().hex[:6]}"
    env = {"EDGE_AGENT_MQTT_PASSWORD": PASSWORDS["agent"]}
    with clients(auth_broker, "sensor", "viewer") as (sensor, viewer):
        viewer.subscribe(f"edge/{aid}/verdicts/#")
        # Misconfigured: verdicts go where the agent user may not write.
        cfg = agent_config(auth_broker, models_dir, f"agent_id={aid}", "mqtt.username=agent",
                           "topics.verdicts=factory/{agent_id}/{sensor_id}")
        agent = start(cfg, env)
        try:
            assert not sensor.publish("sensors/pump-1", json.dumps({"value": 0.9, "ts": 42})).is_failure
            deadline = time.monotonic() + 10
            while "refused a publish" not in agent.transport.last_error:
                assert time.monotonic() < deadline, agent.transport.last_error
                time.sleep(0.05)
            assert "broker refused a publish" in caplog.text
            ready, reason = agent.readiness()
            assert not ready and "refused a publish" in reason
        finally:
            agent.stop(timeout=2)
        # Fixed: the same agent (same session) gets the unacknowledged reading again and answers it.
        agent = start(agent_config(auth_broker, models_dir, f"agent_id={aid}", "mqtt.username=agent"), env)
        try:
            assert viewer.wait(lambda: len(viewer.messages) == 1, 10)
            verdict = json.loads(viewer.messages[0].payload)
            assert verdict["ts"] == 42 and verdict.get("redelivered") is True
        finally:
            agent.stop(timeout=2)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with generated_certs() as made:
        yield made


@contextmanager
def tls_broker(certs: Certs, server: tuple[Path, Path], require_certificate: bool = False) -> Iterator[MosquittoBroker]:
    extra = (f"cafile {certs.ca}\ncertfile {server[0]}\nkeyfile {server[1]}\n"
             f"require_certificate {'true' if require_certificate else 'false'}\ntls_version tlsv1.2\n")
    broker = MosquittoBroker(extra_config=extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def tls_agent(broker: MosquittoBroker, models_dir: Path, *overrides: str) -> Agent:
    cfg = agent_config(broker, models_dir, "mqtt.tls.enabled=true", "mqtt.reconnect_max_delay=0.5", *overrides)
    return start(cfg, {}, wait_ready=False)


def wait_state(agent: Agent, ready: bool, timeout: float = 10.0) -> str:
    """Wait for the agent to be ready, or to have tried the broker and failed; the reason it gives."""
    deadline = time.monotonic() + timeout
    # A new agent is not ready before its first attempt: "not ready" counts only once one has failed.
    while agent.readiness()[0] != ready or (not ready and agent.transport.last_error == NOT_TRIED):
        assert time.monotonic() < deadline, agent.readiness()
        time.sleep(0.05)
    if not ready:
        time.sleep(0.5)  # a second attempt, so that the reason is the steady one
    return agent.readiness()[1]


@needs_mosquitto
@needs_openssl
def test_tls_with_the_right_ca_connects_and_scores(certs: Certs, models_dir: Path) -> None:
    with tls_broker(certs, certs.server) as broker:
        agent = tls_agent(broker, models_dir, "mqtt.host=localhost", f"mqtt.tls.ca_file={certs.ca}")
        try:
            wait_state(agent, True)
            sensor = Client(broker, None, ca_certs=str(certs.ca))
            try:
                sensor.publish("sensors/tls-1", "0.9")
                deadline = time.monotonic() + 5
                while agent.engine.sensor_count < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            finally:
                sensor.close()
        finally:
            agent.stop(timeout=2)


@needs_mosquitto
@needs_openssl
def test_tls_with_a_wrong_ca_is_refused(certs: Certs, models_dir: Path) -> None:
    with tls_broker(certs, certs.server) as broker:
        agent = tls_agent(broker, models_dir, "mqtt.host=localhost", f"mqtt.tls.ca_file={certs.other_ca}")
        try:
            reason = wait_state(agent, False)
            assert "certificate verify failed" in reason
        finally:
            agent.stop(timeout=2)


@needs_mosquitto
@needs_openssl
def test_tls_hostname_mismatch_is_refused_unless_checking_is_turned_off(certs: Certs, models_dir: Path) -> None:
    with tls_broker(certs, certs.misnamed) as broker:
        agent = tls_agent(broker, models_dir, "mqtt.host=localhost", f"mqtt.tls.ca_file={certs.ca}")
        try:
            reason = wait_state(agent, False)
            assert "certificate verify failed" in reason and "mismatch" in reason.lower()
        finally:
            agent.stop(timeout=2)
        agent = tls_agent(broker, models_dir, "mqtt.host=localhost", f"mqtt.tls.ca_file={certs.ca}",
                          "mqtt.tls.check_hostname=false")
        try:
            wait_state(agent, True)  # still verified against the CA, only the name is not checked
        finally:
            agent.stop(timeout=2)


@needs_mosquitto
@needs_openssl
def test_mutual_tls_needs_the_client_certificate(certs: Certs, models_dir: Path) -> None:
    with tls_broker(certs, certs.server, require_certificate=True) as broker:
        agent = tls_agent(broker, models_dir, f"mqtt.tls.ca_file={certs.ca}")
        try:
            # Not just "not ready": a refused attempt, with the reason an operator reads on /readyz.
            assert "closed the connection before accepting it" in wait_state(agent, False)
        finally:
            agent.stop(timeout=2)
        cert, key = certs.client
        agent = tls_agent(broker, models_dir, f"mqtt.tls.ca_file={certs.ca}",
                          f"mqtt.tls.cert_file={cert}", f"mqtt.tls.key_file={key}")
        try:
            wait_state(agent, True)
        finally:
            agent.stop(timeout=2)


def test_unreadable_tls_files_are_config_errors_naming_the_key(tmp_path: Path, models_dir: Path) -> None:
    @dataclass
    class NoBroker:
        host: str = "127.0.0.1"
        port: int = 1

    cfg = agent_config(NoBroker(), models_dir, "mqtt.tls.enabled=true", f"mqtt.tls.ca_file={tmp_path / 'absent.pem'}")
    with pytest.raises(ConfigError) as caught:
        Agent(cfg, load_models(cfg), env={})
    assert [p.path for p in caught.value.problems] == ["mqtt.tls.ca_file"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cfg = agent_config(NoBroker(), models_dir, "mqtt.tls.enabled=true", f"mqtt.tls.ca_file={garbage}")
    with pytest.raises(ConfigError) as caught:
        Agent(cfg, load_models(cfg), env={})
    assert caught.value.problems[0].path == "mqtt.tls"
