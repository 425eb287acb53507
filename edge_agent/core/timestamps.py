"""A reading's own time as epoch seconds: one rule for MQTT payloads and CSV files (replay, train).

Accepted: epoch seconds or epoch milliseconds (a number; anything over ``MS_THRESHOLD``
is milliseconds), or an ISO-8601 string (UTC when it names no zone). The result must
lie in [0, ``MS_THRESHOLD``) seconds, from 1970 to about the year 5138.

>>> epoch_seconds(1764241234.5, "ts")
1764241234.5
>>> epoch_seconds(1764241234500, "ts")
1764241234.5
>>> epoch_seconds("2025-11-27T12:00:00Z", "ts")
1764244800.0
>>> epoch_seconds(-5, "ts")
Traceback (most recent call last):
...
edge_agent.core.timestamps.BadTimestamp: 'ts' out of range: -5
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

#: Timestamps over this are epoch milliseconds; seconds must stay under it (year ~5138).
MS_THRESHOLD = 1e11
#: Longest ISO-8601 timestamp string looked at.
MAX_ISO_LENGTH = 64


class BadTimestamp(ValueError):
    """A timestamp that is not one, or out of range; the message names the field and the value."""


def epoch_seconds(raw: float | str, name: str) -> float:
    """Epoch seconds for ``raw`` (a number: seconds or milliseconds; a string: ISO-8601), else BadTimestamp."""
    if isinstance(raw, str):
        seconds = _iso_seconds(raw, name)
    else:
        try:
            seconds = float(raw)
        except OverflowError:
            raise BadTimestamp(f"{name!r} overflows a float") from None
        if not math.isfinite(seconds):
            raise BadTimestamp(f"{name!r} is {seconds!r}")
        if seconds > MS_THRESHOLD:
            seconds /= 1000.0
    if not 0.0 <= seconds < MS_THRESHOLD:
        raise BadTimestamp(f"{name!r} out of range: {str(raw)[:30]}")
    return seconds


def epoch_seconds_of_text(text: str, name: str) -> float | None:
    """A CSV cell: None when empty; a number written out counts as that number (CSV has no types)."""
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return epoch_seconds(text, name)
    return epoch_seconds(number, name)


def _iso_seconds(text: str, name: str) -> float:
    bad = BadTimestamp(f"{name!r} is not ISO-8601: {text[:30]!r}")
    if len(text) > MAX_ISO_LENGTH or not text.isascii():
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
