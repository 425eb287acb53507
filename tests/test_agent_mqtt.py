"""The agent end to end against a real broker: readings in, verdicts, alerts, errors and status out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, agent_overrides, send_normal_then_spike
from edge_agent.agent import Agent, load_models
from edge_agent.config import load_config
from mqtt_relay import SUBACK, MqttRelay

pytestmark = pytest.mark.broker


def _http(agent: Any, path: str) -> tuple[int, bytes]:
    host, port = agent.http_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_every_reading_gets_one_verdict_with_its_own_ts(start_agent, collect, sensor) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    sensor.send_json("sensors/vib-1", {"value": 0.93, "ts": 1764241234.5})
    sensor.send_json("sensors/vib-1", {"value": 0.94, "ts": "2025-11-27T12:00:00Z"})
    sensor.send("sensors/vib-2", b"0.95")
    sensor.send("sensors/vib-2", b"0.96", qos=0)
    before = time.time()
    msgs = out.wait_count(f"edge/{aid}/verdicts/", 4)
    verdicts = [json.loads(m.payload) for m in msgs]
    by_topic = [(m.topic, m.qos) for m in msgs]
    assert by_topic[0] == (f"edge/{aid}/verdicts/vib-1", 1)
    assert verdicts[0]["ts"] == 1764241234.5 and verdicts[0]["value"] == 0.93
    assert verdicts[1]["ts"] == "2025-11-27T12:00:00Z"
    assert abs(verdicts[2]["ts"] - before) < 5  # no ts of its own: the arrival time
    for v in verdicts:
        assert v["anomaly"] in (0, 1) and 0.0 <= v["score"] <= 1.0
        assert v["model"] == "default" and v["model_version"] == "t1"
        assert v["anomaly"] == 0
    assert [v["sensor_id"] for v in verdicts] == ["vib-1", "vib-1", "vib-2", "vib-2"]
    time.sleep(0.3)
    assert len(out.json(f"edge/{aid}/verdicts/")) == 4  # one verdict each, not more


def test_anomalies_raise_alerts_and_count_in_metrics(start_agent, collect, sensor) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    send_normal_then_spike(sensor, "sensors/pump", normal=40)
    alerts = out.wait_count(f"edge/{aid}/alerts/", 1)
    assert alerts[0].topic == f"edge/{aid}/alerts/pump"
    alert = json.loads(alerts[0].payload)
    assert alert["value"] == 7.5 and alert["anomaly"] == 1 and alert["score"] >= 0.5 and alert["onset"] is True
    out.wait_count(f"edge/{aid}/verdicts/", 41)
    status, body = _http(agent, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'edge_agent_readings_total{sensor="pump"} 41.0' in text
    assert 'edge_agent_anomalies_total{sensor="pump"} 1.0' in text
    assert 'edge_agent_anomaly_episodes_total{sensor="pump"} 1.0' in text
    assert 'anomaly_score{sensor="pump"} 1.0' in text
    assert 'edge_agent_broker_connected{connection="intake"} 1.0' in text
    assert 'edge_agent_broker_connected{connection="publish"} 1.0' in text
    assert 'edge_agent_model_info{model="default"' in text
    assert "edge_agent_scoring_latency_seconds_count" in text


def test_malformed_payloads_are_reported_and_do_not_stop_good_readings(start_agent, collect, sensor) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    bad = [b"", b"{not json", b'{"value": NaN}', b'{"value": "high"}', b"\xff\xfe", b"[" * 5000, b'{"temp": 1}']
    for i, payload in enumerate(bad):
        sensor.send("sensors/bad", payload)
        sensor.send_json("sensors/good", {"value": 0.9, "ts": i})
    errors = out.wait_count(f"edge/{aid}/errors", len(bad))
    reasons = [json.loads(m.payload)["reason"] for m in errors]
    assert reasons == ["empty", "bad_json", "not_finite", "wrong_type", "not_utf8", "too_deep", "missing_field"]
    assert all(json.loads(m.payload)["topic"] == "sensors/bad" for m in errors)
    good = out.wait_count(f"edge/{aid}/verdicts/good", len(bad))
    assert [json.loads(m.payload)["ts"] for m in good] == list(range(len(bad)))
    _, body = _http(agent, "/metrics")
    assert 'edge_agent_invalid_messages_total{reason="bad_json"} 1.0' in body.decode()


def test_multivariate_sensor_behind_a_topic_template(start_agent, collect, sensor) -> None:
    agent = start_agent(
        'sources=[{topic: "zigbee2mqtt/{sensor}", fields: [temperature, humidity]}]',
        "models.assign={room-*: climate}",
    )
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    sensor.send_json("zigbee2mqtt/room-1", {"temperature": 21.1, "humidity": 45.2, "linkquality": 120})
    [msg] = out.wait_count(f"edge/{aid}/verdicts/", 1)
    v = json.loads(msg.payload)
    assert msg.topic == f"edge/{aid}/verdicts/room-1"
    assert v["values"] == {"temperature": 21.1, "humidity": 45.2} and v["model"] == "climate"


def test_status_is_retained_online_then_offline(start_agent, collect, broker) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    first = collect([f"edge/{aid}/status"])
    [m] = first.wait_count(f"edge/{aid}/status", 1)
    assert m.payload == b"online" and m.retain
    agent.stop()
    late = collect([f"edge/{aid}/status"])  # a subscriber arriving later sees the retained state
    [m] = late.wait_count(f"edge/{aid}/status", 1)
    assert m.payload == b"offline" and m.retain


def test_readyz_follows_the_broker_and_the_agent_reconnects(start_agent, collect, broker, sensor) -> None:
    agent = start_agent()
    assert _http(agent, "/readyz")[0] == 200
    broker.stop()
    deadline = time.monotonic() + 10
    while _http(agent, "/readyz")[0] != 503:
        assert time.monotonic() < deadline, "readyz stayed 200 with the broker down"
        time.sleep(0.05)
    _, body = _http(agent, "/readyz")
    assert "not connected" in json.loads(body)["reason"]
    assert _http(agent, "/healthz")[0] == 200
    broker.start()
    while _http(agent, "/readyz")[0] != 200:
        assert time.monotonic() < deadline + 15, "agent did not reconnect"
        time.sleep(0.05)
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    from bench.kit import Sensor

    again = Sensor(broker)
    again.send_json("sensors/after", {"value": 0.9, "ts": 5})
    again.close()
    [m] = out.wait_count(f"edge/{aid}/verdicts/after", 1)
    assert json.loads(m.payload)["ts"] == 5


def test_readings_sent_while_the_agent_is_down_are_answered_after_restart(start_agent, collect, sensor) -> None:
    agent = start_agent("agent_id=persistent-1")
    agent.stop()
    for i in range(25):
        sensor.send_json("sensors/queued", {"value": 0.9, "ts": i})
    out = collect(["edge/persistent-1/verdicts/#"])
    start_agent("agent_id=persistent-1")
    msgs = out.wait_count("edge/persistent-1/verdicts/queued", 25)
    assert sorted(json.loads(m.payload)["ts"] for m in msgs) == list(range(25))


def test_cli_run_sigterm_exits_0_and_sigkill_leaves_offline_by_will(broker, collect, models_dir, tmp_path) -> None:
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(REPO / "config.yaml"),
           "--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}", "--set", "http.port=0",
           "--set", "agent_id=cli-1", "--set", "mqtt.keepalive=5"]
    status = collect(["edge/cli-1/status", "edge/cli-1/verdicts/#"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        status.wait_for(lambda ms: any(m.payload == b"online" for m in ms), timeout=40)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        status.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=5)

        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        status.wait_for(lambda ms: ms[-1].payload == b"online", timeout=40)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        # The broker publishes the last will once it notices the dead connection.
        status.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_check_config_reports_bad_keys_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 70000\n  hots: x\n")
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "mqtt.port" in r.stderr and "70000" in r.stderr and "mqtt.hots" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", "--config", str(REPO / "config.yaml")],
                        capture_output=True, text=True, env={**os.environ})
    assert ok.returncode == 0, ok.stderr
    assert "config OK" in ok.stdout


def test_replaying_a_csv_and_streaming_it_over_mqtt_give_the_same_scores(start_agent, collect, sensor, models_dir, tmp_path) -> None:
    from conftest import normal_csv
    from edge_agent.core.engine import Decision
    from edge_agent.model_files import load_model
    from edge_agent.tools.replay import replay
    from edge_agent.tools.table import read_table

    table = read_table(normal_csv(tmp_path / "r.csv", n=120, seed=11))
    table.values[100, 0] = 3.0  # one spike, so the comparison covers a flagged reading too
    expected = replay(table, load_model(models_dir / "default"), Decision())
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/verdicts/#"])
    for ts, (value,) in zip(table.timestamps, table.values.tolist(), strict=True):
        sensor.send_json("sensors/replayed", {"value": value, "ts": ts})
    got = [json.loads(m.payload) for m in out.wait_count(f"edge/{aid}/verdicts/replayed", len(table))]
    assert [g["score"] for g in got] == [round(r.verdict.score, 6) for r in expected]
    assert [g["anomaly"] for g in got] == [r.verdict.anomaly for r in expected]
    assert got[100]["anomaly"] == 1


def test_broker_connected_is_1_only_once_the_subscription_is_granted(broker: Any, models_dir: Path) -> None:
    """edge_agent_broker_connected is documented as "connected and subscribed"."""
    hold = MqttRelay(broker, lambda p: "hold" if p.kind == SUBACK else "pass")  # connected, not yet subscribed
    try:
        overrides = [o for o in agent_overrides(broker, models_dir) if not o.startswith("mqtt.port=")]
        cfg = load_config(None, [*overrides, "mqtt.host=127.0.0.1", f"mqtt.port={hold.port}"], {})
        agent = Agent(cfg, load_models(cfg), env={})
        agent.start()
        try:
            deadline = time.monotonic() + 10
            while agent.transport.last_error:  # "" from the CONNACK on
                assert time.monotonic() < deadline, agent.transport.last_error
                time.sleep(0.02)
            time.sleep(0.2)  # the SUBACK would have come by now
            intake, publish = {"connection": "intake"}, {"connection": "publish"}
            while agent.registry.get_sample_value("edge_agent_broker_connected", publish) != 1.0:  # nothing to subscribe
                assert time.monotonic() < deadline, "the publishing connection never connected"
                time.sleep(0.02)
            assert agent.registry.get_sample_value("edge_agent_broker_connected", intake) == 0.0
            assert not agent.readiness()[0] and "not subscribed" in agent.readiness()[1]
            hold.release()
            while agent.registry.get_sample_value("edge_agent_broker_connected", intake) != 1.0:
                assert time.monotonic() < deadline + 10, "still 0 after the SUBACK"
                time.sleep(0.02)
            assert agent.readiness()[0]
        finally:
            agent.stop(timeout=2)
    finally:
        hold.close()


def test_dropping_only_the_publishing_connection_loses_nothing_and_leaves_nothing_unsettled(
    start_agent, broker, sensor, caplog: pytest.LogCaptureFixture,
) -> None:
    """Verdicts in flight when the publishing connection drops are re-sent by paho on its next
    connection; their PUBACKs must still acknowledge the readings on the intake, which stayed up."""
    from bench.kit import Observer

    caplog.set_level("INFO", logger="edge_agent.mqtt.transport")
    agent = start_agent()
    aid = agent.cfg.agent_id
    ledger = agent.transport.ledger
    generation = ledger.generation
    with Observer(broker, aid) as observer:
        sent = []
        for i in range(3000):
            sent.append(sensor.reading(f"p{i % 5}", 1_700_000_000 + i, round(0.9 + 0.01 * (i % 3), 4)))
            if i == 1500:  # mid-stream: the publishing connection's socket goes, the intake's stays
                agent.transport.publisher.socket().shutdown(socket.SHUT_RDWR)
        assert sensor.wait_accepted(30)
        assert observer.wait_answered({s.key for s in sent}, 60), "a reading got no verdict"
        deadline = time.monotonic() + 30
        while ledger.in_hand or ledger.awaiting():
            assert time.monotonic() < deadline, f"{ledger.in_hand} readings in hand, never settled"
            time.sleep(0.05)
        assert ledger.generation == generation  # the intake never reconnected
        connects = [r.getMessage() for r in caplog.records if r.getMessage().startswith("publishing connection connected")]
        assert len(connects) == 2, connects  # the publishing connection did
        assert agent.stop(timeout=10)
        answered = len(observer.verdicts())
        # Nothing left unacknowledged at the broker: the same session, resumed, gets nothing back.
        again = start_agent(f"agent_id={aid}")
        time.sleep(2.0)
        assert again.transport.ledger.in_hand == 0
        assert len(observer.verdicts()) == answered, "readings were redelivered: their acknowledgements were lost"
