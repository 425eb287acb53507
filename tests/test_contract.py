"""The contract every model kind and every verdict sink keeps, checked alike (River's check_estimator style).

Model kinds: each shipped model in models/ (scikit-learn exports), a model trained
with scikit-learn (`edge-agent train`, here with two fields) and a model learned on
the device (the numpy fitter). For each: scoring leaves its input alone; a save/load
round trip scores the same; the same seed trains the same model; and scoring a batch,
one reading at a time, through /predict or through replay gives the same answers.
Verdict sinks (the MQTT payload, the HTTP /predict payload, the replay CSV) carry the
verdict's score and decision unchanged and leave the verdict alone; the MQTT sinks as objects
(the transport, and Home Assistant discovery in front of it), driven on a real Mosquitto, also
publish the documented payload and acknowledge a reading once it is answered or settled, never before.
"""

from __future__ import annotations

import copy
import csv
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bench.kit import Broker, Collector, Sensor
from conftest import REPO
from edge_agent.config import AgentConfig, load_config
from edge_agent.config.secrets import publisher_id
from edge_agent.core.domain import InvalidReading, Reading, Verdict
from edge_agent.core.engine import Decision, ScoringEngine
from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec
from edge_agent.core.model import SensorModel
from edge_agent.metrics import AgentMetrics
from edge_agent.model_files import load_model, save_model
from edge_agent.mqtt.homeassistant import HomeAssistantDiscovery, retained_publisher
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.mqtt.transport import MQTTTransport
from edge_agent.pipeline import Envelope, VerdictSink
from edge_agent.tools.replay import ReplayRow, replay, write_replay
from edge_agent.tools.table import read_table
from edge_agent.tools.training import learn_model, train_model
from mqtt_relay import CONNACK, PUBLISH, Action, MqttRelay, Packet
from simulator.streams import CSV_HEADER, Simulation

SHIPPED = sorted(p.name for p in (REPO / "models").iterdir() if (p / "manifest.json").exists())
ROWS = 260


@dataclass(frozen=True)
class Kind:
    """How to make one kind of model: ``make(seed, tmp)`` gives the model and its estimator (if any);
    ``recipe(seed, tmp)`` trains one the way the kind is made (a shipped model: models/build.sh's
    recipe on a shorter stretch of simulated data)."""

    name: str
    make: Callable[[int, Path], tuple[SensorModel, Any]]
    recipe: Callable[[int, Path], tuple[SensorModel, Any]]


