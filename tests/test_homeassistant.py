"""Home Assistant MQTT discovery against a real broker: retained configs per sensor, tied to the
verdict and status topics, published again when Home Assistant comes online."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from edge_agent.mqtt.homeassistant import discovery_id

pytestmark = pytest.mark.broker

HA = ["homeassistant.enabled=true"]


def configs(messages: list[Any]) -> dict[str, dict[str, Any]]:
    return {m.topic: json.loads(m.payload) for m in messages if m.topic.endswith("/config")}


def test_each_sensor_gets_a_retained_binary_sensor_and_score_sensor(start_agent, collect, sensor) -> None:
    agent = start_agent(*HA)
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/verdicts/#"])
    sensor.send_json("sensors/pump-1", {"value": 0.91, "ts": 1})
    sensor.send_json("sensors/Küche 1", {"value": 0.92, "ts": 2})
    sensor.send_json("sensors/pump-1", {"value": 0.93, "ts": 3})
    verdicts = out.wait_count(f"edge/{aid}/verdicts/", 3)

    # A client arriving later (Home Assistant after a restart) gets them from the broker.
    late = collect(["homeassistant/#", f"edge/{aid}/status"])
    got = late.wait_for(lambda ms: len(configs(ms)) >= 4 and any(m.topic.endswith("/status") for m in ms))
    time.sleep(0.3)
    found = configs(late.messages)
    assert len(found) == 4, sorted(found)  # two entities per sensor, each announced once
    assert all(m.retain for m in got if m.topic.startswith("homeassistant/"))
    [status] = [m for m in late.messages if m.topic == f"edge/{aid}/status"]
    assert status.payload == b"online" and status.retain

    verdict_keys = {k for m in verdicts for k in json.loads(m.payload)}
    node = discovery_id(aid)
    unique_ids = set()
    for sensor_id in ("pump-1", "Küche 1"):
        obj = discovery_id(sensor_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", obj)
        anomaly = found[f"homeassistant/binary_sensor/{node}/{obj}/config"]
        score = found[f"homeassistant/sensor/{node}/{obj}/config"]
        verdict_topic = f"edge/{aid}/verdicts/{sensor_id}"
        assert verdict_topic in {m.topic for m in verdicts}
        for entity in (anomaly, score):
            assert entity["state_topic"] == verdict_topic
            assert entity["availability_topic"] == status.topic
            assert (entity["payload_available"], entity["payload_not_available"]) == ("online", "offline")
            # The templates read fields the verdicts really carry.
            for template in (entity["value_template"], entity["json_attributes_template"]):
                used = set(re.findall(r"value_json\.(\w+)", template))
                assert used and used <= verdict_keys, (template, verdict_keys)
            unique_ids.add(entity["unique_id"])
        assert anomaly["device_class"] == "problem"
        assert "value_json.anomaly" in anomaly["value_template"]
        assert (anomaly["payload_on"], anomaly["payload_off"]) == ("ON", "OFF")
        assert "value_json.score" in score["value_template"] and score["state_class"] == "measurement"
        # Both entities of a sensor are one device in Home Assistant.
        assert anomaly["device"] == score["device"]
        assert anomaly["device"]["name"] == sensor_id
        # Nothing that changes as a model learns or refits is in a config (it would be re-published).
        assert "sw_version" not in anomaly["device"] and "t1" not in json.dumps(anomaly)
    assert len(unique_ids) == 4


def test_discovery_is_published_again_when_home_assistant_comes_online(start_agent, collect, sensor) -> None:
    # Receive window of one: an unacknowledged status message would stop every reading after it.
    agent = start_agent(*HA, "mqtt.receive_maximum=1")
    aid = agent.cfg.agent_id
    out = collect(["homeassistant/#", f"edge/{aid}/verdicts/#", f"edge/{aid}/errors"])
    for i, name in enumerate(("a", "b")):
        sensor.send_json(f"sensors/{name}", {"value": 0.9, "ts": i})
    out.wait_for(lambda ms: len([m for m in ms if m.topic.startswith("homeassistant/")]) >= 4)

    def announcements() -> int:
        return len([m for m in out.messages if m.topic.startswith("homeassistant/") and m.topic.endswith("/config")])

    sensor.send("homeassistant/status", b"offline")  # Home Assistant going away asks for nothing
    sensor.send("homeassistant/status", b"online")  # at QoS 1: the agent must acknowledge it itself
    out.wait_for(lambda ms: announcements() >= 8)
    # Readings still flow (the agent acknowledged Home Assistant's status itself), and the
    # status was not mistaken for a reading.
    sensor.send_json("sensors/a", {"value": 0.9, "ts": 10})
    out.wait_count(f"edge/{aid}/verdicts/a", 2)
    time.sleep(0.3)
    assert announcements() == 8
    assert out.json(f"edge/{aid}/errors") == []


def test_a_whole_learning_period_retains_at_most_two_configs_per_entity(start_agent, collect, sensor, tmp_path) -> None:
    agent = start_agent(*HA, "learning.enabled=true", "learning.rows=50", "learning.refit_every=0", f"learning.state_dir={tmp_path}")
    aid = agent.cfg.agent_id
    out = collect(["homeassistant/#", f"edge/{aid}/verdicts/#"])
    sent = 0
    learned = False
    while not learned and sent < 2000:
        for name in ("pump-1", "pump-2"):
            sensor.send_json(f"sensors/{name}", {"value": 0.9 + 0.01 * (sent % 7), "ts": 1000 + sent})
        sent += 1
        if sent >= 50 and sent % 10 == 0:
            verdicts = out.json(f"edge/{aid}/verdicts/")
            learned = {v["sensor_id"] for v in verdicts if not v.get("learning")} == {"pump-1", "pump-2"}
    assert learned, f"no learned verdicts after {sent} readings a sensor"
    verdicts = out.json(f"edge/{aid}/verdicts/")
    # Learning progress reaches Home Assistant as an attribute of every verdict ...
    assert [v["model_version"] for v in verdicts if v["sensor_id"] == "pump-1"][:3] == ["1/50", "2/50", "3/50"]
    time.sleep(0.3)
    per_entity: dict[str, int] = {}
    for m in out.messages:
        if m.topic.endswith("/config"):
            per_entity[m.topic] = per_entity.get(m.topic, 0) + 1
    # ... and the configs are published once each, over the whole period.
    assert len(per_entity) == 4 and max(per_entity.values()) <= 2, per_entity
    print(f"{sent} readings a sensor, learned; config messages per entity: {sorted(per_entity.values())}")


def test_discovery_is_off_by_default(start_agent, collect, sensor) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect(["homeassistant/#", f"edge/{aid}/verdicts/#", f"edge/{aid}/errors"])
    sensor.send_json("sensors/quiet", {"value": 0.9, "ts": 1})
    out.wait_count(f"edge/{aid}/verdicts/", 1)
    time.sleep(0.3)
    assert [m.topic for m in out.messages if m.topic.startswith("homeassistant/")] == []


def test_discovery_prefix_is_configurable(start_agent, collect, sensor) -> None:
    agent = start_agent(*HA, "homeassistant.discovery_prefix=ha-test")
    aid = agent.cfg.agent_id
    out = collect(["ha-test/#", "homeassistant/#"])
    sensor.send_json("sensors/x", {"value": 0.9, "ts": 1})
    msgs = out.wait_for(lambda ms: len(ms) >= 2)
    time.sleep(0.2)
    assert sorted(m.topic for m in out.messages) == [
        f"ha-test/binary_sensor/{discovery_id(aid)}/x/config",
        f"ha-test/sensor/{discovery_id(aid)}/x/config",
    ]
    assert len(msgs) == 2


def test_discovery_ids_are_safe_and_distinct() -> None:
    ids = [discovery_id(s) for s in ("room.1", "room_1", "room 1", "Küche", "pump-7")]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert discovery_id("pump-7") == "pump-7"  # already safe ids stay readable
