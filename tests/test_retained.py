"""Retained junk on sensor topics is counted once, not replayed and rejected on every connect."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.kit import Collector, Sensor

JUNK = 300


def _retained(agent: Any) -> float:
    return agent.registry.get_sample_value("edge_agent_invalid_messages_total", {"reason": "retained"}) or 0.0


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_junk_is_counted_once_across_reconnects(broker: Any, models_dir: Path, start_agent: Any, protocol: str) -> None:
    if getattr(broker, "kind", "") != "mosquitto":
        pytest.skip("restarts Mosquitto with its persistence")
    tag = uuid.uuid4().hex[:6]
    sensor = Sensor(broker)
    for i in range(JUNK):
        sensor.send(f"sensors/junk-{tag}-{i}", b"junk", retain=True)
    sensor.close()
    agent = start_agent(f"mqtt.protocol={protocol}")
    _wait(lambda: _retained(agent) == JUNK, f"the {JUNK} retained messages were not counted")
    out = Collector(broker, [f"edge/{agent.cfg.agent_id}/#"])
    for _ in range(2):  # the broker restarts (its persistence keeps the session and the retained junk)
        broker.stop()
        broker.start()
        _wait(lambda: agent.readiness()[0], "the agent did not reconnect")
        out.close()
        out = Collector(broker, [f"edge/{agent.cfg.agent_id}/#"])
        live = Sensor(broker)
        live.send("sensors/live", b"0.9")
        live.close()
        out.wait_count(f"edge/{agent.cfg.agent_id}/verdicts/live", 1)
    time.sleep(0.5)
    print(f"FIGURE: MQTT {protocol}: counted {_retained(agent):.0f} times over 3 connects")
    assert _retained(agent) == JUNK
    assert not [m for m in out.messages if m.topic.endswith("/errors")]
    out.close()
