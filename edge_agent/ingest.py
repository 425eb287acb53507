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

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import accumulate
from typing import Any

from edge_agent.config import SourceConfig
from edge_agent.domain import InvalidReading, Reading
from edge_agent.topics import SourcePattern

TOO_LARGE = "too_large"  # payload over max_payload_bytes (checked before decoding)
EMPTY = "empty"  # no bytes, or only whitespace
NOT_UTF8 = "not_utf8"  # payload bytes are not UTF-8
BAD_JSON = "bad_json"  # neither a bare number nor well-formed JSON
NOT_FINITE = "not_finite"  # a scored value is NaN or +-Infinity (or overflows to it)
MISSING_FIELD = "missing_field"  # a configured field (or "value") is absent
WRONG_TYPE = "wrong_type"  # a scored value is not a JSON number, or the payload has the wrong shape
BAD_TIMESTAMP = "bad_timestamp"  # the ts field is not a usable timestamp
TOO_DEEP = "too_deep"  # JSON nested deeper than MAX_DEPTH (refused before decoding)
UNKNOWN_TOPIC = "unknown_topic"  # no source matches the topic
BAD_SENSOR_ID = "bad_sensor_id"  # sensor level empty, too long, or with unprintable/wildcard characters

#: Every reason an InvalidReading from this module can carry.
REASONS: frozenset[str] = frozenset(
    {
        TOO_LARGE, EMPTY, NOT_UTF8, BAD_JSON, NOT_FINITE, MISSING_FIELD, WRONG_TYPE,
        BAD_TIMESTAMP, TOO_DEEP, UNKNOWN_TOPIC, BAD_SENSOR_ID,
    }
)

#: Deepest JSON nesting (objects plus arrays) accepted.
MAX_DEPTH = 32
#: Longest sensor id accepted (ids end up in topics, metric labels and logs).
MAX_SENSOR_ID_LENGTH = 256
#: Longest detail message.
MAX_DETAIL = 100
#: Timestamps over this are epoch milliseconds; seconds must stay under it (year ~5138).
_MS_THRESHOLD = 1e11
#: Longest ISO-8601 timestamp string looked at.
_MAX_ISO_LENGTH = 64

# Used only for payloads with more than MAX_DEPTH brackets. The string pattern is written
# so that it always matches (an unterminated string runs to the end), which keeps it linear
# on hostile input such as thousands of escaped quotes.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"{": 1, "[": 1, "}": -1, "]": -1}
_MISSING = object()


class _Rejected(Exception):
    """Internal: aborts parsing of one message with a reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _describe(value: Any) -> str:
    """A short description of a JSON value: its JSON type and, for scalars, a preview."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"string {value[:24]!r}"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return f"{type(value).__name__} {str(value)[:24]}"


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
class _Source:
    """A compiled source: its topic pattern, scored fields and timestamp field."""

    pattern: SourcePattern
    fields: tuple[_Field, ...]
    univariate: bool  # no configured fields: bare numbers and {"value": x} accepted
    ts: _Field


_VALUE_FIELD = _Field("value", ("value",))


def _compile_source(index: int, source: SourceConfig) -> _Source:
    where = f"sources[{index}]"
    try:
        pattern = SourcePattern(source.topic)
    except ValueError as exc:
        raise ValueError(f"{where}.topic: {exc}") from None
    ts = _Field.compile(source.ts_field, f"{where}.ts_field")
    if source.fields is None:
        return _Source(pattern, (_VALUE_FIELD,), True, ts)
    if isinstance(source.fields, str) or not source.fields:
        raise ValueError(f"{where}.fields must be a non-empty list (omit it for a single value)")
    fields = tuple(_Field.compile(name, f"{where}.fields entry") for name in source.fields)
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}.fields has duplicates: {names}")
    return _Source(pattern, fields, False, ts)


