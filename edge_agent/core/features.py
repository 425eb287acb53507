"""Streaming features of one sensor: the same code feeds training, replay and the live agent.

A ``FeatureSpec`` names, per input field, which transforms to compute; a
``FeatureState`` holds one sensor's recent history and turns each new reading
into a feature row. Features that are not yet defined (the change since the last
reading, before there is a last reading) come out as NaN; the model fills them
with the median it saw in training, so a sensor's first readings are scored on
what is known, not on invented zeros.

>>> spec = FeatureSpec(fields=("value",), transforms=("value", "delta", "std:3"))
>>> state = spec.new_state()
>>> [round(x, 3) for x in state.update([1.0])]
[1.0, nan, nan]
>>> [round(x, 3) for x in state.update([3.0])]
[3.0, 2.0, 1.414]
>>> [round(x, 3) for x in state.peek([5.0])]
[5.0, 2.0, 2.0]
>>> [round(x, 3) for x in state.update([2.0])]
[2.0, -1.0, 1.0]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

NAN = float("nan")

# The streaming features every model gets unless told otherwise: the reading, its
# change, how many readings in a row it repeated (a frozen sensor), its level
# smoothed over the last 30 readings (a shift of a few noise widths stands out
# there), how much it moved over the last ten, and how far its last ten have moved
# from its baseline over about 600 readings (a slow ramp; range-checked only), and the reading
# against the same time of day one day before and the same time of week one week before
# (each defined once a sensor has that cycle behind it).
DEFAULT_TRANSFORMS = ("value", "delta", "repeats", "mean:30", "std:10", "drift:600", "season:1d", "season:1w")

# name -> whether it takes a window size
TRANSFORMS = {
    "value": False, "delta": False, "repeats": False, "mean": True, "mean_dev": True, "std": True, "drift": True,
    "season": True,
}
# season:P (P a duration, 1d or 1w): the reading less the sensor's mean level at the same
# phase of the previous cycle of length P, by the readings' timestamps (so a value normal
# at noon and wrong at 3 a.m. stands out). A cycle is cut into SEASON_BUCKETS phases; the
# feature is NaN until the phase has a previous cycle, and for readings without a time.
SEASON_BUCKETS = 96
SEASONS = {"1d": 86400, "1w": 7 * 86400}
# A frozen sensor repeats its last value; counting stops here so the feature stays bounded.
MAX_REPEATS = 100
# drift:N compares the mean of a sensor's last DRIFT_RECENT readings with its baseline: the
# mean of every reading before them, exponentially weighted with a memory of N readings
# (a plain mean until there are N). It is undefined (NaN) until the baseline holds N
# readings, and it is checked against its learned range only, never given to the forest
# (see GUARD_ONLY): a slow feature seen over one learning hour gives a forest only a few
# independent samples, and a forest that also splits on it isolates ordinary readings.
DRIFT_RECENT = 10
# Transforms the model's range check watches but its forest does not see. A season is one
# for the same reasons as drift: it is NaN through a sensor's first day, and a forest must not
# lose those rows (a sensor that learns for an hour would have none to fit on); and a day of
# readings gives a forest few independent samples of it: with those first-day rows filled in,
# a forest that also split on it flagged a slow random walk (tests/test_alert_hygiene.py's, at
# a reading a minute) 18 times in seven days, where the range check alone flagged it never.
GUARD_ONLY = frozenset({"drift", "season"})


def parse_transform(name: str) -> tuple[str, int]:
    """Split ``"std:10"`` into ``("std", 10)``; windowless ones give a window of 0."""
    kind, _, arg = name.partition(":")
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown feature transform {name!r}; known: {', '.join(TRANSFORMS)}")
    if kind == "season":
        if arg not in SEASONS:
            raise ValueError(f"feature transform {name!r} needs a cycle of {' or '.join(SEASONS)}, as in season:1d")
        return kind, SEASONS[arg]
    if TRANSFORMS[kind]:
        if not arg.isdigit() or int(arg) < 2:
            raise ValueError(f"feature transform {name!r} needs a window of at least 2, as in {kind}:10")
        return kind, int(arg)
    if arg:
        raise ValueError(f"feature transform {kind!r} takes no window, got {name!r}")
    return kind, 0


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model is trained on: every transform of every field."""

    fields: tuple[str, ...]
    transforms: tuple[str, ...] = ("value",)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a feature spec needs at least one field")
        for t in self.transforms:
            parse_transform(t)

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(field, transform) of every feature, in feature order."""
        return [(f, t) for f in self.fields for t in self.transforms]

    @property
    def names(self) -> list[str]:
        return [f"{f}:{t}" if t != "value" else f for f, t in self.columns]

    @property
    def history(self) -> int:
        """Readings a reading's rolling features look back over (0 for value only); a drift
        baseline's memory is not counted: it is a slow average, not a window of readings."""
        windows = [_recent_window(*parse_transform(t)) for t in self.transforms]
        needs_prev = any(parse_transform(t)[0] == "delta" for t in self.transforms)
        return max(list(windows) + [1 if needs_prev else 0])

    @property
    def forest_columns(self) -> list[int]:
        """Indices of the features the forest sees (every one but the GUARD_ONLY transforms)."""
        return [i for i, (_, t) in enumerate(self.columns) if parse_transform(t)[0] not in GUARD_ONLY]

    @property
    def seasonal(self) -> list[int]:
        """Indices of the season:P features (defined only once a cycle has passed)."""
        return [i for i, (_, t) in enumerate(self.columns) if parse_transform(t)[0] == "season"]

    @property
    def baselines(self) -> dict[int, int]:
        """Feature index -> baseline memory of every drift:N feature."""
        parsed = [parse_transform(t) for _, t in self.columns]
        return {i: w for i, (kind, w) in enumerate(parsed) if kind == "drift"}

    def new_state(self) -> FeatureState:
        return FeatureState(self)

    def to_dict(self) -> dict[str, list[str]]:
        return {"fields": list(self.fields), "transforms": list(self.transforms)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[str]]) -> FeatureSpec:
        return cls(fields=tuple(d["fields"]), transforms=tuple(d["transforms"]))


