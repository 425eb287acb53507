"""Turn one MQTT message (topic, payload bytes) into a Reading or an InvalidReading.

Pure and total: :meth:`PayloadParser.parse` never raises, whatever the bytes or topic.

Accepted payloads (UTF-8, at most ``max_payload_bytes``):

* a bare number (``21.5``, `` 21.5\\n``, ``-3e2``) or a JSON number, for sources without
  ``fields``; it becomes ``{"value": x}``;
* a JSON object holding ``value`` (sources without ``fields``) or every configured field.
  A field is a key or a dotted path into nested objects (``DS18B20.Temperature``); a key
  that literally contains the dots is tried first. Other keys are ignored.

Values must be JSON numbers: booleans, ``null`` and numeric strings such as ``"21.5"`` are
rejected as ``wrong_type`` on purpose, so that a device sending text is noticed instead of
silently coerced. NaN/Infinity (and numbers overflowing to infinity, like ``1e999``) are
``not_finite`` when they are in a scored field; unscored keys are not inspected.

The optional timestamp (``source.ts_field``, a key or dotted path) is epoch seconds
(int or float; values over 1e11 are taken as epoch milliseconds) or an ISO-8601 string
(``Z`` or an offset; naive means UTC). It must land in [0, 1e11) epoch seconds.
``null`` counts as absent. ``Reading.ts`` is epoch seconds, ``Reading.ts_raw`` the value
exactly as received.

Every rejection carries a ``reason`` from :data:`REASONS` (a fixed set, used as a metric
label) and a short ``detail`` (at most :data:`MAX_DETAIL` characters; payload text is
never echoed beyond a short preview).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from edge_agent.config import SourceConfig
from edge_agent.core.domain import InvalidReading, Reading
from edge_agent.core.jsonvalues import NOT_FINITE, WRONG_TYPE, Rejected, describe, finite_number
from edge_agent.core.timestamps import BadTimestamp, epoch_seconds
from edge_agent.mqtt.topics import SourcePattern, minimal_subscriptions, sensor_id_parts, topic_matches

TOO_LARGE = "too_large"  # payload over max_payload_bytes (checked before decoding)
EMPTY = "empty"  # no bytes, or only whitespace
NOT_UTF8 = "not_utf8"  # payload bytes are not UTF-8
BAD_JSON = "bad_json"  # neither a bare number nor well-formed JSON
MISSING_FIELD = "missing_field"  # a configured field (or "value") is absent
BAD_TIMESTAMP = "bad_timestamp"  # the ts field is not a usable timestamp
TOO_DEEP = "too_deep"  # JSON nested deeper than MAX_DEPTH (refused before decoding)
UNKNOWN_TOPIC = "unknown_topic"  # no source matches the topic
BAD_SENSOR_ID = "bad_sensor_id"  # sensor level empty, too long, or with unprintable/wildcard characters
RATE_PENDING = "rate_pending"  # a counter's first value (or one after a reset): its rate needs the next reading

#: Every reason an InvalidReading from this module can carry.
REASONS: frozenset[str] = frozenset(
    {
        TOO_LARGE, EMPTY, NOT_UTF8, BAD_JSON, NOT_FINITE, MISSING_FIELD, WRONG_TYPE,
        BAD_TIMESTAMP, TOO_DEEP, UNKNOWN_TOPIC, BAD_SENSOR_ID, RATE_PENDING,
    }
)

#: Deepest JSON nesting (objects plus arrays) accepted.
MAX_DEPTH = 32
#: Longest sensor id accepted (ids end up in topics, metric labels and logs).
MAX_SENSOR_ID_LENGTH = 256
#: Sensors (and counters) whose last values a parser remembers, at most (least recent forgotten first).
MAX_TRACKED = 10_000
#: Between a device's id and its field set in the sensor id of a source with optional_fields.
FIELD_SET_MARK = "@"
#: Appended to a counter's name for its rate.
RATE_SUFFIX = "_rate"
#: Longest detail message.
MAX_DETAIL = 100

# Used only for payloads with more than MAX_DEPTH brackets. The string pattern is written
# so that it always matches (an unterminated string runs to the end), which keeps it linear
# on hostile input such as thousands of escaped quotes.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"{": 1, "[": 1, "}": -1, "]": -1}
_MISSING = object()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` nests objects/arrays deeper than ``limit``, without decoding it."""
    # Fast path: fewer brackets than the limit cannot nest deeper than it.
    if text.count("{") + text.count("[") <= limit:
        return False
    if '"' in text:
        text = _JSON_STRING.sub("", text)
    brackets = _NOT_BRACKET.sub("", text)
    if not brackets:
        return False
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) > limit