def _number(value: Any, name: str) -> float:
    """``value`` as a finite float, or a rejection naming the field."""
    kind = type(value)
    if kind is float:
        number = value
    elif kind is int:
        try:
            number = float(value)
        except OverflowError:
            raise _Rejected(NOT_FINITE, f"field {name!r} overflows a float") from None
    else:
        # bool is excluded here on purpose: type(True) is bool, not int.
        raise _Rejected(WRONG_TYPE, f"field {name!r} must be a JSON number, got {_describe(value)}")
    if not math.isfinite(number):
        raise _Rejected(NOT_FINITE, f"field {name!r} is {number!r}")
    return number


def _timestamp(raw: Any, name: str) -> float:
    """Epoch seconds for a ts value (epoch s/ms number or ISO-8601 string)."""
    kind = type(raw)
    if kind is int or kind is float:
        try:
            seconds = float(raw)
        except OverflowError:
            raise _Rejected(BAD_TIMESTAMP, f"{name!r} overflows a float") from None
        if not math.isfinite(seconds):
            raise _Rejected(BAD_TIMESTAMP, f"{name!r} is {seconds!r}")
        if seconds > _MS_THRESHOLD:
            seconds /= 1000.0
    elif kind is str:
        seconds = _iso_timestamp(raw, name)
    else:
        raise _Rejected(BAD_TIMESTAMP, f"{name!r} must be epoch seconds or ISO-8601, got {_describe(raw)}")
    if not 0.0 <= seconds < _MS_THRESHOLD:
        raise _Rejected(BAD_TIMESTAMP, f"{name!r} out of range: {str(raw)[:30]}")
    return seconds


def _iso_timestamp(text: str, name: str) -> float:
    bad = _Rejected(BAD_TIMESTAMP, f"{name!r} is not ISO-8601: {text[:30]!r}")
    if len(text) > _MAX_ISO_LENGTH or not text.isascii():
        raise bad
    # Python 3.10's fromisoformat does not know the 'Z' suffix.
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise bad from None


def _reject_sensor_id(sensor_id: str, topic: str) -> None:
    """Raise the rejection explaining why ``sensor_id`` is unusable (no-op if it is fine)."""
    if not sensor_id:
        raise _Rejected(BAD_SENSOR_ID, f"empty sensor level in topic {topic[:60]!r}")
    if len(sensor_id) > MAX_SENSOR_ID_LENGTH:
        raise _Rejected(BAD_SENSOR_ID, f"sensor id longer than {MAX_SENSOR_ID_LENGTH} characters")
    # Wildcards would make every output topic for this sensor unpublishable; unprintable
    # characters (controls, lone surrogates) break logs, labels and UTF-8 encoding.
    if "+" in sensor_id or "#" in sensor_id or not sensor_id.isprintable():
        raise _Rejected(BAD_SENSOR_ID, f"sensor id has wildcard or unprintable characters: {sensor_id[:30]!r}")


