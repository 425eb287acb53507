"""Fault injection against a real Mosquitto: no reading the broker accepted is lost, hostile input is refused.

Each scenario lives in bench/faults.py (``python -m bench.faults`` prints the same table for
docs/architecture.md); here each one runs once and its numbers are asserted. The agent is a subprocess
(``edge-agent run --config config.yaml``) so it can be SIGKILLed; its models are the session's
freshly trained ones, whose ``default`` model scores every sensor.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry

from bench import faults
from bench.faultlab import TABLE_HEADER, Lab, ScenarioResult, table_row
from bench.kit import Collector, Sensor, running_broker
from conftest import FAULT_TABLE
from edge_agent.config import load_config
from edge_agent.core.domain import Reading, Verdict
from edge_agent.learning import Learner
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.local_broker import MOSQUITTO
from edge_agent.mqtt.transport import MQTTTransport
from edge_agent.pipeline import Envelope

pytestmark = pytest.mark.faults


def against_mosquitto(test: Any) -> Any:
    """A scenario: real broker, slow, needs the mosquitto binary."""
    skip = pytest.mark.skipif(MOSQUITTO is None, reason="the fault scenarios need the mosquitto binary")
    return pytest.mark.broker(pytest.mark.slow(skip(test)))


# Reasons the hostile scenario's junk must produce (every parser reason a broker can deliver, plus retained).
HOSTILE_REASONS = {"empty", "bad_json", "not_finite", "wrong_type", "not_utf8", "too_deep", "too_large",
                   "missing_field", "bad_timestamp", "bad_sensor_id", "retained"}


@pytest.fixture
def lab(tmp_path: Path, models_dir: Path) -> Lab:
    return Lab(tmp_path, models_dir)


@pytest.fixture
def record(pytestconfig: pytest.Config) -> Iterator[list[ScenarioResult]]:
    """Results of this test, added as rows to the table printed at the end of the run."""
    results: list[ScenarioResult] = []
    yield results
    rows = pytestconfig.stash.setdefault(FAULT_TABLE, list(TABLE_HEADER))
    rows.extend(table_row(r) for r in results)


def assert_nothing_lost(r: ScenarioResult) -> None:
    t = r.tally
    assert t.sent > 0
    assert t.accepted == t.sent, f"the broker did not accept {t.sent - t.accepted} readings"
    assert t.lost == 0 and t.answered == t.accepted, r
    assert t.unmarked_duplicates == 0, f"{t.unmarked_duplicates} repeated verdicts carry no duplicate/redelivered mark"


@against_mosquitto
def test_agent_sigkill_mid_stream_loses_nothing(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.agent_sigkill(lab, kills=2)
    record.append(r)
    assert_nothing_lost(r)
    assert all(x is not None and x < 10 for x in r.details["recoveries"]), r.details
    assert r.details["status"] == "online"  # the last will said offline; the restart says online again
    assert r.details["exit"] == 0


@against_mosquitto
def test_agent_sigterm_mid_stream_loses_and_repeats_nothing(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.agent_sigterm(lab)
    record.append(r)
    assert_nothing_lost(r)
    # A clean stop acknowledges every reading it answered: nothing comes back twice.
    assert r.tally.duplicated == 0
    assert r.details["exit_code"] == 0 and r.details["offline_published"]


@against_mosquitto
def test_broker_restart_with_persistence_loses_nothing(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.broker_restart(lab)
    record.append(r)
    assert_nothing_lost(r)
    assert r.recovery_s is not None and r.recovery_s < 10
    assert r.details["status"] == "online" and r.details["exit"] == 0


@against_mosquitto
def test_broker_down_30_s_while_the_sensor_publishes_loses_nothing(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.broker_outage(lab, outage=30.0)
    record.append(r)
    assert_nothing_lost(r)
    assert r.details["not_ready_while_down"] and r.details["healthy_while_down"] and r.details["ready_again"]
    assert r.recovery_s is not None and r.recovery_s < 10
    assert r.details["status"] == "online" and r.details["exit"] == 0


@against_mosquitto
def test_a_backlog_queued_while_the_agent_was_stopped_is_answered_in_full_and_never_held_past_the_bound(
    lab: Lab, record: list[ScenarioResult],
) -> None:
    # Mosquitto 2.0 pushes the whole backlog past the receive maximum (docs/broker.md): the intake
    # stops reading at the bound, and the broker keeps the rest. A hand-over smaller than the
    # bound: the intake's thread blocks on it too, while the worker waits for PUBACKs that come
    # on the publishing connection.
    bound = 200
    r = faults.backlog(lab, readings=20_000, overrides=["pipeline.queue_size=100", f"mqtt.receive_maximum={bound}"])
    record.append(r)
    assert_nothing_lost(r)
    held = r.details["held"]
    assert 0 < held["edge_agent_readings_in_hand"] <= bound, r.details  # sampled from /metrics as it drained
    # The publishes in flight stay under their bound, so no message id wraps onto a queued verdict.
    assert 0 < held["edge_agent_publishes_in_flight"] <= 512, r.details
    assert r.details["exit"] == 0


@against_mosquitto
def test_a_burst_from_a_gateway_is_answered_in_full_with_its_latency_measured(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.burst(lab, readings=6000, sensors=10)
    record.append(r)
    assert_nothing_lost(r)
    assert r.tally.duplicated == 0
    assert r.p99_s is not None and r.details["held"]["edge_agent_publishes_in_flight"] <= 512, r.details
    assert r.details["exit"] == 0


@against_mosquitto
def test_a_broker_receive_maximum_bounds_the_verdicts_in_flight(lab: Lab) -> None:
    # Mosquitto announces max_inflight_messages as its Receive Maximum (MQTT 5): the agent keeps
    # to it, not to its own mqtt.max_in_flight (512), and still answers every reading.
    r = faults.burst(lab, readings=3000, sensors=10, broker_config="max_inflight_messages 20")
    assert_nothing_lost(r)
    assert 0 < r.details["held"]["edge_agent_publishes_in_flight"] <= 20, r.details
    assert r.details["exit"] == 0


@against_mosquitto
def test_a_burst_published_twice_over_is_answered_once_per_reading_and_every_repeat_marked(
    lab: Lab, record: list[ScenarioResult],
) -> None:
    r = faults.burst_duplicates(lab, readings=2000, sensors=10)
    record.append(r)
    assert_nothing_lost(r)
    # Each reading's second copy is answered, marked as a duplicate, with the first one's verdict.
    assert r.tally.duplicated == r.details["twice"] == 2000 and r.tally.unmarked_duplicates == 0
    assert r.details["disagree"] == 0
    assert r.details["exit"] == 0


@against_mosquitto
def test_flood_of_new_sensor_ids_is_capped_and_every_reading_answered(lab: Lab, record: list[ScenarioResult]) -> None:
    cap, flood = 1000, 10_000
    r = faults.sensor_flood(lab, flood=flood, cap=cap)
    record.append(r)
    assert_nothing_lost(r)
    assert r.tally.sent >= flood
    d = r.details
    # The flood's ids push each other out; the real sensors, established before it, are never evicted.
    assert d["evicted"] == flood - (cap - len(faults.SENSORS)), d
    assert d["real_during"] > 0 and d["real_answered"] == d["real_during"], d
    assert d["labels"] <= cap
    assert d["peak_rss"] < 100 * 2**20, d
    # Every flood reading is scored and answered (not refused), at about the agent's message
    # capacity: good readings wait behind it. How long is the bench's figure (9 to 17 s p99 on a
    # loaded 2-vCPU VM: too noisy to assert; the latency under a burst is issue 14, part 1).
    assert d["p99_s"] is not None, d


@against_mosquitto
def test_a_sensor_outrunning_the_broker_counts_only_readings_that_left_it() -> None:
    """paho's message ids wrap after 65,535: past that many readings unacknowledged, it refuses a
    publish whose id a queued reading still holds. The bench's flooder ignored the refusal, so an
    earlier reading's PUBACK was credited to the refused one: the flood's "lost" verdicts (issue 14)."""
    readings, tail = 66_000, 64_000  # ids wrap at the 65,536th; the subscriber checks the readings from ``tail`` on
    with running_broker() as broker, Sensor(broker, "outrun") as sensor:
        assert broker.proc is not None
        received = Collector(broker, ["sensors/outrun-tail"])
        publishing = threading.Thread(target=lambda: [
            sensor.reading("outrun-tail" if i >= tail else "outrun-head", i, 0.9) for i in range(readings)])
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker acknowledges nothing for a while
        try:
            publishing.start()
            counted = -1
            while publishing.is_alive() and counted != len(sensor.sent):  # done, or waiting on the broker
                counted = len(sensor.sent)
                time.sleep(0.5)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        publishing.join(60)
        assert not publishing.is_alive()
        assert sensor.wait_accepted(60)
        arrived = received.wait_count("sensors/outrun-tail", readings - tail, timeout=30)
        time.sleep(0.5)  # a reading counted as accepted but never sent would not arrive however long we wait
        keys = {("outrun-tail", json.loads(m.payload)["ts"]) for m in arrived}
        received.close()
    accepted = {s.key for s in sensor.sent if s.accepted}
    assert len(sensor.sent) == len(accepted) == readings
    assert {k for k in accepted if k[0] == "outrun-tail"} == keys  # each reading counted as accepted arrived


@against_mosquitto
def test_hostile_payloads_are_refused_and_good_readings_still_answered(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.hostile_input(lab, hostile=10_000, good=1000)
    record.append(r)
    # Behaviour, not timing: the latency under attack is the bench's figure (the table's p99 column),
    # too noisy on a shared machine to assert. Every good reading the broker accepted is answered;
    # every hostile message is refused and counted, once (rejected counts the agent's invalid-message
    # metric: a good reading refused, or junk counted twice, would make it differ from hostile).
    assert_nothing_lost(r)
    assert r.rejected == r.hostile == 10_000
    assert set(r.details["reasons"]) == HOSTILE_REASONS
    assert r.details["labels"] == len(faults.SENSORS)  # junk never makes a metric label
    assert r.details["broker_dropped"] == 1  # the 20 MiB one, over the agent's Maximum Packet Size


@against_mosquitto
def test_http_fuzz_gets_no_5xx_and_no_traceback(lab: Lab, record: list[ScenarioResult]) -> None:
    r = faults.http_fuzz(lab, requests=3000, stalled=20)
    record.append(r)
    assert_nothing_lost(r)
    d = r.details
    assert d["server_errors"] == 0 and d["unanswered"] == 0 and d["tracebacks"] == 0, d
    assert d["ok"] > 0 and d["unauthorized"] > 0  # authorised requests served, the others refused
    assert d["timed_out"] == 20
    assert d["after"]["/healthz"] == d["after"]["/readyz"] == d["after"]["/metrics"] == 200


# --------------------------------------------------------------------------- learning on the device


def assert_every_sensor_learned_once(r: ScenarioResult, sensors: int) -> dict[str, Any]:
    """Nothing lost, and every sensor scores with the model it learned, fitted once (refits are off), without a fit error."""
    assert_nothing_lost(r)
    d = r.details
    assert d["learned"] and d["not_learned"] == [], d
    assert d["fits"] == sensors and d["fit_errors"] == 0, d
    return d


@against_mosquitto
def test_models_learned_where_they_cannot_be_saved_keep_scoring_and_are_saved_once_they_can(
    lab: Lab, record: list[ScenarioResult],
) -> None:
    """Issue 14: with a read-only state dir, 40 sensors were still learning after 60 s (324 fit
    errors, 41 CPU seconds): a failed save sent the sensor back into another fit."""
    sensors = 40
    r = faults.unsaved_models(lab, sensors=sensors)
    record.append(r)
    d = assert_every_sensor_learned_once(r, sensors)  # none went back to learning
    # The fit process's CPU: ~0.07 s a fit, its start included (a fit every 50 readings of each sensor
    # kept it busy: 55 CPU s in 66 s). The agent's own goes with the readings it scores (0.4-0.6 of a
    # core at 800/s), and is in the notes.
    assert d["cpu_s"] - d["agent_cpu_s"] < 0.25 * sensors, d
    # Said so: the gauges, and /readyz naming the state dir and why.
    assert d["writable"] == 0 and d["unsaved"] == sensors, d
    status, reason = d["ready"]
    assert status == 503 and d["state_dir"] in reason and "cannot be written" in reason, d
    # Save errors logged at most once in Learner.LOG_EVERY (1,500 sensors would log a line each);
    # the retries back off from 5 s, doubling.
    assert 1 <= d["logged"]["could not save"] <= d["uptime_s"] / Learner.LOG_EVERY + 1, d
    assert d["logged"]["still cannot be written"] <= math.log2(d["uptime_s"] / 5 + 1) + 1, d
    # The dir fixed: a retry saves every model, without fitting any again.
    assert d["saved_again"] and d["writable_after"] == 1 and d["unsaved_after"] == 0 and d["ready_after"] == 200, d
    assert d["on_disk"] == sensors and d["fits_after"] == sensors, d
    assert d["exit"] == 0


@against_mosquitto
def test_many_sensors_finishing_learning_together_all_learn_in_bounded_memory_threads_and_log_lines(
    lab: Lab, record: list[ScenarioResult],
) -> None:
    """Issue 14: 1,500 sensors finishing learning together took the agent to 449 MiB and 489
    threads, with 14,120 "learner busy" lines. 200 here, learned in about half a minute; the
    issue's 1,500 take ten (``python -m bench.faults --only together-1500``)."""
    sensors = 200
    r = faults.learning_together(lab, sensors=sensors)
    record.append(r)
    d = assert_every_sensor_learned_once(r, sensors)
    # Fits run one at a time in the fit process: the agent's threads do not grow with the fits due, and
    # its memory holds the learned models (~80 KB each), not the fits waiting.
    assert d["threads"] <= 20, d
    assert d["peak_rss"] < 100 * 2**20 and 0 < d["fit_rss"] < 100 * 2**20, d
    # More fits were due at once than the learner keeps waiting.
    assert d["refused"] > 0, d
    # "learner busy": one line per 10 s, whatever the sensors.
    assert 0 < d["busy_lines"] <= d["elapsed_s"] / 10 + 1, d
    assert d["exit"] == 0


