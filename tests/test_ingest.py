"""Tests for the ingest boundary: MQTT (topic, payload) -> Reading | InvalidReading."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import SourceConfig
from edge_agent.core.domain import InvalidReading, Reading
from edge_agent.mqtt.ingest import MAX_DEPTH, MAX_DETAIL, REASONS, PayloadParser

MAX_BYTES = 1024
JAN_1_2024 = 1704067200.0

SOURCES = [
    SourceConfig(topic="sensors/special", fields=["temp"]),  # shadows sensors/+ for one topic
    SourceConfig(topic="sensors/+"),
    SourceConfig(topic="multi/+", fields=["temperature", "humidity"]),
    SourceConfig(topic="nested/+", fields=["a.b.c", "x"]),
    SourceConfig(topic="zigbee2mqtt/{sensor}", fields=["temperature", "humidity"]),
    SourceConfig(topic="tele/{sensor}/SENSOR", fields=["DS18B20.Temperature"], ts_field="Time"),
    SourceConfig(topic="dev/{sensor}/ms", ts_field="meta.time"),
    SourceConfig(topic="meter/{sensor}", fields=["kwh"], rates=["kwh"]),
]


@pytest.fixture(scope="module")
def parser() -> PayloadParser:
    return PayloadParser(SOURCES, MAX_BYTES)


def _parse(parser: PayloadParser, topic: str, payload: bytes) -> Reading | InvalidReading:
    return parser.parse(topic, payload, received_at=1000.0)


ZIGBEE = b'{"temperature":21.3,"humidity":40,"linkquality":120,"battery":90}'
TASMOTA = b'{"Time":"2024-01-01T00:00:00","DS18B20":{"Id":"01","Temperature":21.4},"TempUnit":"C"}'

# topic, payload, sensor id, values (in order), ts, ts_raw
ACCEPTED: list[tuple[str, bytes, str, dict[str, float], float | None, Any]] = [
    ("sensors/t1", b"21.5", "t1", {"value": 21.5}, None, None),
    ("sensors/t1", b" 21.5\n", "t1", {"value": 21.5}, None, None),
    ("sensors/t1", b"-3e2", "t1", {"value": -300.0}, None, None),
    ("sensors/t1", b"0", "t1", {"value": 0.0}, None, None),
    ("sensors/t1", b"-0.0", "t1", {"value": 0.0}, None, None),
    ("sensors/t1", b"\xef\xbb\xbf21.5", "t1", {"value": 21.5}, None, None),  # UTF-8 BOM
    ("sensors/t1", b"1e308", "t1", {"value": 1e308}, None, None),
    ("sensors/t1", b"12345678901234567890", "t1", {"value": 12345678901234567890.0}, None, None),
    ("sensors/t1", b'{"value": 21.5}', "t1", {"value": 21.5}, None, None),
    ("sensors/t1", b'{"value": 21}', "t1", {"value": 21.0}, None, None),
    ("sensors/t1", b'  {"value": -1.25, "unit": "C", "extra": [1, NaN]}  ', "t1", {"value": -1.25}, None, None),
    ("sensors/living room", b'{"value": 1}', "living room", {"value": 1.0}, None, None),
    ("sensors/t1", b'{"value": 21.5, "ts": 1764241234.5}', "t1", {"value": 21.5}, 1764241234.5, 1764241234.5),
    ("sensors/t1", b'{"value": 1, "ts": 1764241234}', "t1", {"value": 1.0}, 1764241234.0, 1764241234),
    ("sensors/t1", b'{"value": 1, "ts": 1764241234500}', "t1", {"value": 1.0}, 1764241234.5, 1764241234500),
    ("sensors/t1", b'{"value": 1, "ts": 0}', "t1", {"value": 1.0}, 0.0, 0),
    ("sensors/t1", b'{"value": 1, "ts": null}', "t1", {"value": 1.0}, None, None),
    ("sensors/t1", b'{"value": 1, "ts": "2024-01-01T00:00:00Z"}', "t1", {"value": 1.0}, JAN_1_2024, "2024-01-01T00:00:00Z"),
    ("sensors/t1", b'{"value": 1, "ts": "2024-01-01T01:30:00+01:30"}', "t1", {"value": 1.0}, JAN_1_2024, "2024-01-01T01:30:00+01:30"),
    ("sensors/t1", b'{"value": 1, "ts": "2024-01-01T00:00:00"}', "t1", {"value": 1.0}, JAN_1_2024, "2024-01-01T00:00:00"),
    ("sensors/t1", b'{"value": 1, "ts": "2024-01-01T00:00:00.250Z"}', "t1", {"value": 1.0}, JAN_1_2024 + 0.25, "2024-01-01T00:00:00.250Z"),
    ("multi/m1", b'{"humidity": 40, "temperature": 21.3}', "m1", {"temperature": 21.3, "humidity": 40.0}, None, None),
    ("nested/n1", b'{"x": 2, "a": {"b": {"c": 1.5, "d": 0}}}', "n1", {"a.b.c": 1.5, "x": 2.0}, None, None),
    ("nested/n1", b'{"x": 2, "a.b.c": 7}', "n1", {"a.b.c": 7.0, "x": 2.0}, None, None),  # literal dotted key
    ("zigbee2mqtt/kitchen", ZIGBEE, "kitchen", {"temperature": 21.3, "humidity": 40.0}, None, None),
    ("tele/tasmota_1A2B/SENSOR", TASMOTA, "tasmota_1A2B", {"DS18B20.Temperature": 21.4}, JAN_1_2024, "2024-01-01T00:00:00"),
    ("dev/d1/ms", b'{"value": 3, "meta": {"time": 1704067200000}}', "d1", {"value": 3.0}, JAN_1_2024, 1704067200000),
    ("sensors/special", b'{"temp": 5}', "special", {"temp": 5.0}, None, None),
    ("sensors/t1", b" " * (MAX_BYTES - 4) + b"21.5", "t1", {"value": 21.5}, None, None),  # exactly at the limit
]


@pytest.mark.parametrize(("topic", "payload", "sensor", "values", "ts", "ts_raw"), ACCEPTED)
def test_accepted_payloads(
    parser: PayloadParser, topic: str, payload: bytes, sensor: str, values: dict[str, float], ts: float | None, ts_raw: Any
) -> None:
    reading = _parse(parser, topic, payload)
    assert isinstance(reading, Reading), reading
    assert reading.sensor_id == sensor
    assert reading.values == values
    assert list(reading.values) == list(values)  # configured field order
    assert all(type(v) is float for v in reading.values.values())
    assert reading.ts == ts
    assert reading.ts_raw == ts_raw and type(reading.ts_raw) is type(ts_raw)  # unchanged, int stays int
    assert reading.topic == topic
    assert reading.received_at == 1000.0


DEEP = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)

# topic, payload, reason, text the detail must contain
REJECTED: list[tuple[str, bytes, str, str]] = [
    ("sensors/t1", b"1" * (MAX_BYTES + 1), "too_large", str(MAX_BYTES)),
    ("sensors/t1", b"\xff" * (MAX_BYTES + 1), "too_large", "bytes"),  # size checked before decoding
    ("sensors/t1", b"", "empty", "empty"),
    ("sensors/t1", b" \r\n\t ", "empty", "whitespace"),
    ("sensors/t1", b"\xff\xfe21", "not_utf8", "UTF-8"),
    ("sensors/t1", b'{"value": "\xc3\x28"}', "not_utf8", "byte"),
    ("sensors/t1", b"hello", "bad_json", "JSON"),
    ("sensors/t1", b"21.5 C", "bad_json", "JSON"),
    ("sensors/t1", b"1_000", "bad_json", "JSON"),
    ("sensors/t1", "١٢".encode(), "bad_json", "JSON"),  # non-ASCII digits float() would take
    ("sensors/t1", b"0x10", "bad_json", "JSON"),
    ("sensors/t1", b"{", "bad_json", "JSON"),
    ("sensors/t1", b'{"value": 1,}', "bad_json", "JSON"),
    ("sensors/t1", b'{"value": 1} {"value": 2}', "bad_json", "extra data"),
    ("sensors/t1", b"NaN", "not_finite", "nan"),
    ("sensors/t1", b"-nan", "not_finite", "nan"),
    ("sensors/t1", b"Infinity", "not_finite", "inf"),
    ("sensors/t1", b"-Infinity", "not_finite", "inf"),
    ("sensors/t1", b"inf", "not_finite", "inf"),
    ("sensors/t1", b"1e999", "not_finite", "inf"),
    ("sensors/t1", b'{"value": NaN}', "not_finite", "'value'"),
    ("sensors/t1", b'{"value": Infinity}', "not_finite", "'value'"),
    ("sensors/t1", b'{"value": -Infinity}', "not_finite", "'value'"),
    ("sensors/t1", b'{"value": 1e999}', "not_finite", "'value'"),
    ("sensors/t1", b'{"value": -' + b"9" * 400 + b"}", "not_finite", "'value'"),  # int beyond float range
    ("multi/m1", b'{"temperature": 1, "humidity": NaN}', "not_finite", "'humidity'"),
    ("sensors/t1", b"{}", "missing_field", "'value'"),
    ("sensors/t1", b'{"Value": 1}', "missing_field", "'value'"),
    ("multi/m1", b'{"temperature": 21.3}', "missing_field", "'humidity'"),
    ("nested/n1", b'{"x": 1, "a": {"b": {}}}', "missing_field", "'a.b.c'"),
    ("nested/n1", b'{"x": 1, "a": {"b": 5}}', "missing_field", "'a.b.c'"),
    ("nested/n1", b'{"x": 1, "a": [{"b": {"c": 1}}]}', "missing_field", "'a.b.c'"),
    ("nested/n1", b'{"a": {"b": {"c": 1}}}', "missing_field", "'x'"),
    ("tele/t/SENSOR", b'{"Time": "2024-01-01T00:00:00", "SI7021": {"Temperature": 1}}', "missing_field", "DS18B20.Temperature"),
    ("sensors/special", b'{"value": 5}', "missing_field", "'temp'"),  # first match wins, no fall-through
    ("sensors/t1", b'{"value": "21.5"}', "wrong_type", "string"),
    ("sensors/t1", b'{"value": true}', "wrong_type", "boolean"),
    ("sensors/t1", b'{"value": false}', "wrong_type", "boolean"),
    ("sensors/t1", b'{"value": null}', "wrong_type", "null"),
    ("sensors/t1", b'{"value": [21.5]}', "wrong_type", "array"),
    ("sensors/t1", b'{"value": {"v": 21.5}}', "wrong_type", "object"),
    ("sensors/t1", b'"21.5"', "wrong_type", "string"),
    ("sensors/t1", b"true", "wrong_type", "boolean"),
    ("sensors/t1", b"null", "wrong_type", "null"),
    ("sensors/t1", b"[1, 2]", "wrong_type", "array"),
    ("multi/m1", b"21.5", "wrong_type", "temperature, humidity"),
    ("zigbee2mqtt/z", b'{"temperature": 21.3, "humidity": "40"}', "wrong_type", "'humidity'"),
    ("sensors/t1", b'{"value": 1, "ts": "yesterday"}', "bad_timestamp", "'ts'"),
    ("sensors/t1", b'{"value": 1, "ts": "1764241234"}', "bad_timestamp", "ISO-8601"),
    ("sensors/t1", b'{"value": 1, "ts": "2024-13-01T00:00:00Z"}', "bad_timestamp", "ISO-8601"),
    ("sensors/t1", b'{"value": 1, "ts": "' + b"2" * 200 + b'"}', "bad_timestamp", "ISO-8601"),
    ("sensors/t1", b'{"value": 1, "ts": true}', "bad_timestamp", "boolean"),
    ("sensors/t1", b'{"value": 1, "ts": [1]}', "bad_timestamp", "array"),
    ("sensors/t1", b'{"value": 1, "ts": -5}', "bad_timestamp", "range"),
    ("sensors/t1", b'{"value": 1, "ts": 1e20}', "bad_timestamp", "range"),
    ("sensors/t1", b'{"value": 1, "ts": "0001-01-01T00:00:00Z"}', "bad_timestamp", "range"),
    ("sensors/t1", b'{"value": 1, "ts": NaN}', "bad_timestamp", "nan"),
    ("sensors/t1", b'{"value": 1, "ts": 1e999}', "bad_timestamp", "inf"),
    ("tele/t/SENSOR", b'{"Time": "soon", "DS18B20": {"Temperature": 1}}', "bad_timestamp", "'Time'"),
    ("sensors/t1", DEEP, "too_deep", str(MAX_DEPTH)),
    ("sensors/t1", b'{"value": 1, "x": ' + DEEP + b"}", "too_deep", str(MAX_DEPTH)),
    ("sensors/t1", b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep", str(MAX_DEPTH)),
    ("other/t1", b"21.5", "unknown_topic", "other/t1"),
    ("sensors", b"21.5", "unknown_topic", "sensors"),
    ("sensors/t1/extra", b"21.5", "unknown_topic", "sensors/t1/extra"),
    ("$SYS/broker/load", b"21.5", "unknown_topic", "$SYS"),
    ("", b"21.5", "unknown_topic", "topic"),
    ("sensors/", b"21.5", "bad_sensor_id", "empty"),
    ("tele//SENSOR", b"21.5", "bad_sensor_id", "empty"),
    ("sensors/" + "x" * 300, b"21.5", "bad_sensor_id", "longer"),
    ("sensors/a\x00b", b"21.5", "bad_sensor_id", "unprintable"),
    ("sensors/a\nb", b"21.5", "bad_sensor_id", "unprintable"),
    ("sensors/+", b"21.5", "bad_sensor_id", "wildcard"),
    ("sensors/\ud800", b"21.5", "bad_sensor_id", "unprintable"),
    ("meter/m1", b'{"kwh": 5}', "rate_pending", "'kwh'"),  # a counter's first value sets its baseline
]


@pytest.mark.parametrize(("topic", "payload", "reason", "needle"), REJECTED)
def test_rejected_payloads(parser: PayloadParser, topic: str, payload: bytes, reason: str, needle: str) -> None:
    result = _parse(parser, topic, payload)
    assert isinstance(result, InvalidReading), result
    assert result.reason == reason
    assert needle.lower() in result.detail.lower()
    assert len(result.detail) <= MAX_DETAIL
    assert result.topic == topic
    if reason in ("unknown_topic", "bad_sensor_id"):
        assert result.sensor_id is None
    else:  # the source matched, so the sensor is known and reported
        assert result.sensor_id and result.sensor_id in topic.split("/")


def test_every_reason_is_exercised_and_documented() -> None:
    assert {reason for _, _, reason, _ in REJECTED} == REASONS
    assert all(r.isidentifier() and r == r.lower() for r in REASONS)


def test_rejection_names_the_sensor_when_known(parser: PayloadParser) -> None:
    result = _parse(parser, "zigbee2mqtt/kitchen", b'{"temperature": 1}')
    assert isinstance(result, InvalidReading)
    assert (result.reason, result.sensor_id) == ("missing_field", "kitchen")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": "' + b"A" * 900 + b'"}',
        b'{"value": 1, "ts": "' + b"B" * 900 + b'"}',
        b"C" * 1000,
        b'{"value": 1, "x": "' + b"D" * 900,
    ],
)
def test_detail_never_echoes_the_payload(parser: PayloadParser, payload: bytes) -> None:
    result = _parse(parser, "sensors/t1", payload)
    assert isinstance(result, InvalidReading)
    assert len(result.detail) <= MAX_DETAIL
    assert "A" * 40 not in result.detail and "B" * 40 not in result.detail and "C" * 40 not in result.detail


def test_depth_limit_is_exact(parser: PayloadParser) -> None:
    # An object around MAX_DEPTH - 1 arrays is MAX_DEPTH deep: allowed.
    ok = b'{"value": 1, "x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    too_deep = b'{"value": 1, "x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    assert isinstance(_parse(parser, "sensors/t1", ok), Reading)
    assert _parse(parser, "sensors/t1", too_deep).reason == "too_deep"  # type: ignore[union-attr]
    # Many brackets side by side are not deep.
    wide = b'{"value": 1, "x": [' + b",".join([b"[]"] * 200) + b"]}"
    assert isinstance(_parse(parser, "sensors/t1", wide), Reading)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": 1, "s": "' + b"[" * 300 + b'"}',
        b'{"value": 1, "s": "\\"' + b"{" * 300 + b'\\""}',
        b'{"value": 1, "s": "\\\\", "t": "' + b"[" * 300 + b'"}',
    ],
)
def test_brackets_inside_strings_do_not_count_as_depth(parser: PayloadParser, payload: bytes) -> None:
    assert isinstance(_parse(parser, "sensors/t1", payload), Reading)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 2_000_000,
        b"{" * 2_000_000,
        b'{"a":' * 500_000,
        b'"' + b'\\"[' * 600_000,  # unterminated string of escaped quotes: must stay linear
        b'["' + b'\\"' * 600_000 + b"[" * 100,
    ],
)
def test_hostile_payloads_are_rejected_quickly(payload: bytes) -> None:
    parser = PayloadParser([SourceConfig()], 4 * 1024 * 1024)
    start = time.perf_counter()
    result = parser.parse("sensors/t1", payload, 0.0)
    elapsed = time.perf_counter() - start
    assert isinstance(result, InvalidReading)
    assert result.reason in ("too_deep", "bad_json")
    assert elapsed < 2.0  # quadratic behaviour would take minutes here


def test_subscriptions_are_deduplicated_in_order() -> None:
    parser = PayloadParser(
        [SourceConfig(topic="a/+"), SourceConfig(topic="b/{sensor}/x"), SourceConfig(topic="a/+", fields=["v"])], 100
    )
    assert parser.subscriptions == ("a/+", "b/+/x")


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (SourceConfig(topic="a/{device}"), "placeholder"),
        (SourceConfig(topic="a/#/b"), "'#'"),
        (SourceConfig(topic=""), "empty"),
        (SourceConfig(fields=[]), "non-empty"),
        (SourceConfig(fields=["a..b"]), "empty path"),
        (SourceConfig(fields=[".a"]), "empty path"),
        (SourceConfig(fields=[""]), "non-empty"),
        (SourceConfig(fields=["a", "a"]), "duplicates"),
        (SourceConfig(ts_field=""), "ts_field"),
    ],
)
def test_bad_source_config_is_refused_up_front(source: SourceConfig, needle: str) -> None:
    with pytest.raises(ValueError, match="sources\\[1\\]") as info:
        PayloadParser([SourceConfig(), source], 1024)
    assert needle in str(info.value)


def test_bad_payload_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        PayloadParser([SourceConfig()], 0)


def test_payload_may_be_bytearray_or_memoryview(parser: PayloadParser) -> None:
    for payload in (bytearray(b"21.5"), memoryview(b"21.5")):
        reading = _parse(parser, "sensors/t1", payload)  # type: ignore[arg-type]
        assert isinstance(reading, Reading) and reading.values == {"value": 21.5}


# --- properties -------------------------------------------------------------------------

_VALID_TOPICS = st.sampled_from([s.topic.replace("{sensor}", "s1").replace("+", "s2") for s in SOURCES])
_TOPICS = st.one_of(
    _VALID_TOPICS,
    _VALID_TOPICS,
    st.text(max_size=40),
    st.builds(lambda level: f"sensors/{level}", st.text(max_size=10)),
)
_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00+02:00", "21.5", "NaN"]),
)
_JSON_KEYS = st.one_of(
    st.sampled_from(["value", "ts", "temperature", "humidity", "a", "b", "c", "x", "Time", "DS18B20", "Temperature", "meta", "time"]),
    st.text(max_size=5),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_KEYS, inner, max_size=5),
    max_leaves=30,
)
_NUMBERS = st.one_of(st.floats(), st.integers())
_TIMESTAMPS = st.one_of(_NUMBERS, st.datetimes().map(lambda d: d.isoformat()), _JSON_SCALARS)
# (topic, fields scored, object) shaped like each configured source.
_SHAPED = st.one_of(
    st.tuples(
        st.just("sensors/s"), st.just(("value",)),
        st.fixed_dictionaries({"value": _NUMBERS}, optional={"ts": _TIMESTAMPS, "other": _JSON}),
    ),
    st.tuples(
        st.sampled_from(["multi/s", "zigbee2mqtt/s"]), st.just(("temperature", "humidity")),
        st.fixed_dictionaries({"temperature": _NUMBERS, "humidity": _NUMBERS}, optional={"linkquality": _JSON}),
    ),
    st.tuples(
        st.just("nested/s"), st.just(("a.b.c", "x")),
        st.fixed_dictionaries({"x": _NUMBERS, "a": st.fixed_dictionaries({"b": st.fixed_dictionaries({"c": _NUMBERS})})}),
    ),
    st.tuples(
        st.just("tele/s/SENSOR"), st.just(("DS18B20.Temperature",)),
        st.fixed_dictionaries({"DS18B20": st.fixed_dictionaries({"Temperature": _NUMBERS})}, optional={"Time": _TIMESTAMPS}),
    ),
    st.tuples(
        st.just("dev/s/ms"), st.just(("value",)),
        st.fixed_dictionaries({"value": _NUMBERS}, optional={"meta": st.fixed_dictionaries({"time": _TIMESTAMPS})}),
    ),
)


def _dig(obj: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        obj = obj[key]
    return obj


_PAYLOADS = st.one_of(
    st.binary(max_size=MAX_BYTES + 20),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _SHAPED.map(lambda shaped: json.dumps(shaped[2]).encode()),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.floats().map(lambda f: repr(f).encode()),
)


@settings(max_examples=1000, deadline=None)
@given(topic=_TOPICS, payload=_PAYLOADS)
def test_parse_is_total(parser: PayloadParser, topic: str, payload: bytes) -> None:
    result = parser.parse(topic, payload, 1.0)
    assert type(result) in (Reading, InvalidReading)
    assert result.topic == topic
    if isinstance(result, InvalidReading):
        assert result.reason in REASONS
        assert isinstance(result.detail, str) and 0 < len(result.detail) <= MAX_DETAIL
    else:
        assert result.values and all(type(v) is float and math.isfinite(v) for v in result.values.values())
        assert result.ts is None or (type(result.ts) is float and math.isfinite(result.ts))
        assert result.sensor_id and result.sensor_id.isprintable()


@settings(max_examples=500, deadline=None)
@given(_SHAPED)
def test_source_shaped_payloads(parser: PayloadParser, shaped: tuple[str, tuple[str, ...], dict[str, Any]]) -> None:
    topic, fields, obj = shaped
    payload = json.dumps(obj).encode()
    result = parser.parse(topic, payload, 1.0)
    if len(payload) > MAX_BYTES:  # the generator can exceed the size limit: that check comes first
        assert isinstance(result, InvalidReading) and result.reason == "too_large"
        return
    numbers = [_dig(obj, f) for f in fields]
    finite = all(math.isfinite(n) if isinstance(n, float) else abs(n) < 1e300 for n in numbers)
    if isinstance(result, Reading):
        assert result.sensor_id == "s"
        assert result.values == {f: float(n) for f, n in zip(fields, numbers, strict=True)}
        assert list(result.values) == list(fields)
    elif not finite:
        assert result.reason == "not_finite"
    else:  # everything scored was fine, so only the timestamp can be at fault
        assert result.reason == "bad_timestamp", result


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_round_trip(x: float) -> None:
    parser = PayloadParser([SourceConfig()], 1024)
    for payload in (repr(x).encode(), json.dumps(x).encode(), json.dumps({"value": x, "ts": 5}).encode()):
        reading = parser.parse("sensors/t1", payload, 0.0)
        assert isinstance(reading, Reading)
        assert reading.values == {"value": x}


@given(st.integers(min_value=2, max_value=2 * MAX_DEPTH))
def test_depth_property(depth: int) -> None:
    parser = PayloadParser([SourceConfig()], 1024)
    # {"value": 1, "x": [[...]]} nests `depth` levels in total.
    payload = b'{"value": 1, "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    result = parser.parse("sensors/t1", payload, 0.0)
    if depth <= MAX_DEPTH:
        assert isinstance(result, Reading)
    else:
        assert isinstance(result, InvalidReading) and result.reason == "too_deep"


def test_integer_beyond_python_digit_limit_is_rejected_not_raised() -> None:
    # CPython refuses to convert integers of more than 4300 digits (a DoS guard).
    parser = PayloadParser([SourceConfig()], 65536)
    for payload in (b'{"value": 1, "x": ' + b"1" * 5000 + b"}", b"1" * 5000):
        result = parser.parse("sensors/t1", payload, 0.0)
        assert isinstance(result, InvalidReading)
        assert result.reason in ("bad_json", "not_finite")


# --- fleets: optional fields, rates, several sensors a message, ids from topic and payload ---

def _fleet_parser(**source: Any) -> PayloadParser:
    return PayloadParser([SourceConfig(**source)], 4096)


def _all(parser: PayloadParser, topic: str, obj: Any, at: float = 1000.0) -> list[Reading | InvalidReading]:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parser.parse_message(topic, payload, received_at=at)


def test_optional_fields_score_each_device_on_what_it_has_under_an_id_per_field_set() -> None:
    parser = _fleet_parser(topic="zigbee2mqtt/{sensor}", optional_fields=["temperature", "humidity", "power", "current"])
    [climate] = _all(parser, "zigbee2mqtt/bedroom", {"humidity": 51, "linkquality": 90, "battery": 97, "temperature": 20.8})
    [plug] = _all(parser, "zigbee2mqtt/plug", {"state": "ON", "power": 12, "current": 0.05, "linkquality": 80})
    assert isinstance(climate, Reading) and isinstance(plug, Reading)
    assert (climate.sensor_id, climate.values) == ("bedroom@temperature,humidity", {"temperature": 20.8, "humidity": 51.0})
    assert (plug.sensor_id, plug.values) == ("plug@power,current", {"power": 12.0, "current": 0.05})
    [nothing] = _all(parser, "zigbee2mqtt/button", {"action": "single", "battery": 100, "linkquality": 40})
    assert isinstance(nothing, InvalidReading) and nothing.reason == "missing_field" and "temperature" in nothing.detail


def test_partial_updates_merge_with_the_last_known_fields() -> None:
    parser = _fleet_parser(topic="{sensor}/events/rpc", each="switch:*", each_in="params",
                           optional_fields=["apower", "voltage", "current"], ts_field="params.ts")
    full = {"method": "NotifyStatus", "params": {"ts": 10.0, "switch:0": {"id": 0, "apower": 10, "voltage": 230, "current": 0.05}}}
    partial = {"method": "NotifyStatus", "params": {"ts": 11.0, "switch:0": {"id": 0, "apower": 14}}}
    [first] = _all(parser, "plug-1/events/rpc", full)
    [second] = _all(parser, "plug-1/events/rpc", partial)
    assert isinstance(second, Reading) and second.sensor_id == first.sensor_id == "plug-1-switch:0@apower,voltage,current"
    assert second.values == {"apower": 14.0, "voltage": 230.0, "current": 0.05} and second.ts == 11.0
    # A notification about other components only holds nothing to score: acknowledged and ignored.
    assert _all(parser, "plug-1/events/rpc", {"method": "NotifyStatus", "params": {"ts": 12.0, "wifi": {"rssi": -61}}}) == []


def test_several_sensors_in_one_message_get_an_id_each_and_the_last_carries_the_ack() -> None:
    """The transport settles a message with its last item's answer: the one whose reading is scored last."""
    parser = _fleet_parser(topic="tele/{sensor}/SENSOR", each="DS18B20*", fields=["Temperature"], ts_field="Time")
    readings = _all(parser, "tele/ds1820/SENSOR", {"Time": "2024-01-01T01:00:00+01:00",
                                                   "DS18B20-1": {"Id": "01144D2D6EAA", "Temperature": 21.4},
                                                   "DS18B20-2": {"Id": "3C01D607A1B2", "Temperature": 19.1}, "TempUnit": "C"})
    assert all(isinstance(r, Reading) for r in readings), readings
    assert [(r.sensor_id, r.values, r.ts) for r in readings if isinstance(r, Reading)] == [
        ("ds1820-DS18B20-1", {"Temperature": 21.4}, JAN_1_2024),
        ("ds1820-DS18B20-2", {"Temperature": 19.1}, JAN_1_2024),
    ]
    by_probe = _fleet_parser(topic="tele/{sensor}/SENSOR", each="DS18B20*", fields=["Temperature"], sensor_id="{sensor}-{item.Id}")
    assert [r.sensor_id for r in _all(by_probe, "tele/ds1820/SENSOR", {"DS18B20-1": {"Id": "01", "Temperature": 1}})] == ["ds1820-01"]
    # A probe that lost its reading is rejected alone; the ack moves to the good one, answered last.
    mixed = _all(parser, "tele/ds1820/SENSOR", {"DS18B20-1": {"Id": "01", "Temperature": 21.4}, "DS18B20-2": {"Id": "02"}})
    assert [(type(r).__name__, r.sensor_id) for r in mixed] == [
        ("InvalidReading", "ds1820-DS18B20-2"), ("Reading", "ds1820-DS18B20-1")]