@dataclass(frozen=True, slots=True)
class _Field:
    """A compiled field reference: the configured name and its dotted path."""

    name: str
    path: tuple[str, ...]

    @classmethod
    def compile(cls, name: object, what: str) -> _Field:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} must be a non-empty string, got {name!r}")
        path = tuple(name.split("."))
        if "" in path:
            raise ValueError(f"{what} {name!r} has an empty path component")
        return cls(name, path)

    def lookup(self, obj: dict[str, Any]) -> Any:
        """The value at this field in ``obj``, or ``_MISSING``."""
        value = obj.get(self.name, _MISSING)
        if value is not _MISSING or len(self.path) == 1:
            return value
        node: Any = obj
        for key in self.path:
            if type(node) is not dict:
                return _MISSING
            node = node.get(key, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node


@dataclass(frozen=True, slots=True)
class _Fleet:
    """A source's fleet parts: optional fields, counters scored as rates, sensors per key, id template."""

    optional: tuple[_Field, ...] = ()
    rates: frozenset[str] = frozenset()
    each: str | None = None  # fnmatch pattern for payload keys holding one sensor each
    each_in: _Field | None = None  # where those keys are (None: the payload itself)
    id_parts: tuple[str, ...] | None = None  # sensor id template: literal, name, literal, ...
    exclude: tuple[str, ...] = ()  # topic filters whose messages this source skips
    seq: _Field | None = None  # a per-sensor sequence number: gaps are evidence of drops


@dataclass(frozen=True, slots=True)
class _Source:
    """A compiled source: its topic pattern, scored fields and timestamp field."""

    pattern: SourcePattern
    fields: tuple[_Field, ...]
    univariate: bool  # no configured fields: bare numbers and {"value": x} accepted
    ts: _Field
    fleet: _Fleet | None = None  # None: one sensor per message, every field required


_VALUE_FIELD = _Field("value", ("value",))


def _compile_source(index: int, source: SourceConfig) -> _Source:
    where = f"sources[{index}]"
    try:
        pattern = SourcePattern(source.topic)
    except ValueError as exc:
        raise ValueError(f"{where}.topic: {exc}") from None
    ts = _Field.compile(source.ts_field, f"{where}.ts_field")
    fleet = _compile_fleet(where, source)
    if source.fields is None:
        if fleet is not None and fleet.optional:
            return _Source(pattern, (), False, ts, fleet)
        return _Source(pattern, (_VALUE_FIELD,), True, ts, fleet)
    if isinstance(source.fields, str) or not source.fields:
        raise ValueError(f"{where}.fields must be a non-empty list (omit it for a single value)")
    fields = tuple(_Field.compile(name, f"{where}.fields entry") for name in source.fields)
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}.fields has duplicates: {names}")
    return _Source(pattern, fields, False, ts, fleet)


def _compile_fleet(where: str, source: SourceConfig) -> _Fleet | None:
    optional_names = getattr(source, "optional_fields", None)
    rates = getattr(source, "rates", None)
    each = getattr(source, "each", None)
    each_in = getattr(source, "each_in", None)
    template = getattr(source, "sensor_id", None)
    exclude = tuple(getattr(source, "exclude", None) or ())
    seq = getattr(source, "seq_field", None)
    if optional_names is None and not rates and each is None and each_in is None and template is None and not exclude and seq is None:
        return None
    optional = tuple(_Field.compile(name, f"{where}.optional_fields entry") for name in optional_names or ())
    known = {f.name for f in optional} | set(source.fields or ())
    if len(known) != len(optional) + len(source.fields or ()):
        raise ValueError(f"{where}: a field is listed twice in fields and optional_fields")
    unknown = [name for name in rates or () if name not in known]
    if unknown:
        raise ValueError(f"{where}.rates names fields the source does not read: {unknown}")
    if each_in is not None and each is None:
        raise ValueError(f"{where}.each_in needs each")
    if template is None:
        template = "{sensor}-{key}" if each is not None else "{sensor}"
    try:
        parts = tuple(sensor_id_parts(template))
    except ValueError as exc:
        raise ValueError(f"{where}.sensor_id: {exc}") from None
    return _Fleet(
        optional=optional,
        rates=frozenset(rates or ()),
        each=each,
        each_in=_Field.compile(each_in, f"{where}.each_in") if each_in is not None else None,
        id_parts=parts,
        exclude=exclude,
        seq=_Field.compile(seq, f"{where}.seq_field") if seq is not None else None,
    )


