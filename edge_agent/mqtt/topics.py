"""MQTT topic rules: filter/topic validation, wildcard matching, source patterns, output topics.

Pure string functions, no I/O. Matching follows MQTT 3.1.1/5.0 section 4.7: ``+`` matches
exactly one level (possibly empty), a trailing ``#`` matches any number of levels including
the parent level itself (``a/#`` matches ``a``), and topics starting with ``$`` are never
matched by a filter whose first level is a wildcard (so ``#`` does not see ``$SYS/...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: MQTT topics are length-prefixed with two bytes (UTF-8 encoded length).
MAX_TOPIC_BYTES = 65535

#: The placeholder a source template uses for the sensor-id level.
SENSOR_PLACEHOLDER = "{sensor}"


def _check_common(text: object, what: str) -> str | None:
    """Errors shared by filters and topic names: type, emptiness, NUL, encodability, length."""
    if not isinstance(text, str):
        return f"{what} must be a string, got {type(text).__name__}"
    if not text:
        return f"{what} is empty"
    if "\0" in text:
        return f"{what} contains a NUL character"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates cannot be sent on the wire at all.
        return f"{what} is not encodable as UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"{what} is {size} bytes, MQTT allows at most {MAX_TOPIC_BYTES}"
    return None


def validate_filter(f: object) -> str | None:
    """Why ``f`` is not a valid MQTT topic filter, or None when it is."""
    error = _check_common(f, "topic filter")
    if error is not None:
        return error
    assert isinstance(f, str)
    levels = f.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return f"'#' must be a whole level and the last one (level {i + 1}: {level[:40]!r})"
        if "+" in level and level != "+":
            return f"'+' must be a whole level (level {i + 1}: {level[:40]!r})"
    return None


def validate_topic_name(t: object) -> str | None:
    """Why ``t`` is not a valid MQTT topic name (publishable topic), or None when it is."""
    error = _check_common(t, "topic")
    if error is not None:
        return error
    assert isinstance(t, str)
    if "+" in t or "#" in t:
        return "topic contains a wildcard ('+' or '#'); only filters may"
    return None


def _match_levels(filter_levels: tuple[str, ...], multi: bool, topic_levels: list[str]) -> bool:
    """Level-wise match; ``filter_levels`` excludes a trailing '#', flagged by ``multi``."""
    n = len(filter_levels)
    if multi:
        # '#' also matches the parent level, so the topic may have exactly n levels.
        if len(topic_levels) < n:
            return False
    elif len(topic_levels) != n:
        return False
    for i in range(n):
        level = filter_levels[i]
        if level != "+" and level != topic_levels[i]:
            return False
    return True


def topic_matches(filter: str, topic: str) -> bool:  # noqa: A002 - the MQTT term
    """Whether ``topic`` (a topic name) matches ``filter`` under MQTT wildcard rules.

    ``filter`` is assumed valid (see :func:`validate_filter`); an invalid one simply
    matches according to the same level-by-level rules.
    """
    if "+" not in filter and "#" not in filter:
        return filter == topic
    if topic[:1] == "$" and filter[:1] in ("+", "#"):
        return False
    levels = filter.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels.pop()
    return _match_levels(tuple(levels), multi, topic.split("/"))


@dataclass(frozen=True)
class SourcePattern:
    """Which topics a source covers and where the sensor id sits in them.

    Built from a source's ``topic``: either a plain filter (``sensors/+``; the sensor id
    is the topic's last level) or a template with one whole-level ``{sensor}``
    placeholder (``tele/{sensor}/SENSOR``; the sensor id is that level). Raises
    ``ValueError`` when the text is neither.
    """

    text: str
    #: The filter to subscribe to ({sensor} replaced by '+').
    subscription: str = field(init=False)
    #: Index of the sensor-id level, or None when it is the topic's last level.
    sensor_level: int | None = field(init=False)
    _levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _multi: bool = field(init=False, repr=False, compare=False)
    _wildcards: bool = field(init=False, repr=False, compare=False)
    _dollar_guard: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        error = validate_source_pattern(self.text)
        if error is not None:
            raise ValueError(error)
        levels = self.text.split("/")
        sensor_level: int | None = None
        if SENSOR_PLACEHOLDER in levels:
            sensor_level = levels.index(SENSOR_PLACEHOLDER)
            levels[sensor_level] = "+"
        subscription = "/".join(levels)
        multi = levels[-1] == "#"
        if multi:
            levels.pop()
        # Frozen dataclass: derived fields are set once here, never again.
        object.__setattr__(self, "subscription", subscription)
        object.__setattr__(self, "sensor_level", sensor_level)
        object.__setattr__(self, "_levels", tuple(levels))
        object.__setattr__(self, "_multi", multi)
        object.__setattr__(self, "_wildcards", "+" in subscription or "#" in subscription)
        object.__setattr__(self, "_dollar_guard", subscription[:1] in ("+", "#"))

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` belongs to this source."""
        return self.sensor_id(topic) is not None

    def sensor_id(self, topic: str) -> str | None:
        """The sensor id carried by ``topic``, or None when the topic does not match.

        An empty sensor level yields ``""`` (the topic matches but names no sensor);
        callers decide whether that is acceptable.
        """
        if not self._wildcards:
            if topic != self.subscription:
                return None
            return topic.rpartition("/")[2]
        if self._dollar_guard and topic[:1] == "$":
            return None
        levels = topic.split("/")
        if not _match_levels(self._levels, self._multi, levels):
            return None
        if self.sensor_level is None:
            return levels[-1]
        return levels[self.sensor_level]