def _history(fields: Sequence[str], rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([20.0 + 10.0 * j + rng.normal(0, 0.5, rows) for j in range(len(fields))])


def _simulated_hour(tmp: Path) -> Path:
    """models/build.sh's training data, an hour of it instead of a day: 24 sensors at 1 reading/s, seed 7, no anomalies."""
    path = tmp / "sim.csv"
    if not path.exists():
        sim = Simulation(n_sensors=24, rate=1.0, seed=7, start=1_735_689_600.0, anomaly_rate=0.0)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            writer.writerows(r.to_csv_row() for r in sim.iter_readings(duration=3600))
    return path


def _shipped(name: str) -> Kind:
    kind = "vibration" if name == "default" else name

    def recipe(seed: int, tmp: Path) -> tuple[SensorModel, Any]:  # as models/build.sh trains it
        return train_model(read_table(_simulated_hour(tmp), ["value"]), name=name, version="test",
                           transforms=load_model(REPO / "models" / name).spec.transforms, sensor_pattern=f"{kind}-*", seed=seed)

    return Kind(f"shipped:{name}", lambda seed, tmp: (load_model(REPO / "models" / name), None), recipe)


def _trained(seed: int, tmp: Path) -> tuple[SensorModel, Any]:
    path = tmp / f"train-{seed}.csv"
    values = _history(("temp", "hum"), 600, seed=1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sensor_id", "temp", "hum"])
        writer.writerows(["room-1", *row] for row in values.tolist())
    return train_model(read_table(path), name="trained", version="1", trees=40, seed=seed)


def _learned(seed: int, tmp: Path) -> tuple[SensorModel, Any]:
    spec = FeatureSpec(fields=("value",), transforms=DEFAULT_TRANSFORMS)
    return learn_model(spec, _history(("value",), 300, seed=1), "learned", "1", seed=seed), None


KINDS = [*(_shipped(n) for n in SHIPPED), Kind("trained", _trained, _trained), Kind("learned", _learned, _learned)]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param


def _readings(model: SensorModel, sensor: str = "s-1") -> list[Reading]:
    """A stream like the model's training data (its mean and spread), with a few readings far outside it."""
    names = model.spec.names
    value = [names.index(f) for f in model.fields]
    spread = [names.index(f"{f}:std:10") if f"{f}:std:10" in names else i for f, i in zip(model.fields, value, strict=True)]
    centre, noise = model.impute[value], np.maximum(model.impute[spread], 1e-3)
    width = model.range_guard.high[value] - model.range_guard.low[value]
    rng = np.random.default_rng(zlib.crc32(sensor.encode()))  # each sensor its own stream
    rows = centre + noise * rng.normal(size=(ROWS, len(model.fields)))
    rows[[60, 61, 150]] = centre + 5 * width  # an excursion, and a lone spike
    rows[200:] += 6 * noise  # a step to a new level: the detector holds a second context while it settles
    return [Reading(sensor, dict(zip(model.fields, map(float, row), strict=True)), float(i)) for i, row in enumerate(rows)]


def _engine(model: SensorModel, decision: Decision = Decision()) -> ScoringEngine:
    return ScoringEngine({model.name: model}, default=model.name, decision=decision)


def _answers(verdicts: Sequence[object]) -> list[tuple[float, int, str | None]]:
    out = []
    for v in verdicts:
        assert isinstance(v, Verdict), v
        out.append((v.score, v.anomaly, v.event))
    return out


def test_scoring_leaves_its_input_alone(kind: Kind, tmp_path: Path) -> None:
    model, _ = kind.make(0, tmp_path)
    readings = _readings(model)
    before = copy.deepcopy(readings)
    engine = _engine(model)
    engine.score(readings)
    assert readings == before
    values = dict(readings[0].values)
    engine.predict(values, "s-1")
    assert values == readings[0].values
    rows = np.array([list(r.values.values()) for r in readings])
    kept = rows.copy()
    replay(_table(tmp_path, readings), model, Decision())
    assert np.array_equal(rows, kept)


def test_a_saved_and_loaded_model_scores_the_same(kind: Kind, tmp_path: Path) -> None:
    model, estimator = kind.make(0, tmp_path)
    save_model(model, tmp_path / "saved", estimator)
    loaded = load_model(tmp_path / "saved")
    readings = _readings(model)
    assert _answers(_engine(loaded).score(readings).results) == _answers(_engine(model).score(readings).results)


def test_the_same_seed_trains_the_same_model(kind: Kind, tmp_path: Path) -> None:
    readings = _readings(kind.make(0, tmp_path)[0])
    first, again, other = (_engine(kind.recipe(seed, tmp_path)[0]) for seed in (0, 0, 1))
    answers = _answers(first.score(readings).results)
    assert _answers(again.score(readings).results) == answers
    # The seed is used: another one grows other trees (raw scores differ somewhere).
    raw = [v.raw_score for v in other.score(readings).results]  # type: ignore[union-attr]
    assert raw != [v.raw_score for v in _engine(kind.recipe(0, tmp_path)[0]).score(readings).results]  # type: ignore[union-attr]


def _table(tmp: Path, readings: Sequence[Reading]) -> Any:
    path = tmp / "replay.csv"
    fields = list(readings[0].values)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sensor_id", *fields])
        writer.writerows([r.sensor_id, *(repr(r.values[k]) for k in fields)] for r in readings)
    return read_table(path, fields)


@pytest.mark.parametrize("decision", [Decision(), Decision(clear=0.2, end_after=5)], ids=["default", "hysteresis"])
def test_batch_single_predict_and_replay_paths_agree(kind: Kind, decision: Decision, tmp_path: Path) -> None:
    model, _ = kind.make(0, tmp_path)
    # Three sensors interleaved: a batch scores them together, one forest call a round.
    streams = [_readings(model, f"s-{n}") for n in range(3)]
    readings = [r for row in zip(*streams, strict=True) for r in row]
    batch = _answers(_engine(model, decision).score(readings).results)
    single, predicted = _engine(model, decision), []
    one_by_one = []
    for r in readings:
        predicted.append(single.predict(r.values, r.sensor_id))  # in the context of what came before, unchanged
        one_by_one.extend(single.score([r]).results)
    _assert_same(_answers(one_by_one), batch)
    _assert_same([(v.score, v.anomaly, None) for v in predicted], [(s, a, None) for s, a, _ in batch])
    replayed = replay(_table(tmp_path, readings), model, decision)
    _assert_same(_answers([row.verdict for row in replayed]), batch)


def _assert_same(answers: list[tuple[float, int, str | None]], expected: list[tuple[float, int, str | None]]) -> None:
    """Decisions and events equal; scores equal to the last bits (numpy's batch sums and a
    single row's, or /predict's peek and the stream's update, may round one ulp apart)."""
    assert [a[1:] for a in answers] == [e[1:] for e in expected]
    assert [a[0] for a in answers] == pytest.approx([e[0] for e in expected], rel=1e-12, abs=1e-12)


# -- verdict sinks ---------------------------------------------------------------------------------


def _mqtt(verdict: Verdict, tmp: Path) -> dict[str, Any]:
    return verdict.to_payload()


def _http(verdict: Verdict, tmp: Path) -> dict[str, Any]:
    return verdict.to_answer()


def _replay_csv(verdict: Verdict, tmp: Path) -> dict[str, Any]:
    path = tmp / "in.csv"
    path.write_text("value\n" + str(verdict.values["value"]) + "\n")
    write_replay(tmp / "out.csv", read_table(path), [ReplayRow(verdict, learning=False)])
    with open(tmp / "out.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    return {"score": float(row["score"]), "anomaly": int(row["anomaly"])}


SINKS = {"mqtt": _mqtt, "http": _http, "replay_csv": _replay_csv}


@pytest.mark.parametrize("sink", SINKS.values(), ids=SINKS.keys())
def test_a_verdict_sink_carries_the_verdict_unchanged(sink: Callable[[Verdict, Path], dict[str, Any]], tmp_path: Path) -> None:
    model = load_model(REPO / "models" / "default")
    for verdict in _engine(model).score(_readings(model)).results:
        assert isinstance(verdict, Verdict)
        before = copy.deepcopy(verdict)
        out = sink(verdict, tmp_path)
        assert verdict == before
        assert out["score"] == round(verdict.score, 6) and out["anomaly"] == verdict.anomaly


# -- the MQTT sinks as objects, on a real broker ---------------------------------------------------
#
# The agent hands each verdict to a VerdictSink (edge_agent.pipeline): the MQTT transport, or
# Home Assistant discovery in front of it. Both are driven here as the pipeline drives them, on a
# Mosquitto of the test's own (the kit's), and must keep the same contract: the verdict topic gets
# the documented payload (Verdict.to_payload; an anomaly also on the alerts topic, first), the
# verdict is left alone, and a reading is acknowledged to the broker once its verdict is out or it
# is settled, never before: an unsettled one is redelivered to the agent's next session.


@dataclass
class Rig:
    """A connected MQTT transport (the agent's own, with a persistent session) and the sink under test."""

    transport: MQTTTransport
    sink: VerdictSink
    arrived: queue.Queue[Envelope]

    def envelope(self, timeout: float = 10.0) -> Envelope:
        return self.arrived.get(timeout=timeout)


def _mqtt_sink(cfg: AgentConfig, transport: MQTTTransport) -> VerdictSink:
    return transport


def _home_assistant_sink(cfg: AgentConfig, transport: MQTTTransport) -> VerdictSink:
    return HomeAssistantDiscovery(cfg, transport, retained_publisher(transport))


MQTT_SINKS = {"mqtt": _mqtt_sink, "homeassistant": _home_assistant_sink}


@pytest.fixture(params=list(MQTT_SINKS.values()), ids=list(MQTT_SINKS))
def make_rig(request: pytest.FixtureRequest, broker: Broker) -> Iterator[Callable[..., Rig]]:
    """Rigs on the test's broker, one agent id: a second rig is the same agent's next session."""
    if broker.kind == "embedded":
        pytest.skip("a persistent MQTT 5 session needs Mosquitto (amqtt speaks 3.1.1)")
    agent_id = f"contract-{uuid.uuid4().hex[:6]}"
    overrides = [f"agent_id={agent_id}", f"mqtt.host={broker.host}", f"mqtt.port={broker.port}",
                 "mqtt.reconnect_min_delay=0.2", "mqtt.reconnect_max_delay=1", "homeassistant.enabled=true"]
    made: list[MQTTTransport] = []

    def make(relay: MqttRelay | None = None) -> Rig:
        """``relay``: connect through it instead of to the broker."""
        cfg = load_config(None, [*overrides, *([f"mqtt.port={relay.port}"] if relay else [])], {})
        transport = MQTTTransport(cfg, PayloadParser(cfg.sources, cfg.max_payload_bytes), AgentMetrics(CollectorRegistry()), {})
        arrived: queue.Queue[Envelope] = queue.Queue()
        transport.start(arrived.put)
        made.append(transport)
        deadline = time.monotonic() + 10
        while not transport.connected:
            assert time.monotonic() < deadline, transport.last_error
            time.sleep(0.02)
        return Rig(transport, request.param(cfg, transport), arrived)

    yield make
    for t in made:
        t.close()


def _verdict_for(envelope: Envelope, anomaly: int = 0) -> Verdict:
    reading = envelope.item
    assert isinstance(reading, Reading), reading
    return Verdict(reading.sensor_id, dict(reading.values), reading.ts_raw, 0.123456789, anomaly, "default", "t1",
                   event="onset" if anomaly else None)


@pytest.mark.broker
def test_an_mqtt_sink_publishes_the_documented_payload_and_leaves_the_verdict_alone(
    make_rig: Callable[[], Rig], broker: Broker, sensor: Sensor, collect: Callable[[list[str]], Collector]
) -> None:
    rig = make_rig()
    agent_id = rig.transport.cfg.agent_id
    out = collect([f"edge/{agent_id}/verdicts/#", f"edge/{agent_id}/alerts/#", f"edge/{agent_id}/errors"])
    sensor.send_json("sensors/pump-1", {"value": 0.9, "ts": 1})
    sensor.send_json("sensors/pump-1", {"value": 7.5, "ts": 2})
    for anomaly in (0, 1):
        envelope = rig.envelope()
        verdict = _verdict_for(envelope, anomaly)
        before = copy.deepcopy(verdict)
        rig.sink.publish_verdict(verdict, envelope)
        assert verdict == before
    rig.sink.publish_error(InvalidReading("bad_json", "not JSON", "sensors/x", "x"))
    got = out.wait_for(lambda ms: len(ms) >= 4)
    normal = _verdict_for(Envelope(Reading("pump-1", {"value": 0.9}, 0.0, ts_raw=1))).to_payload()
    spike = _verdict_for(Envelope(Reading("pump-1", {"value": 7.5}, 0.0, ts_raw=2)), anomaly=1).to_payload()
    # An anomaly goes to the alerts topic before its verdict, whose PUBACK settles the reading.
    assert [(m.topic, m.json()) for m in got[:3]] == [
        (f"edge/{agent_id}/verdicts/pump-1", normal),
        (f"edge/{agent_id}/alerts/pump-1", spike),
        (f"edge/{agent_id}/verdicts/pump-1", spike),
    ]
    report = got[3].json()
    assert got[3].topic == f"edge/{agent_id}/errors" and set(report) == {"topic", "sensor_id", "reason", "detail", "ts"}
    assert (report["topic"], report["sensor_id"], report["reason"], report["detail"]) == ("sensors/x", "x", "bad_json", "not JSON")
    assert got[1].json()["score"] == 0.123457  # rounded to 6 places, as documented


@pytest.mark.broker
def test_an_mqtt_sink_acknowledges_a_reading_once_answered_or_settled_and_never_before(
    make_rig: Callable[[], Rig], sensor: Sensor, collect: Callable[[list[str]], Collector]
) -> None:
    rig = make_rig()
    agent_id = rig.transport.cfg.agent_id
    out = collect([f"edge/{agent_id}/verdicts/#"])
    for ts in (1, 2, 3):
        sensor.send_json("sensors/pump-1", {"value": 0.9, "ts": ts})
    answered, settled, _unsettled = (rig.envelope() for _ in range(3))
    rig.sink.publish_verdict(_verdict_for(answered), answered)
    rig.sink.settle(settled.token)  # a rejection: acknowledged with nothing published
    out.wait_count(f"edge/{agent_id}/verdicts/", 1)
    assert rig.transport.wait_for_acks(10)
    rig.transport.close()

    # The agent's next session: the broker redelivers the one reading nothing answered, and only it.
    again = make_rig()
    redelivered = again.envelope()
    assert isinstance(redelivered.item, Reading) and redelivered.item.ts_raw == 3 and redelivered.item.redelivered
    with pytest.raises(queue.Empty):
        again.envelope(timeout=1.0)
    # Its verdict says so: this process cannot know whether an earlier one went out.
    again.sink.publish_verdict(_verdict_for(redelivered), redelivered)
    (_, last) = out.wait_count(f"edge/{agent_id}/verdicts/", 2)
    assert last.json() == {**_verdict_for(redelivered).to_payload(), "redelivered": True}


@pytest.mark.broker
def test_an_mqtt_sink_resends_what_a_reconnect_caught_in_flight_before_anything_new(
    make_rig: Callable[..., Rig], broker: Broker, sensor: Sensor, collect: Callable[[list[str]], Collector]
) -> None:
    """paho re-sends the publishes in flight only once the new connection's CONNACK is in; one made
    before that (the socket is open) would overtake them: around a broker restart, the marked verdict
    of a reading's redelivery arrived ahead of the reading's first verdict."""
    relay = MqttRelay(broker)
    try:
        rig = make_rig(relay)
        out_id = publisher_id(rig.transport.cfg)
        out = collect([f"edge/{rig.transport.cfg.agent_id}/verdicts/#"])
        for ts in (1, 2):
            sensor.send_json("sensors/pump-1", {"value": 0.9, "ts": ts})
        first, second = rig.envelope(), rig.envelope()

        lost: list[Packet] = []

        def lose_publishes(p: Packet) -> Action:
            if p.client_id == out_id and p.kind == PUBLISH and not p.from_broker:
                lost.append(p)
                return "drop"
            return "pass"

        relay.decide = lose_publishes
        rig.sink.publish_verdict(_verdict_for(first), first)
        deadline = time.monotonic() + 10
        while not lost:
            assert time.monotonic() < deadline, "the first verdict never went out"
            time.sleep(0.01)
        # Its connection breaks; the next one's CONNACK is held back while the second verdict is published.
        relay.decide = lambda p: "hold" if p.client_id == out_id and p.kind == CONNACK else "pass"
        relay.cut(out_id)
        assert relay.holding.wait(10), "the publishing connection did not reconnect"
        publishing = threading.Thread(target=rig.sink.publish_verdict, args=(_verdict_for(second), second))
        publishing.start()
        time.sleep(0.5)  # room for the second verdict to go out early, were it not held back
        relay.release()
        publishing.join(10)
        got = out.wait_count(f"edge/{rig.transport.cfg.agent_id}/verdicts/", 2)
        assert [m.json()["ts"] for m in got] == [1, 2]
        assert rig.transport.wait_for_acks(10)  # both readings acknowledged
    finally:
        relay.close()
