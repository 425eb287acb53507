"""When a sensor learns, refits and takes a new normal in: the policy, per sensor, no I/O.

A sensor with no assigned model learns from its first readings: for ``period`` seconds
by its readings' own clocks (and at least MIN_LEARNING_ROWS readings), or until it has
``rows`` of them. Its model is then refitted on its most recent readings:

- while it knows fewer than ``refit_rows`` readings, as soon as as many new ones have come
  (a sensor scored after a short first look learns from 2x, 4x, ... as much);
- after that, every ``refit_every`` seconds, less a share of it (up to ``refit_jitter``)
  fixed by the sensor's id: sensors that started together (a restart, a site switched
  on at once) then refit spread over that stretch, not all in the same second;
- at once when an episode of it has become its new normal (see ``episodes``), on every
  recent reading, flagged or not.

A refit leaves out the flagged readings and those within a feature window of one (an
anomaly's edges are seldom flagged, and rolling features carry it on), unless more than
``stale_share`` of the readings since the last fit were flagged: the model is then stale,
and it learns from all of them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec

# A forest learned from fewer readings says little: a sensor reporting every 5 minutes
# learns for ~4 hours with the default hour-long period.
MIN_LEARNING_ROWS = 50


@dataclass(frozen=True)
class LearningPlan:
    """How sensors without an assigned model learn one of their own (see ``LearningConfig``)."""

    period: float = 3600.0
    rows: int = 3600
    refit_every: float = 3600.0
    refit_jitter: float = 0.25  # share of refit_every by which a sensor's refits come early, fixed by its id
    refit_rows: int = 7200
    stale_share: float = 0.5
    leave_out_outliers: bool = False
    features: tuple[str, ...] = DEFAULT_TRANSFORMS  # the streaming features of each field

    @property
    def capacity(self) -> int:
        """Readings a sensor keeps for its next fit."""
        return max(self.rows, self.refit_rows)


@dataclass(frozen=True)
class LearnRequest:
    """A sensor's readings, in order, for the learner to fit a model on (away from scoring)."""

    sensor_id: str
    spec: FeatureSpec
    values: np.ndarray
    refit: bool
    times: np.ndarray | None = None  # each reading's time (epoch seconds), for seasonal features and the alarm budget
    keep: np.ndarray | None = None  # the rows to learn from (None: all); features still see every row
    leave_out_outliers: bool = False  # and of those, not the ones a first forest finds far out


class History:
    """The last ``capacity`` readings of one sensor, whether each was flagged, and its time.

    Float arrays: a deque of Python lists costs about ten times as much, which matters when
    every sensor of a site keeps hours of readings to learn from. They start small and double
    as readings come, up to ``capacity``: a sensor id that sends one reading (a typo, a flood)
    costs a few hundred bytes here (bench/bench_sensor_memory.py).

    Held as float32 offsets, 9 bytes a reading instead of 17: values from each field's first
    finite value and times from the first time, so precision follows how far a sensor's
    readings move, not their magnitude (an energy meter at 1,000,000 Wh keeps its 0.001 steps;
    a 64-bit epoch second in float32 would be 128 s coarse). Offsets too large for float32
    switch the values to float64; times are rebased every ``REBASE`` seconds.
    """

    __slots__ = ("_rows", "_flags", "_times", "_next", "_full", "capacity", "_origin", "_epoch")

    INITIAL = 8
    REBASE = 2.0**20  # seconds (12 days) of offset at most: float32 keeps them to 1/8 s
    WIDEST = 1e30  # a value offset beyond this is held in float64

    def __init__(self, capacity: int, n_fields: int) -> None:
        self.capacity = capacity
        size = min(self.INITIAL, capacity)
        self._rows = np.empty((size, n_fields), dtype=np.float32)
        self._flags = np.zeros(size, dtype=bool)
        self._times = np.full(size, np.nan, dtype=np.float32)
        self._origin = np.full(n_fields, np.nan)  # each field's first finite value
        self._epoch = math.nan  # the time offsets are from
        self._next = 0
        self._full = False

    def append(self, values: Sequence[float], flagged: bool = False, at: float | None = None) -> None:
        if self._next == len(self._rows) and not self._full:
            self._grow()
        row = np.asarray(values, dtype=np.float64)
        unset = np.isnan(self._origin)
        if unset.any():  # a field's first finite value (its readings so far were all NaN)
            first = unset & np.isfinite(row)
            self._origin[first] = row[first]
        offset = row - self._origin
        if self._rows.dtype == np.float32 and np.nanmax(np.abs(offset), initial=0.0) > self.WIDEST:
            self._rows = self._rows.astype(np.float64)
        self._rows[self._next] = offset
        self._flags[self._next] = flagged
        self._times[self._next] = np.nan if at is None else self._time_offset(at)
        self._next += 1
        if self._next == self.capacity:
            self._next, self._full = 0, True

    def _time_offset(self, at: float) -> float:
        if math.isnan(self._epoch):
            self._epoch = at
        elif abs(at - self._epoch) > self.REBASE:
            self._times = (self._times.astype(np.float64) + (self._epoch - at)).astype(np.float32)
            self._epoch = at
        return at - self._epoch

    def _grow(self) -> None:
        size = min(2 * len(self._rows), self.capacity)
        more = size - len(self._rows)
        self._rows = np.concatenate([self._rows, np.empty((more, self._rows.shape[1]), dtype=self._rows.dtype)])
        self._flags = np.concatenate([self._flags, np.zeros(more, dtype=bool)])
        self._times = np.concatenate([self._times, np.full(more, np.nan, dtype=np.float32)])

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + self._flags.nbytes + self._times.nbytes + self._origin.nbytes

    def __len__(self) -> int:
        return self.capacity if self._full else self._next

    def _ordered(self, a: np.ndarray, n: int | None) -> np.ndarray:
        ordered: np.ndarray = np.concatenate([a[self._next:], a[: self._next]]) if self._full else a[: self._next]
        return ordered[-n:] if n is not None else ordered

    def latest(self, n: int | None = None) -> np.ndarray:
        """The newest ``n`` readings (all by default), oldest first, as a new float64 array."""
        values: np.ndarray = self._origin + self._ordered(self._rows, n).astype(np.float64)
        return values

    def latest_flags(self, n: int | None = None) -> np.ndarray:
        """Whether each of ``latest(n)`` was flagged."""
        flags: np.ndarray = self._ordered(self._flags, n).copy()
        return flags

    def latest_times(self, n: int | None = None) -> np.ndarray:
        """The time of each of ``latest(n)`` (NaN where a reading had none)."""
        times: np.ndarray = self._epoch + self._ordered(self._times, n).astype(np.float64)
        return times


