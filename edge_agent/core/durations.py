"""Spans of time in configuration: ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"``, or seconds as a number.

>>> Duration.parse("1h"), Duration.parse("1.5d"), Duration.parse(90)
(Duration('1h'), Duration('1.5d'), Duration('90s'))
>>> float(Duration.parse("2d"))
172800.0
>>> Duration.parse("soon")
Traceback (most recent call last):
...
ValueError: 'soon' is not a duration: write a number and a unit (s, m, h, d, w), as in 30m or 2d
"""

from __future__ import annotations

import math
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


class Duration(float):
    """Seconds, remembering how they were written (``str`` gives that back, for the docs)."""

    text: str

    def __new__(cls, seconds: float, text: str | None = None) -> Duration:
        self = super().__new__(cls, seconds)
        self.text = text if text is not None else _shortest(seconds)
        return self

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a duration")
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{value!r} is not a duration: seconds must be a finite number of at least 0")
            return cls(float(value))
        if isinstance(value, str):
            m = _PATTERN.match(value)
            if m:
                return cls(float(m.group(1)) * UNITS[m.group(2)], value.strip())
        raise ValueError(f"{value!r} is not a duration: write a number and a unit (s, m, h, d, w), as in 30m or 2d")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"


def _shortest(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        n = seconds / UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"
