"""The values that travel through the agent: a sensor Reading in, a Verdict out.

These are plain, immutable records with no I/O; adapters (MQTT, HTTP, CSV) convert
to and from them at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of one sensor, already validated.

    ``values`` maps field name to a finite float, in the order the sensor's model
    expects them (a univariate sensor has the single field ``"value"``).
    ``ts`` is the reading's own timestamp as epoch seconds, when it carried one;
    ``ts_raw`` is that timestamp exactly as received (echoed unchanged in the
    verdict). ``received_at`` is the agent's clock at arrival (epoch seconds).
    ``redelivered`` is the transport's word that this may be a repeat of a reading
    it delivered before (MQTT's DUP flag).
    """

    sensor_id: str
    values: dict[str, float]
    received_at: float
    ts: float | None = None
    ts_raw: Any = None
    topic: str | None = None
    redelivered: bool = False

    @property
    def at(self) -> float:
        """When the reading was taken: its own timestamp, else its arrival."""
        return self.ts if self.ts is not None else self.received_at

    @property
    def echoed_ts(self) -> Any:
        """What its verdict's ``ts`` says: the timestamp as received, else the arrival time."""
        return self.ts_raw if self.ts is not None else self.received_at


@dataclass(frozen=True, slots=True)
class InvalidReading:
    """A message that could not become a Reading: counted by ``reason``, reported."""

    reason: str
    detail: str
    topic: str | None = None
    sensor_id: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The scoring core's answer for one reading."""

    sensor_id: str
    values: dict[str, float]
    ts: Any
    score: float
    anomaly: int
    model: str
    model_version: str
    learning: bool = False
    raw_score: float | None = None
    duplicate: bool = False
    # What this reading does to the sensor's anomalous episode (see edge_agent.core.episodes):
    # "onset" (its first anomalous reading), "end" (the first normal one after it),
    # "new_normal" (the episode lasted so long that its level is the normal now) or "repeat"
    # (the first reading of an episode no worse than one the sensor had within decision.repeat_horizon: no onset, no end).
    event: str | None = None
    # The model's own score, which flags the reading; ``score`` is the same but inside an
    # episode, where it is the reading's surprise against the episode (see edge_agent.core.episodes).
    model_score: float | None = None

    @property
    def onset(self) -> bool:
        return self.event == "onset"

    def to_answer(self) -> dict[str, Any]:
        """The JSON object POST /predict answers (the REST contract: anomaly, score, model, ...)."""
        answer: dict[str, Any] = {
            "anomaly": self.anomaly,
            "score": round(self.score, 6),
            "model": self.model,
            "model_version": self.model_version,
        }
        if self.raw_score is not None:
            answer["raw_score"] = round(self.raw_score, 6)
        if self.sensor_id:
            answer["sensor_id"] = self.sensor_id
        return answer

    def to_payload(self) -> dict[str, Any]:
        """The JSON object published on the verdicts and alerts topics."""
        payload: dict[str, Any] = {
            "sensor_id": self.sensor_id,
            "ts": self.ts,
            "score": round(self.score, 6),
            "anomaly": self.anomaly,
            "model": self.model,
            "model_version": self.model_version,
        }
        if list(self.values) == ["value"]:
            payload["value"] = self.values["value"]
        else:
            payload["values"] = dict(self.values)
        if self.learning:
            payload["learning"] = True
        if self.duplicate:
            payload["duplicate"] = True
        if self.event is not None:
            payload["event"] = self.event
            if self.onset:
                payload["onset"] = True  # the field before events had names; kept for existing consumers
        return payload


def clip(text: str | None, limit: int = 80) -> str | None:
    """A topic or id as reports and logs show it: at most ``limit`` characters, saying how long it was."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"