def _timestamp(raw: Any, name: str) -> float:
    """Epoch seconds for a ts value (epoch s/ms number or ISO-8601 string), by the rule replay uses too."""
    kind = type(raw)
    if kind is not int and kind is not float and kind is not str:  # bool too: type(True) is bool
        raise Rejected(BAD_TIMESTAMP, f"{name!r} must be epoch seconds or ISO-8601, got {describe(raw)}")
    try:
        return epoch_seconds(raw, name)
    except BadTimestamp as e:
        raise Rejected(BAD_TIMESTAMP, str(e)) from None


def _reject_sensor_id(sensor_id: str, topic: str) -> None:
    """Raise the rejection explaining why ``sensor_id`` is unusable (no-op if it is fine)."""
    if not sensor_id:
        raise Rejected(BAD_SENSOR_ID, f"empty sensor level in topic {topic[:60]!r}")
    if len(sensor_id) > MAX_SENSOR_ID_LENGTH:
        raise Rejected(BAD_SENSOR_ID, f"sensor id longer than {MAX_SENSOR_ID_LENGTH} characters")
    # Wildcards would make every output topic for this sensor unpublishable; unprintable
    # characters (controls, lone surrogates) break logs, labels and UTF-8 encoding.
    if "+" in sensor_id or "#" in sensor_id or not sensor_id.isprintable():
        raise Rejected(BAD_SENSOR_ID, f"sensor id has wildcard or unprintable characters: {sensor_id[:30]!r}")