def _recent_window(kind: str, w: int) -> int:
    """Readings, the current one included, a transform reads from the recent window."""
    return DRIFT_RECENT if kind == "drift" else 0 if kind == "season" else w


class _FieldWindow:
    """Recent values of one field, with running sums for O(1) mean and variance.

    Values are shifted by the first value seen so that the sums stay small and
    the variance keeps its precision on large readings (1013.25 hPa +- 0.01).
    ``baselines`` holds, per drift memory N, the weighted mean of the readings that
    have left the last DRIFT_RECENT, ``folded`` how many those are, and ``recent`` the
    sum of the last DRIFT_RECENT - 1 (what a drift adds the next reading to).
    """

    __slots__ = ("size", "values", "origin", "s1", "s2", "last", "repeats", "memories", "baselines", "folded", "recent")

    def __init__(self, size: int, memories: tuple[int, ...] = ()) -> None:
        self.size = size
        self.values: deque[float] = deque()
        self.origin: float | None = None
        self.s1 = 0.0
        self.s2 = 0.0
        self.last: float | None = None
        self.repeats = 0
        self.memories = memories
        self.baselines = [0.0] * len(memories)
        self.folded = 0
        self.recent = 0.0

    def copy(self) -> _FieldWindow:
        twin = _FieldWindow.__new__(_FieldWindow)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.values = self.values.copy()
        twin.baselines = list(self.baselines)
        return twin

    def step(self, x: float) -> None:
        """The reading comes after the last one: the change and the repeats count from it."""
        self.repeats = min(self.repeats + 1, MAX_REPEATS) if x == self.last else 0
        self.last = x

    def push(self, x: float, step: bool = True) -> None:
        """Take the reading into the windows (and, with ``step``, make it the last one)."""
        if self.origin is None:
            self.origin = x
        y = x - self.origin
        if self.size:
            self.values.append(y)
            self.s1 += y
            self.s2 += y * y
            if self.memories:
                self.recent += y
                if len(self.values) >= DRIFT_RECENT:
                    leaving = self.values[-DRIFT_RECENT]  # no longer among the last DRIFT_RECENT for the next reading
                    self.recent -= leaving
                    self._fold(leaving)
            if len(self.values) > self.size:
                old = self.values.popleft()
                self.s1 -= old
                self.s2 -= old * old
        if step:
            self.step(x)

    def _fold(self, y: float) -> None:
        self.folded += 1
        for i, n in enumerate(self.memories):
            self.baselines[i] += (y - self.baselines[i]) / min(self.folded, n)


