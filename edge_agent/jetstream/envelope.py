"""A reading as it travels through JetStream: the subject that carries its sensor, the body, the dedup id.

The bridge parses MQTT with the agent's own ingest code and publishes each Reading it gets
as a small JSON object, so sensor ids agree whatever the source rules are. A message without
the ``Edge-Reading`` header came straight from a sensor (NATS's own MQTT listener): its body
is the sensor's payload, read with the default source rules.

>>> token("pump-1"), token("hall 2/temp.c")
('pump-1', 'hall%202%2Ftemp%2Ec')
>>> untoken(token("hall 2/temp.c"))
'hall 2/temp.c'
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_agent.core.domain import InvalidReading, Reading

#: Header marking a body written by the bridge (its value is the envelope's version).
HEADER = "Edge-Reading"
VERSION = "1"
BAD_ENVELOPE = "bad_envelope"

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def token(sensor_id: str) -> str:
    """The sensor id as one subject token: reversible, and free of '.', '*', '>' and spaces."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in sensor_id)


def untoken(text: str) -> str:
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%" and i + 2 < len(text) and all(c in "0123456789ABCDEFabcdef" for c in text[i + 1:i + 3]):
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out.extend(text[i].encode("utf-8", "surrogatepass"))
            i += 1
    return out.decode("utf-8", "replace")


def msg_id(reading: Reading) -> str | None:
    """The Nats-Msg-Id: the sensor and its own timestamp, so a resent reading is dropped by the stream.

    None for a reading without a timestamp: two equal payloads from one sensor are then two
    readings, and a resend after a crash is a second one (see docs/operations.md#scale-out).
    """
    if reading.ts is None:
        return None
    return f"{token(reading.sensor_id)}@{json.dumps(reading.ts_raw)}"


def encode(reading: Reading) -> bytes:
    body: dict[str, Any] = {"sensor_id": reading.sensor_id, "values": reading.values, "received_at": reading.received_at}
    if reading.ts is not None:
        body["ts"] = reading.ts
        body["ts_raw"] = reading.ts_raw
    if reading.topic is not None:
        body["topic"] = reading.topic
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, redelivered: bool) -> Reading | InvalidReading:
    """The Reading the bridge wrote, or why it is not one (never raises)."""
    try:
        body = json.loads(data)
        sensor_id = body["sensor_id"]
        values = body["values"]
        received_at = body["received_at"]
        ts = body.get("ts")
        if not isinstance(sensor_id, str) or not sensor_id:
            raise ValueError("sensor_id must be a non-empty string")
        if not isinstance(values, dict) or not values or not all(
            isinstance(k, str) and type(v) in (int, float) and math.isfinite(v) for k, v in values.items()
        ):
            raise ValueError("values must map field names to finite numbers")
        if type(received_at) not in (int, float) or (ts is not None and type(ts) not in (int, float)):
            raise ValueError("received_at and ts must be numbers")
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        return InvalidReading(BAD_ENVELOPE, f"not a reading the bridge wrote: {e}", None, None)
    return Reading(
        sensor_id=sensor_id, values={k: float(v) for k, v in values.items()}, received_at=float(received_at),
        ts=None if ts is None else float(ts), ts_raw=body.get("ts_raw"), topic=body.get("topic"),
        redelivered=redelivered,
    )