# --------------------------------------------------------------------------- shutdown


@against_mosquitto
def test_sigterm_with_a_frozen_broker_still_exits_0_in_bounded_time(lab: Lab) -> None:
    with running_broker() as broker, lab.agent(broker, "faults-frozen", ["pipeline.shutdown_timeout=3"]) as agent:
        agent.start()
        agent.wait_ready()
        assert broker.proc is not None
        with Sensor(broker, "frozen") as sensor:
            for i in range(200):
                sensor.reading("vibration-1", 1_700_000_000 + i, 0.9)
            # Connection open, nothing answered: verdicts in hand never get their PUBACK.
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                code = agent.terminate(timeout=30)
                elapsed = time.monotonic() - started
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
        assert code == 0
        assert elapsed < 3 + 2 + 3  # shutdown_timeout, the offline status' own wait, process exit


@against_mosquitto
def test_a_second_signal_exits_at_once(lab: Lab) -> None:
    with running_broker() as broker, lab.agent(broker, "faults-twice", ["pipeline.shutdown_timeout=30"]) as agent:
        agent.start()
        agent.wait_ready()
        assert broker.proc is not None and agent.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the first SIGTERM now waits on a broker that never answers
        try:
            agent.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            started = time.monotonic()
            agent.proc.send_signal(signal.SIGINT)
            code = agent.proc.wait(5)
            elapsed = time.monotonic() - started
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        assert code == 1 and elapsed < 2
        assert "second signal" in agent.log()


