"""The numbers a reading is made of, checked one way for MQTT payloads and HTTP bodies alike.

A rejection carries a reason (a label of ``edge_agent_invalid_messages_total``) and a detail
that names the field and what was there; ingest reports it on the errors topic, the HTTP API
answers it with a 400.
"""

from __future__ import annotations

import math
from typing import Any

NOT_FINITE = "not_finite"  # a scored value is NaN or +-Infinity (or overflows to it)
WRONG_TYPE = "wrong_type"  # a scored value is not a JSON number, or the payload has the wrong shape


class Rejected(Exception):
    """A value that can't be scored: ``reason`` for metrics, ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def describe(value: Any) -> str:
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


def finite_number(value: Any, name: str) -> float:
    """``value`` as a finite float, or Rejected naming the field ``name``."""
    kind = type(value)
    if kind is float:
        number = value
    elif kind is int:
        try:
            number = float(value)
        except OverflowError:
            raise Rejected(NOT_FINITE, f"field {name!r} must be a finite number; it overflows a float") from None
    else:
        # bool is excluded here on purpose: type(True) is bool, not int.
        raise Rejected(WRONG_TYPE, f"field {name!r} must be a JSON number, got {describe(value)}")
    if not math.isfinite(number):
        raise Rejected(NOT_FINITE, f"field {name!r} must be a finite number, got {number!r}")
    return float(number)
