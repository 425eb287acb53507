"""The persistent session matches the config: filters of an earlier config are unsubscribed on restart."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.mqtt.session import SubscriptionRecord

pytestmark = pytest.mark.broker


def test_a_restart_with_other_sources_gets_nothing_from_the_old_filters(start_agent, collect, sensor, tmp_path: Path) -> None:
    aid = f"session-{uuid.uuid4().hex[:6]}"
    same = [f"agent_id={aid}", f"learning.state_dir={tmp_path}"]
    old = start_agent(*same, 'sources=[{"topic": "old/+"}, {"topic": "sensors/+"}]')
    out = collect([f"edge/{aid}/#"])
    sensor.send("old/a", "0.9")
    out.wait_count(f"edge/{aid}/verdicts/a", 1)
    old.stop(timeout=5)

    # While the agent is away, the session queues what its filters match.
    for _ in range(5):
        sensor.send("old/a", "0.91")
        sensor.send("sensors/b", "0.92")
    start_agent(*same, 'sources=[{"topic": "sensors/+"}]')
    for _ in range(5):
        sensor.send("old/a", "0.93")
        sensor.send("sensors/b", "0.94")
    out.wait_count(f"edge/{aid}/verdicts/b", 10)
    time.sleep(0.5)
    from_old = [m.topic for m in out.messages if m.topic.endswith("/a") or b"old/" in m.payload]
    assert from_old == [f"edge/{aid}/verdicts/a"]  # only the one reading scored before the change
    assert out.json(f"edge/{aid}/errors") == []
    record = json.loads(next(tmp_path.glob("subscriptions-*.json")).read_text())
    assert record == {"filters": ["sensors/+"]}


def test_an_unreadable_record_is_reported_and_changes_nothing(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "subscriptions-x.json"
    path.write_text("{not json")
    record = SubscriptionRecord(path, ["sensors/+"])
    assert record.stale == ()
    assert "cannot read" in caplog.text
    record.save()
    assert json.loads(path.read_text()) == {"filters": ["sensors/+"]}
