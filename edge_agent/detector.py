"""What a sensor's model judges a reading against: its recent normal readings.

A sensor's streaming features (its level over the last readings, their spread, its
drift, its seasons) describe its context. A reading its model flags starts a *held*
stretch: from then on the sensor has two contexts, the one before the stretch (clean)
and the one that took the stretch in (live), and a reading is as strange as the less
strange of the two finds it:

- after a glitch, the reading back at the normal level fits the clean context (the spike
  did not inflate its spread), so one glitch gives one or two flagged readings (the spike,
  and the change back from it), not as many as the longest window that remembers it;
- after a change that crept up before it was flagged (a drift), the reading back at the
  normal level fits the live context as soon as it did before, so holding the change out
  never makes the sensor look strange for longer.

A stretch ends at the first reading that is not flagged; the context that found it normal
goes on (the clean one after a glitch, the live one after a change that had crept in).
One that outlasts ``hold`` readings (the longest feature window) is taken in: the live
context becomes the context. When a change is accepted as the sensor's new normal, the
live context is taken in at once (``absorb``) and its drift is measured from the new level.
(River's anomaly filters keep a detector from learning what it flagged in the same way.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from edge_agent.features import DRIFT_RECENT, FeatureSpec, FeatureState


class SensorContext:
    """A sensor's feature state, and while a flagged stretch is held out, the state with it."""

    __slots__ = ("features", "live", "held", "hold")

    def __init__(self, spec: FeatureSpec, hold: int | None = None) -> None:
        self.features: FeatureState = spec.new_state()
        self.live: FeatureState | None = None  # the context with the held stretch taken in
        self.held = 0
        self.hold = max(spec.history, DRIFT_RECENT) if hold is None else hold

    @property
    def spec(self) -> FeatureSpec:
        return self.features.spec

    def row(self, values: Sequence[float], at: float | None = None) -> list[float]:
        """The reading's features in the clean context (the context does not move); ``at``: its time."""
        return self.features.peek(values, at)

    def rows(self, values: Sequence[float], at: float | None = None) -> list[list[float]]:
        """The reading's features in each context it has: the clean one, and the live one while holding."""
        clean = self.features.peek(values, at)
        return [clean] if self.live is None else [clean, self.live.peek(values, at)]

    def advance(self, values: Sequence[float], flagged: bool, at: float | None = None, by_live: bool = False) -> None:
        """Move the context on by one reading, flagged or not. ``by_live``: the reading was
        judged in the live context (the clean one found it stranger)."""
        if not flagged:
            if self.live is not None:
                # The stretch is over; the context that found this reading normal goes on.
                if by_live:
                    self.features = self.live
                self.live, self.held = None, 0
            self.features.update(values, at)
            return
        if self.live is None:
            self.live = copy.deepcopy(self.features)
        self.live.update(values, at)
        self.features.step(values)  # the change and the repeats follow every reading
        self.held += 1
        if self.held >= self.hold:
            self._take_in()

    def _take_in(self) -> None:
        if self.live is not None:
            self.features = self.live
        self.live, self.held = None, 0

    def absorb(self) -> None:
        """The held stretch is the new normal: take it in, and rebase drift on it."""
        self._take_in()
        self.features.rebase()