def test_a_counter_is_scored_as_its_rate() -> None:
    parser = _fleet_parser(topic="meter/{sensor}", optional_fields=["power", "energy"], rates=["energy"], ts_field="ts")
    [first] = _all(parser, "meter/m", {"power": 100, "energy": 1.0, "ts": 1000})
    assert isinstance(first, InvalidReading) and first.reason == "rate_pending"
    [second] = _all(parser, "meter/m", {"power": 100, "energy": 1.5, "ts": 1010})
    assert isinstance(second, Reading) and second.sensor_id == "m@power,energy_rate"
    assert second.values == {"power": 100.0, "energy_rate": pytest.approx(0.05)}
    [reset] = _all(parser, "meter/m", {"power": 100, "energy": 0.1, "ts": 1020})
    assert isinstance(reset, InvalidReading) and "reset" in reset.detail


def test_sensor_ids_from_topic_levels_and_payload_values() -> None:
    esphome = _fleet_parser(topic="+/sensor/+/state", sensor_id="{level1}.{level3}")
    [r] = _all(esphome, "pump-1/sensor/vibration_rms/state", b"0.93")
    assert isinstance(r, Reading) and (r.sensor_id, r.values) == ("pump-1.vibration_rms", {"value": 0.93})
    [bad] = _all(esphome, "pump-1/sensor/vibration_rms/state", b"nan")
    assert isinstance(bad, InvalidReading) and (bad.reason, bad.sensor_id) == ("not_finite", "pump-1.vibration_rms")
    by_payload = _fleet_parser(topic="gw/+", fields=["t"], sensor_id="{payload.dev}")
    [p] = _all(by_payload, "gw/x", {"dev": "probe-9", "t": 1})
    assert isinstance(p, Reading) and p.sensor_id == "probe-9"
    [missing] = _all(by_payload, "gw/x", {"t": 1})
    assert isinstance(missing, InvalidReading) and missing.reason == "bad_sensor_id" and "{payload.dev}" in missing.detail
    [slash] = _all(by_payload, "gw/x", {"dev": "a/b", "t": 1})
    assert isinstance(slash, InvalidReading) and slash.reason == "bad_sensor_id"


