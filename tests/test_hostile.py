"""Hostile input, property-based: whatever topics and payloads arrive, the agent never raises and stays bounded.

Arbitrary messages go through the MQTT adapter's message callback, the parser, the pipeline
and the scoring engine into a recording sink. Every message must come out exactly once, as
a verdict or as a rejection with a known reason, and acknowledged; the sensors tracked and
the metric label sets never grow past ``pipeline.max_sensors``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTErrorCode
from prometheus_client import CollectorRegistry, generate_latest

from edge_agent.agent import build_engine, load_models
from edge_agent.config import AgentConfig, load_config
from edge_agent.core.domain import InvalidReading, Reading, Verdict
from edge_agent.core.model import SensorModel
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt.ingest import REASONS, PayloadParser
from edge_agent.mqtt.transport import MQTTTransport
from edge_agent.pipeline import Envelope, Pipeline

CAP = 5  # pipeline.max_sensors here: small, so the examples reach it
ENGINE_REASONS = {"retained", "no_model"}


@dataclass
class RecordingSink:
    """A VerdictSink that keeps everything, as the MQTT adapter would publish and settle it."""

    verdicts: list[tuple[Verdict, Envelope]] = field(default_factory=list)
    reports: list[InvalidReading] = field(default_factory=list)  # rejections reported (rate-limited)
    settled: list[object] = field(default_factory=list)  # tokens of every rejection, settled at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_verdict(self, verdict: Verdict, envelope: Envelope) -> None:
        with self.lock:
            self.verdicts.append((verdict, envelope))

    def publish_error(self, invalid: InvalidReading) -> None:
        with self.lock:
            self.reports.append(invalid)

    def settle(self, token: object) -> None:
        with self.lock:
            self.settled.append(token)

    def acked(self) -> list[Any]:
        with self.lock:
            return [e.token for _, e in self.verdicts] + list(self.settled)


@pytest.fixture(scope="module")
def cfg(models_dir: Path) -> AgentConfig:
    return load_config(None, [
        f"models.dir={models_dir}", "models.default=default", "models.assign={room-*: climate}",
        f"pipeline.max_sensors={CAP}", "max_payload_bytes=2048", "pipeline.error_report_rate=50",
        "learning.enabled=false",  # every sensor is scored at once, by the default or the climate model
        'sources=[{topic: "sensors/+"}, {topic: "zigbee2mqtt/{sensor}", fields: [temperature, humidity]}]',
    ], env={})


@pytest.fixture(scope="module")
def models(cfg: AgentConfig) -> dict[str, SensorModel]:
    return load_models(cfg)


# Topics: mostly ones the sources match (so payloads get parsed), some that no source matches,
# with sensor levels drawn from a small alphabet so that examples reach the sensor cap.
_LEVEL = st.one_of(
    st.text(alphabet="abcdefg-", min_size=1, max_size=3),
    st.sampled_from(["room-1", "room-2", "", "+", "#", "x" * 300, "\u200b", "tab\tid", "\ud800", "é"]),
    st.text(max_size=12),
)
_TOPICS = st.one_of(
    st.builds(lambda s: f"sensors/{s}", _LEVEL),
    st.builds(lambda s: f"zigbee2mqtt/{s}", _LEVEL),
    st.text(max_size=30),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
_NUMBER = st.one_of(st.floats(), st.integers(), st.sampled_from([0.9, 21.0, 45.0, 1e308, -0.0]))
_PAYLOADS = st.one_of(
    st.binary(max_size=3000),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _NUMBER.map(lambda x: repr(x).encode()),
    st.fixed_dictionaries({"value": _NUMBER}, optional={"ts": _JSON | _NUMBER}).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"temperature": _NUMBER, "humidity": _NUMBER}).map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"", b"   ", b"[" * 3000, b'{"value": NaN}', b"\xff\xfe", b"9" * 3000, b"\xef\xbb\xbf0.9"]),
)
_MESSAGES = st.lists(
    st.tuples(st.one_of(_TOPICS.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=20)),
              _PAYLOADS, st.sampled_from([0, 1, 1, 1]), st.booleans(), st.booleans()),
    min_size=1, max_size=40,
)


def message(mid: int, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool) -> paho.MQTTMessage:
    m = paho.MQTTMessage(mid, topic)
    m.payload, m.qos, m.retain, m.dup = payload, qos, retain, dup
    return m


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    return set(re.findall(rf'{label}="([^"]*)"', generate_latest(registry).decode()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=_MESSAGES)
def test_any_messages_through_adapter_pipeline_and_engine(cfg: AgentConfig, models: dict[str, SensorModel],
                                                          messages: list[tuple[bytes, bytes, int, bool, bool]]) -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
    engine = build_engine(cfg, models)
    sink = RecordingSink()
    pipeline = Pipeline(engine, sink, metrics, queue_size=8, max_batch=4, error_report_rate=cfg.pipeline.error_report_rate)
    transport = MQTTTransport(cfg, parser, metrics, {})  # never started: only its message callback is used
    transport._submit = pipeline.submit
    replays: list[int] = []  # retained messages seen before: acknowledged by the transport, quietly

    def record_ack(mid: int, qos: int) -> MQTTErrorCode:
        replays.append(mid)
        return paho.MQTT_ERR_SUCCESS

    transport.client.ack = record_ack  # type: ignore[method-assign]
    pipeline.start()
    try:
        for mid, (topic, payload, qos, retain, dup) in enumerate(messages, start=1):
            transport._on_message(transport.client, None, message(mid, topic, payload, qos, retain, dup))
    finally:
        assert pipeline.drain_and_stop(10)

    # Every message came out exactly once: a verdict or a rejection, with its acknowledgement.
    first: dict[tuple[str, bytes], int] = {}
    for mid, m in enumerate(messages, start=1):
        if m[3] and _utf8(m[0]) is not None:
            first.setdefault((_utf8(m[0]), m[1]), mid)  # type: ignore[arg-type]
    repeats = [mid for mid, m in enumerate(messages, start=1)
               if m[3] and _utf8(m[0]) is not None and first[(_utf8(m[0]), m[1])] != mid]  # type: ignore[index]
    assert len(sink.verdicts) + len(sink.settled) == len(messages) - len(repeats)
    tokens = [t for t in sink.acked() if t is not None]
    assert sorted([t.mid for t in tokens] + replays) == sorted(mid for mid, m in enumerate(messages, start=1) if m[2] > 0)
    assert set(replays) <= set(repeats)
    for invalid in sink.reports:
        assert invalid.reason in REASONS | ENGINE_REASONS
        assert isinstance(invalid.detail, str) and invalid.detail
    for verdict, envelope in sink.verdicts:
        reading = envelope.item
        assert isinstance(reading, Reading)
        assert 0.0 <= verdict.score <= 1.0 and verdict.anomaly in (0, 1)
        assert all(math.isfinite(v) for v in reading.values.values())
        assert reading.sensor_id.isprintable() and "+" not in reading.sensor_id and "#" not in reading.sensor_id
        json.dumps(verdict.to_payload(), allow_nan=False)  # publishable as strict JSON
    # Retained messages are never scored.
    assert registry.get_sample_value("edge_agent_invalid_messages_total", {"reason": "retained"}) == (len(first) or None)
    # Bounded: sensors, and the label sets of the metrics.
    assert engine.sensor_count <= CAP
    assert len(label_values(registry, "sensor")) <= CAP
    assert label_values(registry, "reason") <= REASONS | ENGINE_REASONS


def _utf8(topic: bytes) -> str | None:
    try:
        return topic.decode("utf-8")
    except UnicodeDecodeError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=st.text(max_size=60), payload=_PAYLOADS)
def test_any_topic_and_payload_through_parser_and_engine(cfg: AgentConfig, models: dict[str, SensorModel],
                                                         topic: str, payload: bytes) -> None:
    parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
    engine = build_engine(cfg, models)
    item = parser.parse(topic, payload, 1.0)
    if isinstance(item, Reading):
        (result,) = engine.score([item]).results
        assert isinstance(result, (Verdict, InvalidReading))
        if isinstance(result, InvalidReading):
            assert result.reason in REASONS | ENGINE_REASONS
    else:
        assert item.reason in REASONS


def test_a_flood_of_new_sensors_is_capped_and_known_ones_keep_scoring(cfg: AgentConfig, models: dict[str, SensorModel]) -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    sink = RecordingSink()
    engine = build_engine(cfg, models)
    pipeline = Pipeline(engine, sink, metrics, error_report_rate=10)
    parser = PayloadParser(cfg.sources, cfg.max_payload_bytes)
    known = [Envelope(parser.parse("sensors/pump", b"0.9", 1.0), -i) for i in (1, 2)]  # two readings: established
    flood = [Envelope(parser.parse(f"sensors/flood-{i}", b"0.9", 1.0), i) for i in range(5000)]
    good = [Envelope(parser.parse("sensors/pump", b"0.91", 2.0), -3)]
    pipeline.process(known)
    pump = engine._streams["pump"]
    pipeline.process(flood + good)
    assert engine.sensor_count == CAP
    assert not sink.reports and not sink.settled  # nobody is refused: the flood's ids push each other out
    assert engine._streams["pump"] is pump  # the established sensor kept its context through the flood
    assert [e.token for _, e in sink.verdicts][-1] == -3
    assert registry.get_sample_value("edge_agent_sensors_evicted_total") == 5000 - (CAP - 1)
    # The series of evicted sensors go with them (those evicted in the batch that brought them
    # are summed under _other): the label sets stay at the cap.
    assert label_values(registry, "sensor") == {"pump", "_other", *(f"flood-{i}" for i in range(5000 - (CAP - 1), 5000))}


def test_retained_and_undecodable_topics_are_rejected_not_raised(cfg: AgentConfig, models: dict[str, SensorModel]) -> None:
    metrics = AgentMetrics(CollectorRegistry())
    items: list[Envelope] = []
    transport = MQTTTransport(cfg, PayloadParser(cfg.sources, cfg.max_payload_bytes), metrics, {})
    transport._submit = items.append
    transport._on_message(transport.client, None, message(1, b"sensors/a", b"0.9", 1, True, False))
    transport._on_message(transport.client, None, message(2, b"sensors/\xff", b"0.9", 1, False, False))
    transport._on_message(transport.client, None, message(3, b"sensors/a", b"0.9", 1, False, True))
    assert [getattr(e.item, "reason", None) for e in items] == ["retained", "unknown_topic", None]
    assert isinstance(items[2].item, Reading) and items[2].item.redelivered
    assert [getattr(e.token, "mid", None) for e in items] == [1, 2, 3]
