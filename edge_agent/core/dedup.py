"""Recognising a reading delivered twice, so that it gets its first verdict again.

A transport that redelivers (MQTT QoS 1 after a reconnect, a gateway's retry) may hand
the same reading over more than once. Each sensor remembers its last ``RECENT_KEYS``
readings, keyed on their timestamp and values, with the few fields of their verdicts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.core.domain import Reading, Verdict

# Recent readings remembered per sensor (a hash and the few fields of a verdict: ~200 bytes
# each, so 32 cost ~6 KiB a sensor). A redelivery comes within the broker's in-flight window
# of the original, which is far shorter than 32 readings of one sensor at the defaults.
RECENT_KEYS = 32


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a duplicate's verdict repeats of the original."""

    score: float
    anomaly: int
    raw_score: float | None
    model: str
    model_version: str
    learning: bool
    event: str | None
    model_score: float | None = None

    @classmethod
    def of(cls, v: Verdict) -> Remembered:
        return cls(v.score, v.anomaly, v.raw_score, v.model, v.model_version, v.learning, v.event, v.model_score)

    def verdict_for(self, reading: Reading) -> Verdict:
        return Verdict(
            sensor_id=reading.sensor_id, values=reading.values, ts=reading.echoed_ts,
            score=self.score, anomaly=self.anomaly, model=self.model, model_version=self.model_version,
            learning=self.learning, raw_score=self.raw_score, duplicate=True, event=self.event,
            model_score=self.model_score,
        )


def reading_key(reading: Reading, values: Sequence[float], always: bool = False) -> int | None:
    """A key that repeats exactly when the same reading is delivered again.

    With its own timestamp a reading is recognised whenever it comes back; without
    one, only when the transport says it is a redelivery (two equal values in a
    row are normal for a sensor).
    """
    if reading.ts is not None:
        return hash((reading.ts, *values))
    if always or reading.redelivered:
        return hash((None, *values))
    return None


class RecentReadings:
    """One sensor's last ``capacity`` readings and their verdicts."""

    __slots__ = ("_seen", "_capacity")

    def __init__(self, capacity: int = RECENT_KEYS) -> None:
        self._seen: OrderedDict[int, Remembered] = OrderedDict()
        self._capacity = capacity

    def duplicate_of(self, reading: Reading, values: Sequence[float]) -> Verdict | None:
        """The verdict this reading had when it came first, marked duplicate; None if it is new."""
        key = reading_key(reading, values)
        if key is None:
            return None
        seen = self._seen.get(key)
        return seen.verdict_for(reading) if seen is not None else None

    def remember(self, reading: Reading, values: Sequence[float], verdict: Verdict) -> None:
        key = reading_key(reading, values, always=True)
        assert key is not None
        self._seen[key] = Remembered.of(verdict)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