class SensorAdaptation:
    """One learning sensor's readings and fit bookkeeping; says when a fit is due."""

    __slots__ = ("plan", "sensor_id", "spec", "history", "started_at", "fitted_at", "since_fit",
                 "flagged_since_fit", "fitting", "known", "refit_after", "holding_off")

    def __init__(self, plan: LearningPlan, sensor_id: str, spec: FeatureSpec, known: int = 0) -> None:
        """``known``: readings the sensor's current model learned from (0: it has none yet)."""
        self.plan = plan
        self.sensor_id = sensor_id
        self.spec = spec
        self.history = History(plan.capacity, len(spec.fields))
        self.started_at: float | None = None
        self.fitted_at: float | None = None
        self.since_fit = 0
        self.flagged_since_fit = 0
        self.fitting = False
        self.known = known
        self.refit_after = plan.refit_every * (1.0 - plan.refit_jitter * share_of(sensor_id))
        self.holding_off = 0  # readings to wait before asking for a fit again, after one failed

    def learning(self, values: Sequence[float], at: float) -> LearnRequest | None:
        """A reading while the sensor has no model; the first fit's request once it has learned enough."""
        self.history.append(values, at=at)
        if self.started_at is None:
            self.started_at = at
        n = len(self.history)
        enough = n >= self.plan.rows or (n >= MIN_LEARNING_ROWS and at - self.started_at >= self.plan.period)
        if self.holding_off:
            self.holding_off -= 1
            return None
        if self.fitting or not enough:
            return None
        return self._request(at, None, refit=False, keep=None)

    def scored(self, values: Sequence[float], flagged: bool, at: float) -> LearnRequest | None:
        """A scored reading of a sensor with a learned model; a refit's request when one is due."""
        plan = self.plan
        self.history.append(values, flagged, at)
        self.since_fit += 1
        self.flagged_since_fit += flagged
        if self.fitted_at is None:
            self.fitted_at = at  # a model loaded from disk: its age counts from its first reading here
        if not plan.refit_every or self.fitting or len(self.history) < MIN_LEARNING_ROWS:
            return None
        known = self.known or plan.refit_rows
        if known < plan.refit_rows:
            due = self.since_fit >= max(known, MIN_LEARNING_ROWS)
        else:
            due = at - self.fitted_at >= self.refit_after
        if not due:
            return None
        stale = self.flagged_since_fit > plan.stale_share * self.since_fit
        keep = None if stale else ~near(self.history.latest_flags(plan.refit_rows), self.spec.history)
        return self._request(at, plan.refit_rows, refit=True, keep=keep)

    def new_normal(self, at: float) -> LearnRequest | None:
        """The sensor's lasting change is its normal now: refit on every recent reading."""
        if self.fitting or len(self.history) < MIN_LEARNING_ROWS:
            return None
        return self._request(at, self.plan.refit_rows, refit=True, keep=None)

    def _request(self, at: float, rows: int | None, refit: bool, keep: np.ndarray | None) -> LearnRequest:
        """A fit on the newest ``rows`` readings (None: all kept)."""
        values = self.history.latest(rows)
        times = self.history.latest_times(rows)
        self.fitting = True
        self.fitted_at = at
        self.known = len(values)
        return LearnRequest(self.sensor_id, self.spec, values, refit=refit, keep=keep,
                            leave_out_outliers=self.plan.leave_out_outliers,
                            times=None if np.isnan(times).all() else times)

    def settled(self) -> None:
        """The requested fit is done (installed) or has failed: count afresh from here."""
        self.fitting = False
        self.since_fit = self.flagged_since_fit = 0

    def failed(self) -> None:
        """The requested fit failed or was refused (a busy learner): ask again only after
        MIN_LEARNING_ROWS more readings, not with every reading (each ask copies the history)."""
        self.settled()
        self.holding_off = MIN_LEARNING_ROWS


def share_of(sensor_id: str) -> float:
    """A number in [0, 1) fixed by the sensor id (the same on every agent and every restart)."""
    digest = hashlib.sha256(sensor_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def near(flags: np.ndarray, reach: int) -> np.ndarray:
    """Whether each reading is flagged or within ``reach`` readings of a flagged one."""
    if reach <= 0 or not flags.any():
        return flags
    return np.convolve(flags.astype(np.float64), np.ones(2 * reach + 1), mode="same") > 0.5
