"""Tests for MQTT topic validation, wildcard matching, source patterns and output topics."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.mqtt.topics import (
    MAX_TOPIC_BYTES,
    SourcePattern,
    TopicTemplate,
    render,
    topic_matches,
    validate_filter,
    validate_source_pattern,
    validate_topic_name,
)

VALID_FILTERS = [
    "sensors/+",
    "sensors/#",
    "#",
    "+",
    "+/+",
    "/+",
    "sport/tennis/+/score",
    "sport/+/player1/#",
    "$SYS/#",
    "a//b",
    "/",
    "sensors/living room",
    "zigbee2mqtt/ünïcødé",
    "a" * MAX_TOPIC_BYTES,
]

INVALID_FILTERS = [
    ("", "empty"),
    ("sport/tennis#", "'#'"),
    ("sport/#/ranking", "'#'"),
    ("#/a", "'#'"),
    ("##", "'#'"),
    ("sport+", "'+'"),
    ("sport/+tennis", "'+'"),
    ("++", "'+'"),
    ("a\0b", "NUL"),
    ("a" * (MAX_TOPIC_BYTES + 1), "bytes"),
    ("é" * (MAX_TOPIC_BYTES // 2 + 1), "bytes"),  # the limit is in UTF-8 bytes, not characters
    ("a/\ud800", "UTF-8"),
    (None, "string"),
]


@pytest.mark.parametrize("f", VALID_FILTERS)
def test_valid_filters(f: str) -> None:
    assert validate_filter(f) is None


@pytest.mark.parametrize(("f", "needle"), INVALID_FILTERS)
def test_invalid_filters(f: object, needle: str) -> None:
    error = validate_filter(f)
    assert error is not None
    assert needle in error
    assert len(error) < 200


@pytest.mark.parametrize(
    ("t", "ok"),
    [
        ("sensors/t1", True),
        ("/", True),
        ("$SYS/broker/load", True),
        ("a//b", True),
        ("", False),
        ("sensors/+", False),
        ("sensors/#", False),
        ("sen+sors", False),
        ("a\0", False),
        ("a/\udfff", False),
        ("a" * (MAX_TOPIC_BYTES + 1), False),
    ],
)
def test_validate_topic_name(t: str, ok: bool) -> None:
    assert (validate_topic_name(t) is None) is ok


MATCH_TABLE = [
    # exact
    ("sensors/t1", "sensors/t1", True),
    ("sensors/t1", "sensors/t2", False),
    ("sensors/t1", "sensors/t1/x", False),
    ("Sensors/t1", "sensors/t1", False),  # case-sensitive
    # '+' is exactly one level, possibly empty
    ("sensors/+", "sensors/t1", True),
    ("sensors/+", "sensors/", True),
    ("sensors/+", "sensors", False),
    ("sensors/+", "sensors/t1/x", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    # '#' is the rest, including the parent level
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sport/tennis/player1/ranking", True),
    ("sport/#", "sports", False),
    ("sport/tennis/#", "sport", False),
    ("#", "anything/at/all", True),
    ("#", "/", True),
    ("sport/+/#", "sport/tennis", True),
    ("sport/+/#", "sport", False),
    # '$' topics are invisible to leading wildcards but matchable explicitly
    ("#", "$SYS/broker/load", False),
    ("+/broker/load", "$SYS/broker/load", False),
    ("+/#", "$SYS", False),
    ("$SYS/#", "$SYS/broker/load", True),
    ("$SYS/broker/+", "$SYS/broker/load", True),
    ("a/#", "a/$SYS", True),  # only the first level is special
]


@pytest.mark.parametrize(("f", "topic", "expected"), MATCH_TABLE)
def test_topic_matches(f: str, topic: str, expected: bool) -> None:
    assert validate_filter(f) is None
    assert topic_matches(f, topic) is expected


@pytest.mark.parametrize(("f", "topic", "expected"), MATCH_TABLE)
def test_plain_source_pattern_agrees_with_topic_matches(f: str, topic: str, expected: bool) -> None:
    pattern = SourcePattern(f)
    assert pattern.subscription == f
    assert pattern.matches(topic) is expected
    sensor = pattern.sensor_id(topic)
    if expected:
        assert sensor == topic.rsplit("/", maxsplit=1)[-1]
    else:
        assert sensor is None


@pytest.mark.parametrize(
    ("text", "subscription", "topic", "sensor"),
    [
        ("sensors/+", "sensors/+", "sensors/t1", "t1"),
        ("sensors/+", "sensors/+", "sensors/", ""),  # matches, but names no sensor
        ("sensors/+", "sensors/+", "sensors/t1/x", None),
        ("sensors/#", "sensors/#", "sensors/room/t1", "t1"),
        ("zigbee2mqtt/{sensor}", "zigbee2mqtt/+", "zigbee2mqtt/kitchen_temp", "kitchen_temp"),
        ("zigbee2mqtt/{sensor}", "zigbee2mqtt/+", "zigbee2mqtt/bridge/state", None),
        ("tele/{sensor}/SENSOR", "tele/+/SENSOR", "tele/tasmota_1A2B/SENSOR", "tasmota_1A2B"),
        ("tele/{sensor}/SENSOR", "tele/+/SENSOR", "tele/tasmota_1A2B/STATE", None),
        ("tele/{sensor}/SENSOR", "tele/+/SENSOR", "tele//SENSOR", ""),
        ("{sensor}/reading", "+/reading", "t9/reading", "t9"),
        ("{sensor}/reading", "+/reading", "$SYS/reading", None),
        ("site/+/{sensor}/#", "site/+/+/#", "site/a/t3", "t3"),
        ("site/+/{sensor}/#", "site/+/+/#", "site/a/t3/temp/raw", "t3"),
        ("site/+/{sensor}/#", "site/+/+/#", "site/a", None),
        ("exact/topic", "exact/topic", "exact/topic", "topic"),
        ("exact/topic", "exact/topic", "exact/other", None),
    ],
)
def test_source_pattern_sensor_id(text: str, subscription: str, topic: str, sensor: str | None) -> None:
    pattern = SourcePattern(text)
    assert pattern.subscription == subscription
    assert validate_filter(pattern.subscription) is None
    assert pattern.sensor_id(topic) == sensor
    # A pattern matches exactly the topics its subscription delivers.
    assert pattern.matches(topic) is topic_matches(subscription, topic)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("tele/{sensor}/{sensor}", "more than one"),
        ("tele/x{sensor}/SENSOR", "whole topic level"),
        ("tele/{device}/SENSOR", "unknown placeholder"),
        ("tele/{sensor/SENSOR", "unknown placeholder"),
        ("tele/{sensor}/a#", "'#'"),
        ("#/{sensor}", "'#'"),
        ("", "empty"),
        ("a/b+", "'+'"),
    ],
)
def test_invalid_source_patterns(text: str, needle: str) -> None:
    error = validate_source_pattern(text)
    assert error is not None and needle in error
    with pytest.raises(ValueError, match=r"."):
        SourcePattern(text)


def test_source_pattern_is_immutable_and_comparable() -> None:
    pattern = SourcePattern("tele/{sensor}/SENSOR")
    assert pattern == SourcePattern("tele/{sensor}/SENSOR")
    assert pattern.sensor_level == 1
    assert SourcePattern("sensors/+").sensor_level is None
    with pytest.raises(AttributeError):
        pattern.text = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("edge/{agent_id}/verdicts/{sensor_id}", {"agent_id": "edge-1", "sensor_id": "t1"}, "edge/edge-1/verdicts/t1"),
        ("edge/{agent_id}/errors", {"agent_id": "edge-1", "sensor_id": "unused"}, "edge/edge-1/errors"),
        ("{a}{b}", {"a": "x", "b": "y"}, "xy"),
        ("static/topic", {}, "static/topic"),
        ("edge/{agent_id}/status", {"agent_id": 7}, "edge/7/status"),
        ("s/{sensor_id}", {"sensor_id": "living room ü"}, "s/living room ü"),
    ],
)
def test_render(template: str, values: dict[str, object], expected: str) -> None:
    assert render(template, **values) == expected
    assert TopicTemplate(template).render(**values) == expected


@pytest.mark.parametrize(
    ("template", "values", "needle"),
    [
        ("edge/{agent_id}/x", {}, "no value"),
        ("edge/{agent_id", {"agent_id": "a"}, "unclosed"),
        ("edge/agent_id}", {"agent_id": "a"}, "unbalanced"),
        ("edge/{}/x", {}, "bad placeholder"),
        ("edge/{a-b}/x", {}, "bad placeholder"),
        ("edge/{sensor_id}", {"sensor_id": "+"}, "'+'"),
        ("edge/{sensor_id}", {"sensor_id": "a#"}, "'+'"),
        ("edge/{sensor_id}", {"sensor_id": ""}, "empty"),
        ("edge/{sensor_id}", {"sensor_id": "a\0"}, "NUL"),
        ("edge/+/{sensor_id}", {"sensor_id": "t1"}, "wildcard"),
    ],
)
def test_render_rejects(template: str, values: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        render(template, **values)


def test_topic_template_names() -> None:
    assert TopicTemplate("edge/{agent_id}/verdicts/{sensor_id}").names == ("agent_id", "sensor_id")


_level = st.sampled_from(["a", "b", "", "$x", "+", "#"])


@given(st.lists(_level, min_size=1, max_size=5), st.lists(st.sampled_from(["a", "b", "", "$x"]), min_size=1, max_size=5))
def test_matches_reference_model(filter_levels: list[str], topic_levels: list[str]) -> None:
    """topic_matches agrees with a direct transcription of the MQTT rules."""
    f = "/".join(filter_levels)
    topic = "/".join(topic_levels)
    if validate_filter(f) is not None:
        return

    def reference(fl: list[str], tl: list[str]) -> bool:
        if not fl:
            return not tl
        if fl[0] == "#":
            return True
        if not tl:
            return False
        return (fl[0] == "+" or fl[0] == tl[0]) and reference(fl[1:], tl[1:])

    expected = reference(filter_levels, topic_levels)
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        expected = False
    assert topic_matches(f, topic) is expected
    assert SourcePattern(f).matches(topic) is expected


@given(st.text(max_size=60), st.text(max_size=60))
def test_matching_never_raises(f: str, topic: str) -> None:
    result = topic_matches(f, topic)
    assert isinstance(result, bool)
    if validate_source_pattern(f) is None:
        assert SourcePattern(f).matches(topic) is result


# --- overlapping filters: a broker sends a message once per matching subscription ------------

from edge_agent.mqtt.topics import filter_covers, filters_overlap, minimal_subscriptions  # noqa: E402


@pytest.mark.parametrize(
    ("a", "b", "covers", "overlap"),
    [
        ("a/+", "a/b", True, True),
        ("a/b", "a/+", False, True),
        ("a/#", "a/+/c", True, True),
        ("a/#", "a", True, True),
        ("a/+", "a/#", False, True),
        ("#", "$SYS/x", False, False),
        ("+/x", "$SYS/x", False, False),
        ("a/+/c", "a/b/+", False, True),
        ("a/+", "b/+", False, False),
        ("a/+", "a/+/+", False, False),
        ("a/+/#", "a/b/c/d", True, True),
    ],
)
def test_filter_cover_and_overlap_table(a: str, b: str, covers: bool, overlap: bool) -> None:
    assert filter_covers(a, b) is covers
    assert filters_overlap(a, b) is overlap and filters_overlap(b, a) is overlap


def test_minimal_subscriptions_leave_no_two_overlapping() -> None:
    assert minimal_subscriptions(["z/+", "z/#", "t/+/S"]) == ("z/#", "t/+/S")
    assert minimal_subscriptions(["a/+/c", "a/b/+", "x"]) == ("a/+/+", "x")
    assert minimal_subscriptions(["a/b", "a/b"]) == ("a/b",)