def validate_source_pattern(text: object) -> str | None:
    """Why ``text`` is not a usable source topic (filter or ``{sensor}`` template), or None."""
    if not isinstance(text, str):
        return f"source topic must be a string, got {type(text).__name__}"
    levels = text.split("/")
    count = levels.count(SENSOR_PLACEHOLDER)
    if count > 1:
        return f"source topic {text[:80]!r} has more than one {SENSOR_PLACEHOLDER} level"
    if count == 1:
        levels[levels.index(SENSOR_PLACEHOLDER)] = "+"
    rest = "/".join(levels)
    if SENSOR_PLACEHOLDER in rest:
        return f"{SENSOR_PLACEHOLDER} must be a whole topic level in {text[:80]!r}"
    if "{" in rest or "}" in rest:
        return f"source topic {text[:80]!r} has an unknown placeholder (only {SENSOR_PLACEHOLDER} is known)"
    error = validate_filter(rest)
    if error is not None:
        return f"source topic {text[:80]!r}: {error}"
    return None


@dataclass(frozen=True)
class TopicTemplate:
    """An output topic with ``{name}`` placeholders, parsed once and rendered per message.

    Raises ``ValueError`` on unbalanced braces or empty placeholder names.
    """

    text: str
    #: Placeholder names in order of appearance.
    names: tuple[str, ...] = field(init=False)
    _parts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts: list[str] = []  # literal, name, literal, name, ..., literal
        names: list[str] = []
        text = self.text
        pos = 0
        while True:
            start = text.find("{", pos)
            literal_end = len(text) if start < 0 else start
            if "}" in text[pos:literal_end]:
                raise ValueError(f"unbalanced '}}' in topic template {text[:80]!r}")
            parts.append(text[pos:literal_end])
            if start < 0:
                break
            end = text.find("}", start)
            if end < 0:
                raise ValueError(f"unclosed '{{' in topic template {text[:80]!r}")
            name = text[start + 1 : end]
            if not name.isidentifier():
                raise ValueError(f"bad placeholder {{{name[:40]}}} in topic template {text[:80]!r}")
            parts.append(name)
            names.append(name)
            pos = end + 1
        object.__setattr__(self, "_parts", tuple(parts))
        object.__setattr__(self, "names", tuple(names))

    def render(self, **values: object) -> str:
        """The topic with every placeholder filled in; ``ValueError`` if it is not publishable.

        A value may not be empty or contain '+', '#' or NUL: publishing to such a topic is
        a protocol error that makes the broker drop the connection.
        """
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            name = parts[i]
            if name not in values:
                raise ValueError(f"no value for {{{name}}} in topic template {self.text[:80]!r}")
            value = str(values[name])
            if not value or "+" in value or "#" in value or "\0" in value:
                raise ValueError(f"value for {{{name}}} is empty or has '+', '#' or NUL: {value[:40]!r}")
            out.append(value)
            out.append(parts[i + 1])
        topic = "".join(out)
        error = validate_topic_name(topic)
        if error is not None:
            raise ValueError(error)
        return topic