# --------------------------------------------------------------------------- acknowledgement bookkeeping


@dataclass
class Info:
    mid: int
    rc: int = paho.MQTT_ERR_SUCCESS


@dataclass
class FakeClient:
    """Stands in for paho's client: hands out message ids, records acks; PUBACKs are delivered by the test."""

    transport: MQTTTransport | None = None
    published: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    next_mid: int = 1
    puback_during_publish: bool = False  # the broker's PUBACK overtakes the publishing thread

    def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> Info:
        mid = self.next_mid
        self.next_mid += 1
        self.published.append((topic, json.loads(payload) if payload.startswith("{") else {"raw": payload}, mid))
        if self.puback_during_publish and self.transport is not None:
            self.transport._on_publish(self.transport.client, None, mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)
        return Info(mid)

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def subscribe(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (0, 1)


OK = ReasonCode(PacketTypes.PUBACK, "Success")
REFUSED = ReasonCode(PacketTypes.PUBACK, "Not authorized")


@pytest.fixture
def transport(models_dir: Path) -> Iterator[tuple[MQTTTransport, FakeClient]]:
    cfg = load_config(None, [f"models.dir={models_dir}", "pipeline.held_verdicts=3"], env={})
    t = MQTTTransport(cfg, PayloadParser(cfg.sources, cfg.max_payload_bytes), AgentMetrics(CollectorRegistry()), {})
    fake = FakeClient(t)
    t.client = t.publisher = fake  # type: ignore[assignment]  # both connections: acks and publishes recorded together
    connect(t)
    yield t, fake


def connect(t: MQTTTransport, publisher: bool = True, intake: bool = True) -> None:
    if publisher:
        t._on_publisher_connect(t.publisher, None, SimpleNamespace(session_present=False), OK, None)
    if not intake:
        return
    t._on_connect(t.client, None, SimpleNamespace(session_present=True), OK, None)
    t._on_subscribe(t.client, None, 1, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")] * len(t._subscriptions), None)


def reading(t: MQTTTransport, mid: int, redelivered: bool = False, ts: int = 1) -> Envelope:
    """A reading as the transport hands it over: received (message ``mid``) on the current connection."""
    item = Reading("s1", {"value": 0.9}, 1.0, ts=float(ts), ts_raw=ts, redelivered=redelivered)
    return Envelope(item, t.ledger.receive(mid, 1))


def verdict(duplicate: bool = False, anomaly: int = 0, ts: int = 1) -> Verdict:
    return Verdict("s1", {"value": 0.9}, ts, 0.2, anomaly, "default", "t1", duplicate=duplicate)


def verdict_mid(fake: FakeClient) -> int:
    return [mid for topic, _, mid in fake.published if "/verdicts/" in topic][-1]


def test_a_reading_is_acknowledged_only_on_its_verdicts_puback(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    t.publish_verdict(verdict(anomaly=1), reading(t, 101))
    assert fake.acks == []
    topics = [topic for topic, _, _ in fake.published]
    assert "/alerts/" in topics[-2] and "/verdicts/" in topics[-1]  # alert first, then the verdict that acks
    registry = t.metrics.registry
    assert registry.get_sample_value("edge_agent_readings_in_hand") == 1
    in_flight = registry.get_sample_value("edge_agent_publishes_in_flight")
    assert in_flight is not None
    t._on_publish(t.client, None, verdict_mid(fake) - 1, OK, None)  # the alert's PUBACK acknowledges nothing
    assert fake.acks == [] and registry.get_sample_value("edge_agent_verdict_latency_seconds_count") == 0
    t._on_publish(t.client, None, verdict_mid(fake), OK, None)
    assert fake.acks == [101]
    assert t.wait_for_acks(0.1)
    # Its latency is measured from arrival to this PUBACK; the gauges read the ledger.
    assert registry.get_sample_value("edge_agent_verdict_latency_seconds_count") == 1
    assert registry.get_sample_value("edge_agent_readings_in_hand") == 0
    assert registry.get_sample_value("edge_agent_publishes_in_flight") == in_flight - 2


def test_a_puback_overtaking_the_publishing_thread_still_acknowledges_once(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    fake.puback_during_publish = True
    t.publish_verdict(verdict(), reading(t, 102))
    assert fake.acks == [102]
    assert t.ledger.in_flight == 1  # only the status message: the verdict's early PUBACK was applied


def test_a_stale_puback_of_a_foreign_publish_never_acknowledges_a_later_verdict(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    # Something published around the transport (mid 50) and its PUBACK came while nothing was being registered.
    t._on_publish(t.client, None, 50, OK, None)
    fake.next_mid = 50  # paho's ids wrap around: the next verdict gets the same id
    t.publish_verdict(verdict(), reading(t, 103))
    assert verdict_mid(fake) == 50 and fake.acks == []  # not acknowledged before its own PUBACK
    t._on_publish(t.client, None, 50, OK, None)
    assert fake.acks == [103]


def test_a_refused_verdict_leaves_its_reading_unacknowledged(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    t.publish_verdict(verdict(), reading(t, 104))
    t._on_publish(t.client, None, verdict_mid(fake), REFUSED, None)
    assert fake.acks == []
    assert "refused a publish" in t.last_error
    assert not t.connected  # /readyz: 503 while verdicts cannot get out
    t.publish_verdict(verdict(), reading(t, 109))
    t._on_publish(t.client, None, verdict_mid(fake), OK, None)
    assert fake.acks == [109] and t.connected


def test_a_puback_after_an_intake_reconnect_does_not_acknowledge_on_the_new_connection(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    t.publish_verdict(verdict(), reading(t, 105))
    mid = verdict_mid(fake)
    t._on_disconnect(t.client, None, None, OK, None)
    connect(t, publisher=False)  # the reading's id belongs to the old intake connection
    in_flight = t.ledger.in_flight
    t._on_publish(t.client, None, mid, OK, None)
    assert fake.acks == [] and t.ledger.in_flight == in_flight - 1  # tracked to its PUBACK, settling nothing


def test_redelivered_and_duplicate_verdicts_are_marked(transport: tuple[MQTTTransport, FakeClient]) -> None:
    t, fake = transport
    t.publish_verdict(verdict(), reading(t, 106, redelivered=True))
    assert fake.published[-1][1].get("redelivered") is True
    t.publish_verdict(verdict(duplicate=True), reading(t, 107, redelivered=True))
    body = fake.published[-1][1]
    assert body.get("duplicate") is True and "redelivered" not in body
    t.publish_verdict(verdict(), reading(t, 108))
    assert "redelivered" not in fake.published[-1][1] and "duplicate" not in fake.published[-1][1]


@pytest.mark.parametrize("intake_reconnected", [False, True])
def test_verdicts_made_while_the_publishing_connection_is_down_wait_and_settle_after_it_reconnects(
    transport: tuple[MQTTTransport, FakeClient], intake_reconnected: bool,
) -> None:
    t, fake = transport
    in_flight = t.ledger.in_flight  # the status message, not yet acknowledged
    assert in_flight > 0
    t._on_publisher_disconnect(t.publisher, None, None, OK, None)
    assert not t.connected and "publishing" in t.not_ready()
    assert t.metrics.registry.get_sample_value("edge_agent_verdicts_held") == in_flight
    before = len(fake.published)
    taken = [reading(t, 200 + i, ts=i) for i in range(5)]  # on the intake connection as it was

    def publish_all() -> None:
        for i, envelope in enumerate(taken):
            t.publish_verdict(verdict(ts=i), envelope)

    worker = threading.Thread(target=publish_all)
    worker.start()
    time.sleep(0.1)
    assert len(fake.published) == before  # the worker waits: nothing new goes to paho while the connection is down
    if intake_reconnected:
        t._on_disconnect(t.client, None, None, OK, None)
    connect(t, intake=intake_reconnected)
    assert t.metrics.registry.get_sample_value("edge_agent_verdicts_held") == 0
    time.sleep(0.1)
    # paho re-sends what was in flight once the CONNACK is in; the worker waits for that (the first PUBACK).
    assert [topic for topic, _, _ in fake.published[before:]] == [t.status_topic]  # the new connection's "online"
    for _, _, mid in fake.published[before - in_flight:]:
        t._on_publish(t.client, None, mid, OK, None)
    worker.join(5)
    assert [body["ts"] for topic, body, _ in fake.published[before:] if "/verdicts/" in topic] == [0, 1, 2, 3, 4]
    for _, _, mid in fake.published[-5:]:
        t._on_publish(t.client, None, mid, OK, None)
    # Their readings are settled when they came in on the intake connection still up; else the
    # broker redelivers them.
    assert fake.acks == ([] if intake_reconnected else [200, 201, 202, 203, 204])
    assert t.ledger.in_hand == 0


def test_the_tally_tells_a_verdict_message_seen_again_from_a_second_verdict() -> None:
    """A byte-identical copy of one verdict message is QoS 1's at least once, counted apart; a second
    verdict for a reading differs from the first and must carry its mark."""
    from bench.faultlab import tally
    from bench.kit import Observed, Sent

    def sent(ts: int) -> Sent:
        return Sent("pump", ts, None, good=True, at=0.0, accepted=True)  # type: ignore[arg-type]

    def seen(body: dict[str, Any], dup: bool = False) -> Observed:
        return Observed(0.0, "edge/a/verdicts/pump", json.dumps(body).encode(), dup)

    first, again = {"sensor_id": "pump", "ts": 1, "anomaly": 0}, {"sensor_id": "pump", "ts": 2, "anomaly": 0}
    t = tally([sent(1), sent(2), sent(3)], [seen(first), seen(first), seen(first, dup=True), seen(again),
                                             seen({**again, "duplicate": True}), seen({**first, "anomaly": 1})])
    assert (t.answered, t.lost, t.resent) == (2, 1, 1)  # the DUP copy is the observer's own, not counted
    assert (t.duplicated, t.unmarked_duplicates) == (2, 1)  # ts 1 scored again without a mark: unmarked