class _SeasonProfile:
    """A field's mean level per phase of a cycle: this cycle's running sums, the last one's means.

    Its table is made at the second reading: until then the one reading is kept as it came
    (``first``), so an id that sends a single reading (a typo, a scan) costs no table.
    """

    __slots__ = ("period", "cells", "first")

    def __init__(self, period: int) -> None:
        self.period = period
        # rows: cycle number this phase was last seen in, its sum and count there, the
        # previous cycle's mean (NaN: not seen in the cycle before)
        self.cells: np.ndarray | None = None
        self.first: tuple[float, float] | None = None  # (reading, time) until the table is made

    def copy(self) -> _SeasonProfile:
        twin = _SeasonProfile.__new__(_SeasonProfile)
        twin.period, twin.first = self.period, self.first
        twin.cells = None if self.cells is None else self.cells.copy()
        return twin

    def _where(self, at: float) -> tuple[int, float]:
        cycle, phase = divmod(at, self.period)
        return min(int(phase * SEASON_BUCKETS / self.period), SEASON_BUCKETS - 1), cycle

    def expected(self, at: float) -> float:
        """The previous cycle's mean at this phase (NaN if there is none)."""
        b, cycle = self._where(at)
        if self.cells is None:
            if self.first is None:
                return NAN
            x, then = self.first
            return x if self._where(then) == (b, cycle - 1) else NAN
        seen = self.cells[0, b]
        if seen == cycle:
            return float(self.cells[3, b])
        if seen == cycle - 1:  # this phase has not come round in this cycle yet: its sums are last cycle's
            return float(self.cells[1, b] / self.cells[2, b])
        return NAN

    def push(self, x: float, at: float) -> None:
        if self.cells is None:
            if self.first is None:
                self.first = (x, at)
                return
            self.cells = np.full((4, SEASON_BUCKETS), NAN)
            self._add(*self.first)
            self.first = None
        self._add(x, at)

    def _add(self, x: float, at: float) -> None:
        assert self.cells is not None
        b, cycle = self._where(at)
        cells = self.cells
        seen = cells[0, b]
        if seen != cycle:
            cells[3, b] = cells[1, b] / cells[2, b] if seen == cycle - 1 else NAN
            cells[0, b], cells[1, b], cells[2, b] = cycle, 0.0, 0.0
        cells[1, b] += x
        cells[2, b] += 1.0


