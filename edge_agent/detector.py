"""What a sensor's model judges a reading against: its recent normal readings.

A sensor's streaming features (its level over the last readings, their spread, its
drift) describe its context. A reading its model flags is kept out of that context: a
spike does not inflate the spread the next readings are judged by, and one glitch gives
one flagged reading, not as many as the longest window that remembers it (River's
anomaly filters keep a detector from learning what it flagged in the same way).

The readings kept out are held; when their change is accepted as the sensor's new
normal they are taken in after all (``absorb``), so the context is that of the new
level at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from edge_agent.features import DRIFT_RECENT, FeatureSpec, FeatureState


class SensorContext:
    """A sensor's feature state, advanced by the readings that were not flagged."""

    __slots__ = ("features", "held")

    def __init__(self, spec: FeatureSpec) -> None:
        self.features: FeatureState = spec.new_state()
        self.held: deque[tuple[Sequence[float], float | None]] = deque(maxlen=max(spec.history, DRIFT_RECENT))

    @property
    def spec(self) -> FeatureSpec:
        return self.features.spec

    def row(self, values: Sequence[float], at: float | None = None) -> list[float]:
        """The reading's features in this context (the context does not move); ``at``: its time."""
        return self.features.peek(values, at)

    def advance(self, values: Sequence[float], flagged: bool, at: float | None = None) -> None:
        if flagged:
            self.held.append((values, at))
            return
        self.held.clear()
        self.features.update(values, at)

    def absorb(self) -> None:
        """The held readings are the new normal: take them in, and rebase drift on them."""
        for values, at in self.held:
            self.features.update(values, at)
        self.held.clear()
        self.features.rebase()
