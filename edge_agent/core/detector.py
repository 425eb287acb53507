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

A stretch ends with the first reading that is not flagged; both contexts then take in the
next SETTLE readings, and the one that found them less strange goes on (the clean one after
a glitch or a dip, the live one after a change that had crept in before it was flagged).
One that outlasts ``hold`` readings (the longest feature window) is taken in: the live
context becomes the context. (While a sensor is flagged, each reading is scored in both
contexts: a sensor that has gone wrong costs about three times a normal one; see
docs/results/performance.md.) When a change is accepted as the sensor's new normal, the
live context is taken in at once (``absorb``) and its drift is measured from the new level.
(River's anomaly filters keep a detector from learning what it flagged in the same way.)

The sensor's records (``records``: its highest and lowest readings over the last days) are
part of the context too: a held stretch stays out of them (both contexts judge by the records
without it, so every reading of a spike is measured against the records before it), and it
joins them when the live context goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.core.features import DRIFT_RECENT, FeatureSpec, FeatureState
from edge_agent.core.records import RecentRecords, Tally

# Readings after a held stretch over which its two contexts are compared before one goes on.
SETTLE = 3


class SensorContext:
    """A sensor's feature state, and while a flagged stretch is held out, the state with it."""

    __slots__ = ("features", "live", "records", "stretch", "held", "hold", "settling", "clean_sum", "live_sum")

    def __init__(self, spec: FeatureSpec, hold: int | None = None, record_horizon: float = 0.0) -> None:
        self.features: FeatureState = spec.new_state()
        self.live: FeatureState | None = None  # the context with the held stretch taken in
        self.records = RecentRecords(len(spec.fields), record_horizon)
        self.stretch: Tally | None = None  # the held stretch, kept out of the records
        self.held = 0
        self.hold = max(spec.history, DRIFT_RECENT) if hold is None else hold
        self.settling = 0  # normal readings since the stretch, while both contexts are kept
        self.clean_sum = self.live_sum = 0.0

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

    def record_excess(self, values: Sequence[float]) -> float:
        """How far the reading lies past the sensor's records (see ``records``): the same in
        every context of ``rows``, since both judge by the records without the held stretch."""
        return self.records.excess(values)

    def advance(self, values: Sequence[float], flagged: bool, at: float | None = None,
                scores: Sequence[float] = ()) -> None:
        """Move the context on by one reading. ``flagged``: the reading was flagged (in the
        context that found it less strange); ``scores``: its score in each context of ``rows``."""
        if self.live is None:
            if flagged:
                self.live = self.features.copy()
                self.stretch = Tally(len(values))
                self.held, self.settling = 0, 0
                self._hold(values, at)
            else:
                self.features.update(values, at)
                self._record(values, at)
            return
        if flagged:
            self.settling = 0
            self._hold(values, at)
            return
        # Normal again: keep both contexts for SETTLE readings, then go on in the one that
        # found them less strange (the clean one after a glitch or a dip, the live one after
        # a change that had crept in before it was flagged).
        self.features.update(values, at)
        self.live.update(values, at)
        self._record(values, at)
        if self.settling == 0:
            self.clean_sum = self.live_sum = 0.0
        self.settling += 1
        if len(scores) == 2:
            self.clean_sum += scores[0]
            self.live_sum += scores[1]
        if self.settling >= SETTLE:
            if self.live_sum < self.clean_sum:
                self._take_in()
            else:
                self._drop_live()

    def _hold(self, values: Sequence[float], at: float | None) -> None:
        assert self.live is not None
        self.live.update(values, at)
        self.features.step(values)  # the change and the repeats follow every reading
        if self.stretch is not None:
            self.stretch.add(values)
        self.held += 1
        if self.held >= self.hold:
            self._take_in()

    def _take_in(self) -> None:
        if self.live is not None:
            self.features = self.live
        if self.stretch is not None:
            self.records.take_in(self.stretch)
        self._drop_live()

    def _drop_live(self) -> None:
        self.live, self.stretch, self.held, self.settling = None, None, 0, 0

    def _record(self, values: Sequence[float], at: float | None) -> None:
        if at is not None:
            self.records.add(values, at)

    def absorb(self) -> None:
        """The held stretch is the new normal: take it in, and rebase drift on it."""
        self._take_in()
        self.features.rebase()