def test_overlapping_sources_subscribe_once_and_the_first_source_scores() -> None:
    parser = PayloadParser([SourceConfig(topic="zigbee2mqtt/{sensor}", fields=["temperature"]), SourceConfig(topic="zigbee2mqtt/#")], 1024)
    assert parser.subscriptions == ("zigbee2mqtt/#",)
    [r] = parser.parse_message("zigbee2mqtt/bedroom", b'{"temperature": 20}', 0.0)
    assert isinstance(r, Reading) and r.sensor_id == "bedroom"
    partly = PayloadParser([SourceConfig(topic="a/+/c"), SourceConfig(topic="a/b/+")], 1024)
    assert partly.subscriptions == ("a/+/+",)
    assert partly.parse_message("a/x/y", b"1", 0.0) == []  # brought by the merged filter, taken by no source


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (SourceConfig(optional_fields=["a"], rates=["b"]), "rates"),
        (SourceConfig(fields=["a"], optional_fields=["a"]), "twice"),
        (SourceConfig(each_in="params"), "each"),
        (SourceConfig(sensor_id="{nope}"), "placeholder"),
        (SourceConfig(sensor_id="a/{sensor}"), "'/'"),
    ],
)
def test_bad_fleet_source_is_refused_up_front(source: SourceConfig, needle: str) -> None:
    with pytest.raises(ValueError, match="sources\\[0\\]") as info:
        PayloadParser([source], 1024)
    assert needle in str(info.value)