class FeatureState:
    """One sensor's history; ``update`` advances it, ``peek`` scores without advancing."""

    __slots__ = ("spec", "_plan", "_windows", "_width", "_seasons")

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._plan = [parse_transform(t) for t in spec.transforms]
        # Every windowed transform looks at the current reading and at most w - 1 before it.
        self._width = max([_recent_window(kind, w) - 1 for kind, w in self._plan if w] + [0])
        memories = tuple(w for kind, w in self._plan if kind == "drift")
        self._windows = [_FieldWindow(self._width, memories) for _ in spec.fields]
        periods = [w for kind, w in self._plan if kind == "season"]
        self._seasons = [[_SeasonProfile(p) for p in periods] for _ in spec.fields] if periods else None

    def update(self, values: Sequence[float], at: float | None = None) -> list[float]:
        """The reading's features (``at``: its time, epoch seconds), then take it into the state."""
        row = self._row(values, at)
        self.take_in(values, at)
        return row

    def copy(self) -> FeatureState:
        """An independent state that has seen what this one has (cheaper than copy.deepcopy)."""
        twin = FeatureState.__new__(FeatureState)
        twin.spec, twin._plan, twin._width = self.spec, self._plan, self._width
        twin._windows = [w.copy() for w in self._windows]
        twin._seasons = None if self._seasons is None else [[p.copy() for p in ps] for ps in self._seasons]
        return twin

    def take_in(self, values: Sequence[float], at: float | None = None, step: bool = True) -> None:
        """Take a reading into the windows, drift baselines and seasons; with ``step`` it is
        also the last reading (what the next one's change and repeats count from)."""
        for win, x in zip(self._windows, values, strict=True):
            win.push(x, step)
        if self._seasons is not None and at is not None:
            for profiles, x in zip(self._seasons, values, strict=True):
                for profile in profiles:
                    profile.push(x, at)

    def step(self, values: Sequence[float]) -> None:
        """A reading kept out of the windows still follows the last one: the next reading's
        change and repeats count from it."""
        for win, x in zip(self._windows, values, strict=True):
            win.step(x)

    def peek(self, values: Sequence[float], at: float | None = None) -> list[float]:
        return self._row(values, at)

    def rebase(self) -> None:
        """Take the recent level as every drift baseline: a change accepted as the new normal
        is no drift from it."""
        for win in self._windows:
            recent = min(len(win.values), DRIFT_RECENT - 1)
            if recent and win.memories:
                win.baselines = [win.recent / recent] * len(win.memories)

    def _row(self, values: Sequence[float], at: float | None) -> list[float]:
        row: list[float] = []
        for j, (win, x) in enumerate(zip(self._windows, values, strict=True)):
            origin = win.origin if win.origin is not None else x
            y = x - origin
            drifts = seasons = 0
            for kind, w in self._plan:
                if kind == "value":
                    row.append(x)
                elif kind == "season":
                    assert self._seasons is not None
                    row.append(NAN if at is None else x - self._seasons[j][seasons].expected(at))
                    seasons += 1
                elif kind == "drift":
                    row.append(_drift(win, y, drifts))
                    drifts += 1
                elif kind == "delta":
                    row.append(NAN if win.last is None else x - win.last)
                elif kind == "repeats":
                    # Readings in a row equal to this one, this one excluded.
                    row.append(NAN if win.last is None else float(min(win.repeats + 1, MAX_REPEATS)) if x == win.last else 0.0)
                else:
                    row.append(_window_stat(kind, win, y, w, origin))
        return row


def _drift(win: _FieldWindow, y: float, i: int) -> float:
    """The mean of the last DRIFT_RECENT readings (this one included) less the ``i``-th baseline."""
    if win.folded < win.memories[i]:
        return NAN
    return (win.recent + y) / DRIFT_RECENT - win.baselines[i]


def _window_stat(kind: str, win: _FieldWindow, y: float, w: int, origin: float) -> float:
    """mean / mean_dev / std over the last ``w`` readings (mean_dev: the current one against the others)."""
    n_prev = min(len(win.values), w - 1)
    if n_prev == 0:
        return NAN
    if n_prev == len(win.values):
        s1, s2 = win.s1, win.s2
    else:  # the window is longer than this transform's: sum only the newest n_prev
        recent = list(islice(reversed(win.values), n_prev))
        s1 = math.fsum(recent)
        s2 = math.fsum(v * v for v in recent)
    if kind == "mean_dev":
        return y - s1 / n_prev
    n = n_prev + 1
    if kind == "mean":
        return (s1 + y) / n + origin
    s1 += y
    s2 += y * y
    var = max(s2 - s1 * s1 / n, 0.0) / (n - 1)
    return math.sqrt(var)


def feature_matrix(spec: FeatureSpec, rows: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
    """Features of one sensor's readings in order (rows: n x len(fields)), as streamed;
    ``times``: each reading's time (epoch seconds; NaN or None: none)."""
    state = spec.new_state()
    if times is None:
        out = [state.update(r) for r in rows.tolist()]
    else:
        out = [state.update(r, None if t != t else t) for r, t in zip(rows.tolist(), times.tolist(), strict=True)]
    return np.array(out, dtype=np.float64).reshape(len(rows), len(spec.names))
