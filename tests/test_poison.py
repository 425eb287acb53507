"""No poison message: a verdict the broker would refuse is reported instead, and its reading settled."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.kit import Collector, Sensor
from conftest import agent_config, started_agent
from edge_agent.mqtt.local_broker import MOSQUITTO, MosquittoBroker
from edge_agent.mqtt.transport import packet_size

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")

LONG_ID = "s" * 250  # its verdict (topic and body both carry the id) is well over 400 bytes


@pytest.fixture
def small_broker(request: pytest.FixtureRequest) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(extra_config=request.param)
    broker.start()
    yield broker
    broker.kill()


def _start(broker: Any, models_dir: Path, *overrides: str) -> Any:
    return started_agent(agent_config(broker, models_dir, *overrides))


def test_packet_size_counts_what_mosquitto_counts() -> None:
    # A 3.1.1 QoS 1 PUBLISH: 1 type byte, remaining length, 2 + topic, packet id, payload.
    assert packet_size(b"a/b", b"xy", v5=False) == 1 + 1 + (2 + 3 + 2 + 2)
    assert packet_size(b"a/b", b"xy", v5=True) == 1 + 1 + (2 + 3 + 2 + 1 + 2)
    assert packet_size(b"t", b"x" * 200, v5=False) == 1 + 2 + (2 + 1 + 2 + 200)


@pytest.mark.parametrize(("small_broker", "protocol", "told"), [
    ("max_packet_size 400", "5", False),  # MQTT 5 learns the limit from the CONNACK
    ("max_packet_size 400", "3.1.1", True),  # 3.1.1 has no such field: the config tells it
    ("message_size_limit 400", "5", True),  # nor does a CONNACK tell message_size_limit
], indirect=["small_broker"])
def test_a_verdict_too_large_for_the_broker_is_reported_and_the_good_readings_flow(
        small_broker: MosquittoBroker, models_dir: Path, protocol: str, told: bool) -> None:
    limit = ["mqtt.broker_max_packet_size=400"] if told else []
    aid = f"poison-{uuid.uuid4().hex[:6]}"
    agent = _start(small_broker, models_dir, f"agent_id={aid}", f"mqtt.protocol={protocol}", *limit)
    out = Collector(small_broker, [f"edge/{aid}/#"])
    sensor = Sensor(small_broker)
    try:
        sensor.send_json(f"sensors/{LONG_ID}", {"value": 0.9})
        for i in range(200):
            sensor.send_json("sensors/pump", {"value": 0.9 + 0.01 * (i % 3)})
        out.wait_count(f"edge/{aid}/verdicts/pump", 200, timeout=20)
        out.wait_for(lambda ms: any(m.topic == f"edge/{aid}/errors" for m in ms))
        [report] = [json.loads(m.payload) for m in out.messages if m.topic == f"edge/{aid}/errors"]
        assert report["reason"] == "verdict_too_large" and "at most 400" in report["detail"]
        assert report["sensor_id"].startswith("s" * 40) and report["sensor_id"].endswith("(250 characters)")
        assert agent.transport.connected
        answered = sum(m.topic == f"edge/{aid}/verdicts/pump" for m in out.messages)
        print(f"FIGURE: {small_broker.conf.read_text().splitlines()[-1]}, MQTT {protocol}: {answered} of 200 good readings "
              f"answered, 1 report of {len(json.dumps(report))} bytes")
        agent.stop(timeout=5)

        # The reading was settled: a restarted agent on the same session gets nothing again.
        agent = _start(small_broker, models_dir, f"agent_id={aid}", f"mqtt.protocol={protocol}", *limit)
        sensor.send_json("sensors/pump", {"value": 0.95})
        out.wait_count(f"edge/{aid}/verdicts/pump", 201, timeout=10)
        time.sleep(0.5)
        assert sum(m.topic == f"edge/{aid}/errors" for m in out.messages) == 1
        assert sum(m.topic == f"edge/{aid}/verdicts/pump" for m in out.messages) == 201
    finally:
        agent.stop(timeout=5)
        out.close()
        sensor.close()


def test_a_huge_topic_is_reported_cut_short(broker: Any, models_dir: Path, collect: Any, sensor: Sensor, start_agent: Any) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/errors"])
    sensor.send("sensors/" + "x" * 65_000, b"1.0")
    [m] = out.wait_count(f"edge/{aid}/errors", 1)
    print(f"FIGURE: report of {len(m.payload)} bytes")
    assert len(m.payload) < 1000
    assert json.loads(m.payload)["topic"].endswith("(65008 characters)")


_PUBLISH_BIG = """
import sys, paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
c.connect(sys.argv[1], int(sys.argv[2]))
c.loop_start()
c.publish("sensors/big", b"1" * int(sys.argv[3]), qos=1).wait_for_publish(60)
c.publish("sensors/after", b"0.9", qos=1).wait_for_publish(10)
c.disconnect()
c.loop_stop()
"""


def test_under_3_1_1_a_huge_payload_is_skipped_not_read_into_memory(broker: Any, models_dir: Path, collect: Any,
                                                                  start_agent: Any) -> None:
    import subprocess
    import sys
    import tracemalloc

    if getattr(broker, "kind", "") != "mosquitto":
        pytest.skip("needs Mosquitto")
    agent = start_agent("mqtt.protocol=3.1.1")
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    size = 64 * 2**20
    tracemalloc.start()
    try:
        # Another process publishes, so what this process allocates is the agent's doing.
        subprocess.run([sys.executable, "-c", _PUBLISH_BIG, broker.host, str(broker.port), str(size)], check=True, timeout=120)
        out.wait_for(lambda ms: any(m.topic == f"edge/{aid}/verdicts/after" for m in ms), timeout=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"FIGURE: 64 MiB payload: {peak / 2**20:.2f} MiB traced at peak")
    assert peak < 8 * 2**20, f"the agent held {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB message"
    [report] = [json.loads(m.payload) for m in out.messages if m.topic == f"edge/{aid}/errors"]
    assert report["reason"] == "too_large" and report["topic"] == "sensors/big" and f"{size + 2 + 11 + 2}" in report["detail"]