class PayloadParser:
    """Parses messages for a fixed list of sources; everything is compiled once here.

    Raises ``ValueError`` when a source's topic, fields or ts_field is unusable.
    """

    def __init__(self, sources: Sequence[SourceConfig], max_payload_bytes: int) -> None:
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self._sources: tuple[_Source, ...] = tuple(_compile_source(i, s) for i, s in enumerate(sources))
        self._max_payload_bytes = max_payload_bytes
        self._decoder = json.JSONDecoder()
        # Deduplicated, in source order: what the transport subscribes to.
        self.subscriptions: tuple[str, ...] = tuple(dict.fromkeys(s.pattern.subscription for s in self._sources))

    def parse(
        self, topic: str, payload: bytes, received_at: float, ack: Any = None, redelivered: bool = False
    ) -> Reading | InvalidReading:
        """The Reading carried by one message, or why there is none. Never raises."""
        sensor_id: str | None = None
        try:
            source, sensor_id = self._source_for(topic)
            values, ts, ts_raw = self._decode(source, payload)
        except _Rejected as rejected:
            return InvalidReading(
                reason=rejected.reason, detail=_clip(rejected.detail),
                topic=topic, sensor_id=sensor_id, ack=ack,
            )
        return Reading(
            sensor_id=sensor_id, values=values, received_at=received_at,
            ts=ts, ts_raw=ts_raw, topic=topic, ack=ack, redelivered=redelivered,
        )

    def _source_for(self, topic: str) -> tuple[_Source, str]:
        if type(topic) is not str:
            raise _Rejected(UNKNOWN_TOPIC, f"topic must be a string, got {type(topic).__name__}")
        for source in self._sources:
            sensor_id = source.pattern.sensor_id(topic)
            if sensor_id is not None:
                # Common case first, checked inline; the helper explains failures.
                if not (
                    0 < len(sensor_id) <= MAX_SENSOR_ID_LENGTH
                    and sensor_id.isprintable()
                    and "+" not in sensor_id
                    and "#" not in sensor_id
                ):
                    _reject_sensor_id(sensor_id, topic)
                return source, sensor_id
        raise _Rejected(UNKNOWN_TOPIC, f"no source matches topic {topic[:70]!r}")

    def _decode(self, source: _Source, payload: bytes) -> tuple[dict[str, float], float | None, Any]:
        """Values, ts and raw ts of one payload for ``source``."""
        if type(payload) is not bytes:
            if not isinstance(payload, (bytearray, memoryview)):
                raise _Rejected(WRONG_TYPE, f"payload must be bytes, got {type(payload).__name__}")
            payload = bytes(payload)
        size = len(payload)
        if size > self._max_payload_bytes:
            raise _Rejected(TOO_LARGE, f"payload is {size} bytes, limit is {self._max_payload_bytes}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Rejected(NOT_UTF8, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        text = text.strip()
        if text[:1] == "\ufeff":  # tolerate a UTF-8 byte-order mark
            text = text[1:].strip()
        if not text:
            raise _Rejected(EMPTY, "payload is empty" if size == 0 else "payload is only whitespace")

        if text[0] != "{":
            return self._decode_scalar(source, text)
        obj = _loads(self._decoder, text)
        if type(obj) is not dict:  # pragma: no cover - '{' always decodes to an object
            raise _Rejected(WRONG_TYPE, f"payload must be a number or JSON object, got {_describe(obj)}")

        values: dict[str, float] = {}
        for f in source.fields:
            value = f.lookup(obj)
            # Fast path: a finite float (inf - inf and nan - nan are nan, not 0).
            if type(value) is float and value - value == 0.0:
                values[f.name] = value
            elif value is _MISSING:
                raise _Rejected(MISSING_FIELD, f"field {f.name!r} is missing")
            else:
                values[f.name] = _number(value, f.name)

        ts_raw = source.ts.lookup(obj)
        if ts_raw is _MISSING or ts_raw is None:
            return values, None, None
        return values, _timestamp(ts_raw, source.ts.name), ts_raw

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
                number = _number(value, "value")
            else:
                raise _Rejected(WRONG_TYPE, f"payload must be a number or JSON object, got {_describe(value)}")
        if not source.univariate:
            names = ", ".join(f.name for f in source.fields)
            raise _Rejected(WRONG_TYPE, f"expected a JSON object with fields {names}, got a bare number")
        if not math.isfinite(number):
            raise _Rejected(NOT_FINITE, f"value is {number!r}")
        return {"value": number}, None, None


def _loads(decoder: json.JSONDecoder, text: str) -> Any:
    """Decode stripped JSON ``text``, depth checked first, every failure a rejection."""
    if _json_depth_exceeds(text, MAX_DEPTH):
        raise _Rejected(TOO_DEEP, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        # raw_decode skips json.loads' per-call checks and whitespace regexes (about half
        # its cost on small payloads); ``text`` is already stripped, so only trailing
        # garbage needs checking.
        value, end = decoder.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise _Rejected(BAD_JSON, f"not a number or valid JSON: {exc.msg} (char {exc.pos})") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise _Rejected(TOO_DEEP, "JSON nested too deeply") from None
    except ValueError as exc:
        # e.g. integers over Python's int-to-str digit limit.
        raise _Rejected(BAD_JSON, f"JSON not decodable: {str(exc)[:60]}") from None
    if end != len(text):
        raise _Rejected(BAD_JSON, f"not a number or valid JSON: extra data at char {end}")
    return value
