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

    Float arrays (~17 bytes a reading with its flag and time): a deque of Python lists
    costs about ten times that, which matters when every sensor of a site keeps an hour of
    readings to learn from. They start small and double as readings come, up to
    ``capacity``: a sensor id that sends one reading (a typo, a flood) costs a few hundred
    bytes here, not the ~120 KB of a full history (bench/bench_sensor_memory.py).
    """

    __slots__ = ("_rows", "_flags", "_times", "_next", "_full", "capacity")

    INITIAL = 8

    def __init__(self, capacity: int, n_fields: int) -> None:
        self.capacity = capacity
        size = min(self.INITIAL, capacity)
        self._rows = np.empty((size, n_fields), dtype=np.float64)
        self._flags = np.zeros(size, dtype=bool)
        self._times = np.full(size, np.nan)
        self._next = 0
        self._full = False

    def append(self, values: Sequence[float], flagged: bool = False, at: float | None = None) -> None:
        if self._next == len(self._rows) and not self._full:
            self._grow()
        self._rows[self._next] = values
        self._flags[self._next] = flagged
        self._times[self._next] = np.nan if at is None else at
        self._next += 1
        if self._next == self.capacity:
            self._next, self._full = 0, True

    def _grow(self) -> None:
        size = min(2 * len(self._rows), self.capacity)
        self._rows = np.concatenate([self._rows, np.empty((size - len(self._rows), self._rows.shape[1]))])
        self._flags = np.concatenate([self._flags, np.zeros(size - len(self._flags), dtype=bool)])
        self._times = np.concatenate([self._times, np.full(size - len(self._times), np.nan)])

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + self._flags.nbytes + self._times.nbytes

    def __len__(self) -> int:
        return self.capacity if self._full else self._next

    def _ordered(self, a: np.ndarray, n: int | None) -> np.ndarray:
        ordered: np.ndarray = np.concatenate([a[self._next:], a[: self._next]]) if self._full else a[: self._next]
        copied: np.ndarray = ordered[-n:].copy() if n is not None else ordered.copy()
        return copied

    def latest(self, n: int | None = None) -> np.ndarray:
        """The newest ``n`` readings (all by default), oldest first, as a copy."""
        return self._ordered(self._rows, n)

    def latest_flags(self, n: int | None = None) -> np.ndarray:
        """Whether each of ``latest(n)`` was flagged."""
        return self._ordered(self._flags, n)

    def latest_times(self, n: int | None = None) -> np.ndarray:
        """The time of each of ``latest(n)`` (NaN where a reading had none)."""
        return self._ordered(self._times, n)


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