def test_sequence_gaps_are_reported_resets_and_redeliveries_are_not() -> None:
    parser = _fleet_parser(topic="sensors/+", seq_field="seq")
    gaps: list[tuple[str, int, int, int]] = []
    parser.on_gap = lambda *gap: gaps.append(gap)
    for seq in (1, 2, 5, 6, 6, 1, 2):
        [r] = parser.parse_message("sensors/p", json.dumps({"value": 1, "seq": seq}).encode(), 0.0)
        assert isinstance(r, Reading) and r.sensor_id == "p"
    assert parser.parse_message("sensors/p", b'{"value": 1, "seq": 1}', 0.0, redelivered=True)  # older, sent again
    [r] = parser.parse_message("sensors/p", b'{"value": 1, "seq": 4}', 0.0)
    assert gaps == [("p", 2, 2, 5), ("p", 1, 2, 4)]


_FLEET_SOURCES = [
    SourceConfig(topic="z/{sensor}", optional_fields=["t", "h", "e"], rates=["e"], seq_field="seq"),
    SourceConfig(topic="tele/{sensor}/SENSOR", each="D*", fields=["Temperature"], sensor_id="{sensor}-{item.Id}-{payload.Time}"),
    SourceConfig(topic="+/events/rpc", each="*:*", each_in="params", optional_fields=["apower", "a.total"], sensor_id="{level1}-{key}"),
    SourceConfig(topic="+/sensor/+/state", sensor_id="{level1}.{level3}.{level9}", exclude=["+/sensor/uptime/state"]),
]
_FLEET_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["t", "h", "e", "seq", "Id", "Time", "D1", "D2", "params", "x:0",
                                                                "apower", "a", "total", "Temperature"]), children, max_size=5)),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(
    topic=st.sampled_from(["z/a", "z/b", "tele/t/SENSOR", "dev/events/rpc", "n/sensor/x/state", "n/sensor/uptime/state", "q"]),
    payloads=st.lists(st.one_of(_FLEET_JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)), max_size=4),
    redelivered=st.booleans(),
)
def test_fleet_parsing_is_total(topic: str, payloads: list[bytes], redelivered: bool) -> None:
    parser = PayloadParser(_FLEET_SOURCES, 4096, max_tracked=2)
    parser.on_gap = lambda *gap: None
    for payload in payloads:
        items = parser.parse_message(topic, payload, 1000.0, redelivered=redelivered)
        # The carrier of the acknowledgement comes last: a reading if the message has one.
        assert not items or isinstance(items[-1], Reading) or not any(isinstance(i, Reading) for i in items)
        for item in items:
            if isinstance(item, InvalidReading):
                assert item.reason in REASONS and len(item.detail) <= MAX_DETAIL
            else:
                assert item.values and all(math.isfinite(v) for v in item.values.values())
                assert "/" not in item.sensor_id and "+" not in item.sensor_id


@pytest.mark.parametrize("value", ["0.95", True, None, [1], {"a": 1}, 10**400])
def test_mqtt_and_http_reject_a_value_in_the_same_words(parser: PayloadParser, value: Any) -> None:
    # One check for both ways in: the error a sensor gets on the errors topic is the one a
    # /predict caller gets in its 400.
    from edge_agent.http.api import parse_predict_body
    from edge_agent.http.server import HttpError

    payload = json.dumps({"value": value}).encode()
    result = _parse(parser, "sensors/s1", payload)
    assert isinstance(result, InvalidReading)
    with pytest.raises(HttpError) as answer:
        parse_predict_body(payload)
    assert answer.value.status == 400
    assert answer.value.message == result.detail