def render(template: str, **values: object) -> str:
    """Fill ``template``'s ``{name}`` placeholders, e.g. ``edge/{agent_id}/verdicts/{sensor_id}``.

    Raises ``ValueError`` for a malformed template, a missing value or an unpublishable
    result. Hot paths should build a :class:`TopicTemplate` once and call its ``render``.
    """
    return TopicTemplate(template).render(**values)


# --------------------------------------------------------------------------- overlapping filters


def _split(f: str) -> tuple[list[str], bool]:
    levels = f.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels.pop()
    return levels, multi


def _dollar_clash(a: str, b: str) -> bool:
    """A filter starting with a wildcard never sees the ``$`` topics another one names."""
    return (a[:1] in ("+", "#") and b[:1] == "$") or (b[:1] in ("+", "#") and a[:1] == "$")


def filter_covers(a: str, b: str) -> bool:
    """Whether every topic that filter ``b`` matches is matched by filter ``a`` too."""
    if a == b:
        return True
    if _dollar_clash(a, b):
        return False
    la, ma = _split(a)
    lb, mb = _split(b)
    if len(lb) < len(la) or (not ma and (mb or len(lb) != len(la))):
        return False
    return all(x == "+" or (x == y and y != "+") for x, y in zip(la, lb, strict=False))


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic is matched by both filters (a broker then sends it once per filter)."""
    if _dollar_clash(a, b):
        return False
    la, ma = _split(a)
    lb, mb = _split(b)
    if not (ma or mb) and len(la) != len(lb):
        return False
    if ma and not mb and len(lb) < len(la):
        return False
    if mb and not ma and len(la) < len(lb):
        return False
    return all(x == "+" or y == "+" or x == y for x, y in zip(la, lb, strict=False))


def _generalize(a: str, b: str) -> str:
    """The narrowest filter of this shape covering two overlapping filters."""
    la, ma = _split(a)
    lb, mb = _split(b)
    common = [x if x == y else "+" for x, y in zip(la, lb, strict=False)]
    if ma or mb or len(la) != len(lb):
        common.append("#")
    return "/".join(common)


def minimal_subscriptions(filters: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Filters covering the same topics with no two overlapping, in first-use order.

    A broker delivers a message once for every subscription of the client that matches
    it (Mosquitto does), so overlapping filters would deliver, and score, a reading twice.
    A filter covered by another is dropped; two that only partly overlap are replaced by
    the narrowest filter covering both (messages no source takes are then ignored).
    """
    result = list(dict.fromkeys(filters))
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(result):
            for j, b in enumerate(result):
                if i == j or not filters_overlap(a, b):
                    continue
                if filter_covers(a, b):
                    del result[j]
                elif filter_covers(b, a):
                    del result[i]
                else:
                    result[i] = _generalize(a, b)
                    del result[j]
                changed = True
                break
            if changed:
                break
    return tuple(result)


# --------------------------------------------------------------------------- sensor id templates

_ID_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ID_NAME = re.compile(r"^(sensor|key|level[1-9][0-9]*|item\.[^{}]+|payload\.[^{}]+)$")


def sensor_id_parts(template: str) -> list[str]:
    """``template`` as literal, placeholder, literal, ... ; ``ValueError`` naming what is wrong.

    Placeholders: ``{sensor}`` (the source topic's sensor level), ``{levelN}`` (the topic's
    N-th level, from 1), ``{key}`` (the payload key a source's ``each`` matched),
    ``{item.PATH}`` (a value inside that key's object) and ``{payload.PATH}`` (a value in
    the whole payload).
    """
    if not isinstance(template, str) or not template.strip():
        raise ValueError("sensor_id must be a non-empty template")
    parts: list[str] = []
    pos = 0
    for match in _ID_PLACEHOLDER.finditer(template):
        literal = template[pos : match.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"unbalanced brace in sensor_id {template[:80]!r}")
        name = match.group(1)
        if not _ID_NAME.match(name) or ".." in name or name.endswith("."):
            raise ValueError(
                f"unknown placeholder {{{name[:40]}}} in sensor_id {template[:80]!r} "
                "(known: {sensor}, {levelN}, {key}, {item.PATH}, {payload.PATH})"
            )
        parts += [literal, name]
        pos = match.end()
    tail = template[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"unbalanced brace in sensor_id {template[:80]!r}")
    parts.append(tail)
    if any(c in template for c in "+#/\0"):
        raise ValueError(f"sensor_id {template[:80]!r} may not contain '/', '+', '#' (it becomes a topic level)")
    return parts