class PayloadParser:
    """Parses messages for a fixed list of sources; everything is compiled once here.

    Raises ``ValueError`` when a source's topic, fields or ts_field is unusable.

    Sources with fleet keys (``optional_fields``, ``rates``, ``each``, ``sensor_id``) keep a
    little state per sensor: the last known value of each field (partial updates are merged
    with it) and the last value of each counter (to score its rate). :meth:`parse_message`
    is therefore called from one thread (the transport's network thread).
    """

    def __init__(self, sources: Sequence[SourceConfig], max_payload_bytes: int, max_tracked: int = MAX_TRACKED) -> None:
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self._sources: tuple[_Source, ...] = tuple(_compile_source(i, s) for i, s in enumerate(sources))
        self._max_payload_bytes = max_payload_bytes
        self._decoder = json.JSONDecoder()
        # No two overlapping filters, in source order: what the transport subscribes to.
        # (A broker sends a message once per matching subscription; one filter each avoids copies.)
        self.subscriptions: tuple[str, ...] = minimal_subscriptions([s.pattern.subscription for s in self._sources])
        self._max_tracked = max_tracked
        self._known: OrderedDict[str, dict[str, float]] = OrderedDict()  # sensor -> last known values
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()  # (sensor, field) -> last reading
        self._seq: OrderedDict[str, int] = OrderedDict()  # sensor -> last sequence number
        #: Called with (sensor id, readings missing, last seq, this seq) when a sequence has a gap.
        self.on_gap: Callable[[str, int, int, int], None] | None = None

    def parse(self, topic: str, payload: bytes, received_at: float, redelivered: bool = False) -> Reading | InvalidReading:
        """The one Reading carried by a message of a one-sensor source, or why there is none. Never raises."""
        items = self.parse_message(topic, payload, received_at, redelivered)
        if items:
            return items[0]
        return InvalidReading(UNKNOWN_TOPIC, "no reading in this message", topic, None)

    def parse_message(
        self, topic: str, payload: bytes, received_at: float, redelivered: bool = False
    ) -> list[Reading | InvalidReading]:
        """Every reading one message carries (in payload order), or why there is none. Never raises.

        The last item is the one whose answer settles the message (the transport gives it the
        message's token): the pipeline answers items in order, so the message is
        acknowledged once all of its readings are. An empty list means the
        message holds nothing to score (no key matched ``each``, or a topic that only a
        merged subscription filter brought): acknowledge it and move on.
        """
        sensor_id: str | None = None
        try:
            source, sensor_id = self._source_for(topic)
            if source.fleet is not None:
                return self._fleet_readings(source, sensor_id, topic, payload, received_at, redelivered)
            values, ts, ts_raw = self._decode(source, payload)
        except Rejected as rejected:
            if rejected.reason == UNKNOWN_TOPIC and type(topic) is str and any(
                topic_matches(f, topic) for f in self.subscriptions
            ):
                return []
            return [InvalidReading(
                reason=rejected.reason, detail=_clip(rejected.detail),
                topic=topic, sensor_id=sensor_id,
            )]
        return [Reading(
            sensor_id=sensor_id, values=values, received_at=received_at,
            ts=ts, ts_raw=ts_raw, topic=topic, redelivered=redelivered,
        )]

    def _source_for(self, topic: str) -> tuple[_Source, str]:
        if type(topic) is not str:
            raise Rejected(UNKNOWN_TOPIC, f"topic must be a string, got {type(topic).__name__}")
        for source in self._sources:
            sensor_id = source.pattern.sensor_id(topic)
            if sensor_id is not None:
                if source.fleet is not None:
                    if any(topic_matches(f, topic) for f in source.fleet.exclude):
                        continue
                    return source, sensor_id  # the id is made and checked per sensor in the message
                # Common case first, checked inline; the helper explains failures.
                if not (
                    0 < len(sensor_id) <= MAX_SENSOR_ID_LENGTH
                    and sensor_id.isprintable()
                    and "+" not in sensor_id
                    and "#" not in sensor_id
                ):
                    _reject_sensor_id(sensor_id, topic)
                return source, sensor_id
        raise Rejected(UNKNOWN_TOPIC, f"no source matches topic {topic[:70]!r}")

    def _text(self, payload: bytes) -> str:
        """The payload as stripped text, or a rejection (too large, not UTF-8, empty)."""
        if type(payload) is not bytes:
            if not isinstance(payload, (bytearray, memoryview)):
                raise Rejected(WRONG_TYPE, f"payload must be bytes, got {type(payload).__name__}")
            payload = bytes(payload)
        size = len(payload)
        if size > self._max_payload_bytes:
            raise Rejected(TOO_LARGE, f"payload is {size} bytes, limit is {self._max_payload_bytes}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected(NOT_UTF8, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        text = text.strip()
        if text[:1] == "\ufeff":  # tolerate a UTF-8 byte-order mark
            text = text[1:].strip()
        if not text:
            raise Rejected(EMPTY, "payload is empty" if size == 0 else "payload is only whitespace")
        return text

    def _decode(self, source: _Source, payload: bytes) -> tuple[dict[str, float], float | None, Any]:
        """Values, ts and raw ts of one payload for ``source``."""
        text = self._text(payload)
        if text[0] != "{":
            return self._decode_scalar(source, text)
        obj = _loads(self._decoder, text)
        if type(obj) is not dict:  # pragma: no cover - '{' always decodes to an object
            raise Rejected(WRONG_TYPE, f"payload must be a number or JSON object, got {describe(obj)}")

        values: dict[str, float] = {}
        for f in source.fields:
            value = f.lookup(obj)
            # Fast path: a finite float (inf - inf and nan - nan are nan, not 0).
            if type(value) is float and value - value == 0.0:
                values[f.name] = value
            elif value is _MISSING:
                raise Rejected(MISSING_FIELD, f"field {f.name!r} is missing")
            else:
                values[f.name] = finite_number(value, f.name)
        ts, ts_raw = _message_ts(source, obj)
        return values, ts, ts_raw

    # -- fleet sources ---------------------------------------------------------------------

    def _fleet_readings(
        self, source: _Source, level: str, topic: str, payload: bytes, received_at: float, redelivered: bool
    ) -> list[Reading | InvalidReading]:
        fleet = source.fleet
        assert fleet is not None
        text = self._text(payload)
        obj: dict[str, Any] | None = None
        scalar: dict[str, float] | None = None
        ts: float | None = None
        ts_raw: Any = None
        items: list[tuple[str | None, Any]]
        if text[0] != "{":
            try:
                scalar = self._decode_scalar(source, text)[0]
            except Rejected as rejected:
                return [InvalidReading(rejected.reason, _clip(rejected.detail), topic,
                                       _render_id(fleet, level, topic, None, None, None))]
            items = [(None, None)]
        else:
            obj = _loads(self._decoder, text)
            ts, ts_raw = _message_ts(source, obj)
            if fleet.each is None:
                items = [(None, obj)]
            else:
                container = obj if fleet.each_in is None else fleet.each_in.lookup(obj)
                items = [
                    (key, item) for key, item in container.items()
                    if type(item) is dict and fnmatch.fnmatchcase(key, fleet.each)
                ] if type(container) is dict else []
        seq = fleet.seq.lookup(obj) if fleet.seq is not None and obj is not None else None
        out: list[Reading | InvalidReading] = []
        for key, item in items:
            sensor: str | None = None
            try:
                sensor = _render_id(fleet, level, topic, key, item, obj)
                values = scalar if scalar is not None else self._fleet_values(source, item)
                if type(seq) is int:
                    self._sequence(sensor, seq, redelivered)
                values = self._track(source, sensor, values, ts if ts is not None else received_at)
                if fleet.optional:
                    sensor = f"{sensor}{FIELD_SET_MARK}{','.join(values)}"
                _check_fleet_id(sensor)
            except Rejected as rejected:
                out.append(InvalidReading(rejected.reason, _clip(rejected.detail), topic, sensor))
                continue
            out.append(Reading(
                sensor_id=sensor, values=values, received_at=received_at,
                ts=ts, ts_raw=ts_raw, topic=topic, redelivered=redelivered,
            ))
        if not out:
            return out
        # The acknowledgement rides on the last item (rejections are answered at once, readings
        # in order after scoring): the message is acknowledged when all are answered.
        last = max((i for i, r in enumerate(out) if isinstance(r, Reading)), default=len(out) - 1)
        if last != len(out) - 1:  # rejections after it are answered first: move the carrier to the end
            out.append(out.pop(last))
        return out

    def _fleet_values(self, source: _Source, item: dict[str, Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        for f in source.fields:
            value = f.lookup(item)
            if value is _MISSING:
                raise Rejected(MISSING_FIELD, f"field {f.name!r} is missing")
            values[f.name] = finite_number(value, f.name)
        assert source.fleet is not None
        for f in source.fleet.optional:
            value = f.lookup(item)
            if value is not _MISSING and value is not None:  # null: the device has no value now
                values[f.name] = finite_number(value, f.name)
        if not values:
            names = ", ".join(f.name for f in source.fleet.optional)
            raise Rejected(MISSING_FIELD, f"none of the fields {names[:60]} is present")
        return values

    def _track(self, source: _Source, sensor: str, values: dict[str, float], t: float) -> dict[str, float]:
        """Counters turned into rates, then (with optional fields) merged with the last known values."""
        fleet = source.fleet
        assert fleet is not None
        pending: str | None = None
        for name in fleet.rates.intersection(values):
            value = values.pop(name)
            key = (sensor, name)
            before = self._counters.get(key)
            if before is None or value < before.value:
                self._remember(self._counters, key, _Counter(value, t, None))
                why = "has no earlier value yet" if before is None else "went down (a reset)"
                pending = f"counter {name!r} {why}: its rate is scored from the next reading on"
                continue
            if t > before.t:
                rate = (value - before.value) / (t - before.t)
                self._remember(self._counters, key, _Counter(value, t, rate))
            elif before.rate is not None:  # the same moment again (a redelivery, a second message that second)
                rate = before.rate
            else:
                pending = f"counter {name!r}: no time has passed since its first value"
                continue
            values[f"{name}{RATE_SUFFIX}"] = rate
        if fleet.optional:
            # Merged even when a counter holds the reading back: a partial update that follows builds on it.
            merged = {**self._known.get(sensor, {}), **values}
            self._remember(self._known, sensor, merged)
            values = {name: merged[name] for name in _scored_names(source) if name in merged}
        if pending is not None:
            raise Rejected(RATE_PENDING, pending)
        return values

    def _sequence(self, sensor: str, seq: int, redelivered: bool) -> None:
        """Note a sensor's sequence number; report a gap (readings that never arrived)."""
        last = self._seq.get(sensor)
        if last is not None and seq <= last and redelivered:
            return  # a reading the broker sent again
        self._remember(self._seq, sensor, seq)  # lower than before: the device restarted its count
        if last is not None and seq > last + 1 and self.on_gap is not None:
            self.on_gap(sensor, seq - last - 1, last, seq)

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max_tracked:
            table.popitem(last=False)

    def _decode_scalar(self, source: _Source, text: str) -> tuple[dict[str, float], None, None]:
        """A payload that is not a JSON object: a bare/JSON number, or a wrong shape."""
        number: float | None = None
        # float() alone would also take '1_000' and non-ASCII digits; those are not numbers here.
        if text.isascii() and "_" not in text:
            try:
                number = float(text)
            except ValueError:
                number = None
        if number is None:
            value = _loads(self._decoder, text)
            if type(value) is int or type(value) is float:  # not reached today; float() takes every JSON number
                number = finite_number(value, "value")
            else:
                raise Rejected(WRONG_TYPE, f"payload must be a number or JSON object, got {describe(value)}")
        if not source.univariate:
            names = ", ".join(f.name for f in source.fields)
            raise Rejected(WRONG_TYPE, f"expected a JSON object with fields {names}, got a bare number")
        if not math.isfinite(number):
            raise Rejected(NOT_FINITE, f"value is {number!r}")
        return {"value": number}, None, None


def _loads(decoder: json.JSONDecoder, text: str) -> Any:
    """Decode stripped JSON ``text``, depth checked first, every failure a rejection."""
    if _json_depth_exceeds(text, MAX_DEPTH):
        raise Rejected(TOO_DEEP, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        # raw_decode skips json.loads' per-call checks and whitespace regexes (about half
        # its cost on small payloads); ``text`` is already stripped, so only trailing
        # garbage needs checking.
        value, end = decoder.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise Rejected(BAD_JSON, f"not a number or valid JSON: {exc.msg} (char {exc.pos})") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise Rejected(TOO_DEEP, "JSON nested too deeply") from None
    except ValueError as exc:
        # e.g. integers over Python's int-to-str digit limit.
        raise Rejected(BAD_JSON, f"JSON not decodable: {str(exc)[:60]}") from None
    if end != len(text):
        raise Rejected(BAD_JSON, f"not a number or valid JSON: extra data at char {end}")
    return value


@dataclass(frozen=True, slots=True)
class _Counter:
    """A counter's last reading: its value, when, and the rate it gave (None: not yet known)."""

    value: float
    t: float
    rate: float | None


def _message_ts(source: _Source, obj: dict[str, Any]) -> tuple[float | None, Any]:
    ts_raw = source.ts.lookup(obj)
    if ts_raw is _MISSING or ts_raw is None:
        return None, None
    return _timestamp(ts_raw, source.ts.name), ts_raw


def _scored_names(source: _Source) -> list[str]:
    """The names a source's values may carry, in config order (a rate under its own name)."""
    assert source.fleet is not None
    rates = source.fleet.rates
    return [f"{f.name}{RATE_SUFFIX}" if f.name in rates else f.name for f in (*source.fields, *source.fleet.optional)]


def _render_id(fleet: _Fleet, level: str, topic: str, key: str | None, item: Any, obj: Any) -> str:
    """The sensor id a fleet source's template gives this sensor of this message."""
    parts = fleet.id_parts
    assert parts is not None
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name = parts[i]
        value: Any
        if name == "sensor":
            value = level
        elif name == "key":
            value = key
        elif name.startswith("level"):
            levels = topic.split("/")
            n = int(name[5:])
            value = levels[n - 1] if n <= len(levels) else _MISSING
        else:
            where, _, path = name.partition(".")
            scope = item if where == "item" else obj
            value = _Field(path, tuple(path.split("."))).lookup(scope) if type(scope) is dict else _MISSING
        if type(value) is int:
            value = str(value)
        if type(value) is not str or not value:
            shown = "missing" if value is _MISSING or value is None else describe(value)
            raise Rejected(BAD_SENSOR_ID, f"sensor_id placeholder {{{name}}} is {shown} (a non-empty string or integer is needed)")
        out += [value, parts[i + 1]]
    return "".join(out)


def _check_fleet_id(sensor_id: str) -> None:
    if "/" in sensor_id:
        raise Rejected(BAD_SENSOR_ID, f"sensor id has a '/' (it becomes a topic level): {sensor_id[:30]!r}")
    if not (0 < len(sensor_id) <= MAX_SENSOR_ID_LENGTH and sensor_id.isprintable() and "+" not in sensor_id and "#" not in sensor_id):
        _reject_sensor_id(sensor_id, "")
