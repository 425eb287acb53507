"""A sensor's records: the highest and lowest of its recent normal readings, and how far
a reading goes past them.

A reading beyond everything its sensor showed over the last ``horizon`` (30 days by
default), by a good share of how far that record lies from the sensor's mean, is news,
whatever the model makes of its features. The model cannot always tell: it learned from
at most ``learning.refit_rows`` readings and is calibrated on them, so a sensor whose
learning readings had spikes of their own (an ad exchange's hourly cost, 0.60 against a
median of 0.14) finds a spike half again as high (0.91) ordinary. Its records find it at
once. Flagged readings set no record until the sensor's context takes them in (see
``detector``): a spike does not hide the next spike like it, and a lasting change joins the
records when it is taken in or becomes the new normal.

How far past: ``excess`` is the distance beyond the record in units of the record's own
distance from the mean (above it for a high, below it for a low), over ``MARGIN``: 1 is
the threshold. A sensor with heavy tails has records far from its mean and needs a larger
jump to break them; a quiet one breaks them with a smaller one.

The day's own readings join the bar when the day closes. Records that move with every
normal reading follow a slide: a machine cooling from 90 to 30 over a day, each reading a
little below the one before, never lies far past records that its previous readings set. So
once the records hold ``SETTLED_BLOCKS`` completed blocks (a week), a reading is judged
against the completed blocks and what was taken in from a flagged stretch since (a new
normal's level, at once); the current block's normal readings count for its mean only. A
younger sensor's records are judged with its current block, since they lie too close to its
mean to hold one day's wander. What this finds on nab-dev, and what it costs a sensor that
wanders (a random walk), is measured on docs/results/detection.md (docs/detection.md#records).

Kept per field in blocks of ``horizon / BLOCKS`` (a day by default): each block's highest,
lowest, sum and count, the oldest block dropped whole once the horizon has passed it.
Constant memory (about 3 KB a field once the horizon is full) and a few comparisons a
reading; the completed blocks' summary is recomputed only when a block closes.

The check starts once the records span ``MIN_SPAN`` (a day, so that a daily cycle has been
seen whole) and hold ``MIN_COUNT`` readings: before that, every afternoon of a sensor's
first day would break the records of its morning.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

BLOCKS = 30
MIN_SPAN = 86400.0
MIN_COUNT = 100
# Completed blocks the records need before a reading is judged against them without the
# current block's readings (see the module's docstring).
SETTLED_BLOCKS = 7
# A reading breaks its record when it lies past it by this share of the record's distance
# from the mean (nab-dev, python -m bench.eval_nab, with the other defaults: see
# docs/detection.md#records).
MARGIN = 1.0 / 3.0
# The record's distance from the mean is never taken as less than this share of its size
# (a sensor that has held one value is not infinitely surprised by the next).
FLOOR = 1e-6


class Tally:
    """Per field the highest, lowest and sum of some readings, and their count: a block
    of the records, or a stretch of readings held out of them."""

    __slots__ = ("cells", "fields")

    def __init__(self, fields: int, start: float = 0.0) -> None:
        self.fields = fields
        # [start, count, high * fields, low * fields, sum * fields]: one small array, not
        # a dozen float objects, since a sensor keeps BLOCKS of these.
        self.cells = array("d", [start, 0.0] + [-math.inf] * fields + [math.inf] * fields + [0.0] * fields)

    @property
    def start(self) -> float:
        return self.cells[0]

    @property
    def count(self) -> float:
        return self.cells[1]

    def add(self, values: Sequence[float]) -> None:
        c, f = self.cells, self.fields
        c[1] += 1.0
        for j, x in enumerate(values):
            if x > c[2 + j]:
                c[2 + j] = x
            if x < c[2 + f + j]:
                c[2 + f + j] = x
            c[2 + 2 * f + j] += x

    def merge(self, other: Tally) -> None:
        c, o, f = self.cells, other.cells, self.fields
        c[1] += o[1]
        for j in range(f):
            c[2 + j] = max(c[2 + j], o[2 + j])
            c[2 + f + j] = min(c[2 + f + j], o[2 + f + j])
            c[2 + 2 * f + j] += o[2 + 2 * f + j]


class RecentRecords:
    """One sensor's records over ``horizon`` seconds of its readings' clock (0: no records)."""

    __slots__ = ("horizon", "block_span", "_blocks", "_past", "_current", "_taken", "_first_at", "_last_at")

    def __init__(self, fields: int, horizon: float) -> None:
        self.horizon = horizon
        self.block_span = horizon / BLOCKS
        # Completed blocks, oldest first (a list: at most BLOCKS, and an empty deque alone
        # is 600 bytes a sensor).
        self._blocks: list[Tally] = []
        self._past = Tally(fields)  # the completed blocks together
        self._current: Tally | None = None
        self._taken: Tally | None = None  # the stretches taken into the current block
        self._first_at: float | None = None
        self._last_at: float | None = None

    def add(self, values: Sequence[float], at: float) -> None:
        """A normal reading at ``at`` (epoch seconds) joins the records."""
        if not self.horizon:
            return
        current = self._current
        if current is None or at - current.start >= self.block_span:
            if current is not None:
                self._blocks.append(current)
            current = self._current = Tally(self._past.fields, at)
            self._taken = None
            while self._blocks and at - self._blocks[0].start > self.horizon:
                del self._blocks[0]
            self._summarise()
        current.add(values)
        if self._first_at is None:
            self._first_at = at
        self._last_at = at if self._last_at is None else max(self._last_at, at)

    def take_in(self, stretch: Tally) -> None:
        """Readings held out while they were flagged are normal after all: they join the current
        block, and count as records at once."""
        if self._current is not None and stretch.count:
            self._current.merge(stretch)
            if self._taken is None:
                self._taken = Tally(self._past.fields)
            self._taken.merge(stretch)

    def excess(self, values: Sequence[float]) -> float:
        """How far the reading lies past the records, in MARGINs of each record's distance
        from the mean; the largest over its fields. 0 within the records, and while the
        records are too young to judge by. Once they are settled, the current block's
        normal readings are not records yet (see the module's docstring)."""
        current = self._current
        if current is None or self._first_at is None or self._last_at is None:
            return 0.0
        past, f = self._past.cells, self._past.fields
        cur = current.cells
        count = past[1] + cur[1]
        if count < MIN_COUNT or self._last_at - self._first_at < MIN_SPAN:
            return 0.0
        if len(self._blocks) < SETTLED_BLOCKS:
            bar = cur
        elif self._taken is not None:
            bar = self._taken.cells
        else:
            bar = past  # nothing taken in: the completed blocks alone
        worst = 0.0
        for j, x in enumerate(values):
            high = max(past[2 + j], bar[2 + j])
            low = min(past[2 + f + j], bar[2 + f + j])
            if low <= x <= high:
                continue
            mean = (past[2 + 2 * f + j] + cur[2 + 2 * f + j]) / count
            floor = FLOOR * max(1.0, abs(high), abs(low))
            beyond = (x - high) / max(high - mean, floor) if x > high else (low - x) / max(mean - low, floor)
            worst = max(worst, beyond)
        return worst / MARGIN

    def _summarise(self) -> None:
        past = Tally(self._past.fields)
        for block in self._blocks:
            past.merge(block)
        self._past = past


def record_score(excess: float, threshold: float) -> float:
    """A records excess as a score on the model's scale: ``threshold`` at 1 (``MARGIN``
    past the record), towards 1 beyond it, proportionally below it."""
    if excess <= 1.0:
        return threshold * excess
    return threshold + (1.0 - threshold) * math.tanh(excess - 1.0)
