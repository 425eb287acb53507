"""A broker that drops readings is noticed: sequence gaps are counted and logged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.kit import Collector, Sensor
from conftest import agent_overrides, started_agent
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.mqtt.local_broker import MOSQUITTO, MosquittoBroker

pytestmark = pytest.mark.broker


@pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary (its queue limit is the point)")
def test_readings_a_small_broker_queue_dropped_show_as_a_gap(models_dir: Path, tmp_path: Path, caplog: Any) -> None:
    # Mosquitto's packaged default is 1000 queued messages a client; 10 makes the point quickly.
    broker = MosquittoBroker(extra_config="max_queued_messages 10")
    broker.start()
    aid = f"gap-{uuid.uuid4().hex[:6]}"

    def start() -> Agent:
        return started_agent(load_config(None, [*agent_overrides(broker, models_dir), f"agent_id={aid}",
                                                f"learning.state_dir={tmp_path}",
                                                'sources=[{"topic": "sensors/+", "seq_field": "seq"}]'], {}))

    sensor = Sensor(broker)
    out = Collector(broker, [f"edge/{aid}/verdicts/#"])
    try:
        agent = start()
        sensor.send_json("sensors/pump", {"value": 0.9, "seq": 1})
        out.wait_count(f"edge/{aid}/verdicts/", 1)
        agent.stop(timeout=5)
        for seq in range(2, 102):  # 100 readings while the agent is away: the broker keeps 10
            sensor.send_json("sensors/pump", {"value": 0.9, "seq": seq})
        with caplog.at_level(logging.WARNING, logger="edge_agent.agent"):
            agent = start()
            out.wait_count(f"edge/{aid}/verdicts/", 11)
            sensor.send_json("sensors/pump", {"value": 0.9, "seq": 102})
            out.wait_count(f"edge/{aid}/verdicts/", 12)
        missed = agent.registry.get_sample_value("edge_agent_readings_missed_total", {"sensor": "pump"})
        agent.stop(timeout=5)
    finally:
        out.close()
        sensor.close()
        broker.close()
    assert missed == 90
    assert "sensor pump: 90 reading(s) never arrived" in caplog.text and "docs/broker.md" in caplog.text
