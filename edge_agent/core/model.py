"""A sensor model in memory: its features, forest, calibration and range guard, and how it scores.

Reading and writing models is edge_agent/model_files.py's job.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from edge_agent.core.features import MAX_REPEATS, FeatureSpec, parse_transform
from edge_agent.core.forest import Forest

FORMAT = "edge-agent-model/1"

# Calibration knots: training-score quantiles mapped to calibrated scores, the last
# (the training maximum, or the tail estimate below when it is higher) on 0.5, the
# default threshold: a reading is flagged when it is stranger than normal operation.
CALIBRATION_LEVELS = (0.0, 0.5, 0.9, 0.99, 1.0)
CALIBRATION_SCORES = (0.0, 0.2, 0.3, 0.4, 0.5)

# The maximum of n training scores is exceeded by about one normal reading in n + 1, so
# a model that learned from a few hundred readings would flag normal data every few
# hundred readings. The threshold is therefore placed no lower than the raw score a
# normal reading exceeds with probability THRESHOLD_RISK, estimated from the training
# scores' tail (peaks over a threshold, as extreme value theory does: the top TAIL_SHARE
# of them, their excesses taken as exponential). The exponential fit errs high on the
# light tails isolation forests give, so the threshold may also sit a little above the
# maximum of a large training set (the shipped vibration model: 0.724 -> 0.751 raw), where
# the maximum was already rare enough.
THRESHOLD_RISK = 1e-4
TAIL_SHARE = 0.05
MIN_TAIL_SCORES = 5


class ModelError(Exception):
    """A model that cannot be used: missing, malformed, or failing its integrity check."""


def _interp(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """np.interp for one value: linear between knots, flat beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    slope = (y1 - y0) / (x1 - x0)  # in numpy's order of operations, for the same last bit
    return slope * (x - x0) + y0


def tail_quantile(scores: np.ndarray, risk: float) -> float:
    """The score exceeded with probability ``risk``, from an exponential fit to the top
    TAIL_SHARE of ``scores``; -inf when there are too few of them to fit. Raw anomaly
    scores are at most 1, so the estimate stays halfway between the maximum and 1 at most:
    a threshold the forest could never reach would leave only the range check."""
    scores = np.asarray(scores, dtype=np.float64)
    u = float(np.quantile(scores, 1.0 - TAIL_SHARE)) if len(scores) else 0.0
    excesses = scores[scores > u] - u
    if len(excesses) < MIN_TAIL_SCORES or risk >= TAIL_SHARE:
        return -math.inf
    estimate = u + float(excesses.mean()) * math.log(TAIL_SHARE / risk)
    return min(estimate, (float(scores.max()) + 1.0) / 2)


@dataclass(frozen=True)
class Calibration:
    """Piecewise-linear map from the forest's raw anomaly score (0, 1] to [0, 1]."""

    raw: tuple[float, ...]
    score: tuple[float, ...]

    @classmethod
    def fit(cls, training_raw: np.ndarray) -> Calibration:
        q = np.quantile(training_raw, CALIBRATION_LEVELS)
        knots = list(np.maximum.accumulate(q))
        knots[-1] = max(knots[-1], tail_quantile(training_raw, THRESHOLD_RISK))
        # Strictly increasing knots keep np.interp well defined on constant data.
        for i in range(1, len(knots)):
            if knots[i] <= knots[i - 1]:
                knots[i] = np.nextafter(knots[i - 1], np.inf)
        top = max(1.0, float(knots[-1]) + 1e-9)
        return cls(raw=tuple(float(k) for k in knots) + (top,), score=CALIBRATION_SCORES + (1.0,))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        calibrated: np.ndarray = np.interp(raw, self.raw, self.score)
        return calibrated

    def to_dict(self) -> dict[str, list[float]]:
        return {"raw": list(self.raw), "score": list(self.score)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        raw, score = tuple(map(float, d["raw"])), tuple(map(float, d["score"]))
        if len(raw) != len(score) or len(raw) < 2 or any(b <= a for a, b in itertools.pairwise(raw)):
            raise ValueError("calibration needs two equally long lists with increasing 'raw' knots")
        return cls(raw=raw, score=score)


# A feature further outside its training range than this share of that range makes
# the reading anomalous on its own. An isolation forest scores a point beyond the
# training data by its emptiest split, so one extreme feature among several normal
# ones barely moves its score: this bound keeps "never seen anything like it" loud.
# The margin shrinks as training grows, since a range seen in few readings
# understates the real one: 20 / sqrt(rows), from a whole range for 400 rows (the
# SKAB protocol's learning period) down to a tenth of it from 40,000 rows on.
RANGE_MARGIN = 1.0


# The level of a wandering field may leave its training range by up to this many
# ranges before it counts: a warm-up drifts, a broken sensor reading 50 instead of 1 jumps.
WANDERING_MARGIN = 10.0

# A season:P feature is range-checked only when training saw it defined on this many readings.
MIN_SEASONAL_ROWS = 100


# At most this many training readings per side of a feature are left out of its range as
# lone extremes (see RangeGuard.without_lone_extremes).
LONE_EXTREMES = 10


def range_margin(training_rows: int) -> float:
    return float(min(RANGE_MARGIN, max(0.1, 20.0 / np.sqrt(max(training_rows, 1)))))


def normal_repeats(repeats: np.ndarray) -> float:
    """The longest run of repeats a sensor's own readings make plausible: where a run
    gets as rare as THRESHOLD_RISK, taking each reading to repeat the last with chance
    ``q`` (a run of r then has probability q^r). A sensor with a coarse resolution (an
    integer %RH, a count) repeats by itself, and the longest run in its training readings
    understates how long such runs get.

    ``q`` is the share of the n training readings that repeated the last one, counted
    as Laplace's rule of succession does, (repeats + 1) / (n + 2): none in an hour of
    readings does not make a repeat impossible, only rarer than about one in n. A
    sensor with 4-decimal readings that seldom repeats shows none in many a learning
    hour, and its every later repeat would be a false alarm; with this
    q it may repeat once, and twice is stuck. Only from about 10,000 training readings
    on is an unseen repeat rare enough (q under THRESHOLD_RISK) to count at once."""
    if not len(repeats):
        return 0.0
    q = (float(np.count_nonzero(repeats >= 1)) + 1.0) / (len(repeats) + 2.0)
    return float(max(0, min(math.ceil(math.log(THRESHOLD_RISK) / math.log(q)) - 1, MAX_REPEATS)))


@dataclass(frozen=True)
class RangeGuard:
    """Per-feature training range; readings well outside it score over the threshold.

    ``margin`` is per feature, in multiples of that feature's training range: the
    level of a field that wanders in normal operation (a temperature warming up)
    gets a wider one than a field that holds steady. An infinite margin leaves a
    feature unchecked (a drift baseline that training never filled); the manifest
    writes it as null.
    """

    low: np.ndarray
    high: np.ndarray
    margin: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, margin: np.ndarray) -> RangeGuard:
        return cls(low=x.min(axis=0), high=x.max(axis=0), margin=np.asarray(margin, dtype=np.float64))

    def without_lone_extremes(self, x: np.ndarray) -> RangeGuard:
        """The guard with each training extreme left out of the range while the guard fitted
        on the readings below it would flag it (up to LONE_EXTREMES per side of a feature).

        One bad reading while a sensor learns (a glitch of 10 noise widths) would otherwise
        stretch the range to include it, and every later spike up to its size would pass. An
        extreme that recurs (the daily step of a machine that starts and stops) has a twin
        among the rest and stays in the range, as does a tail that thins out gradually.
        """
        low, high = self.low.copy(), self.high.copy()
        for j in range(x.shape[1]):
            values, m = np.sort(x[:, j]), self.margin[j]
            top, bottom = len(values) - 1, 0
            while top > bottom and len(values) - 1 - top < LONE_EXTREMES:
                rest_high = values[top - 1]
                if not (rest_high > values[bottom] and values[top] > rest_high + m * (rest_high - values[bottom])):
                    break
                top -= 1
            while bottom < top and bottom < LONE_EXTREMES:
                rest_low = values[bottom + 1]
                if not (values[top] > rest_low and values[bottom] < rest_low - m * (values[top] - rest_low)):
                    break
                bottom += 1
            low[j], high[j] = values[bottom], values[top]
        return RangeGuard(low, high, self.margin)

    def symmetric(self, columns: list[int]) -> RangeGuard:
        """The guard with the range of ``columns`` made symmetric about 0, as wide as its
        larger side. A drift (a departure from the baseline) is judged by its size in
        either direction: a learning hour in which a pump's fluid warmed steadily has only
        positive drifts, and a pause in the warming must not then look strange. (SKAB's
        anomaly-free recording learned on the device: 464 of 5,805 readings flagged with
        the one-sided range, 120 with this one, 115 without a drift feature.)"""
        low, high = self.low.copy(), self.high.copy()
        for i in columns:
            high[i] = max(abs(low[i]), abs(high[i]))
            low[i] = -high[i]
        return RangeGuard(low, high, self.margin)

    @cached_property
    def spread(self) -> np.ndarray:
        """The training range of each feature, never zero (a constant feature gets a sliver)."""
        spread: np.ndarray = np.maximum(self.high - self.low, 1e-6 * np.maximum(1.0, np.maximum(np.abs(self.high), np.abs(self.low))))
        return spread

    def excess(self, x: np.ndarray) -> np.ndarray:
        """How far each row lies beyond range and margin, in multiples of the range (<= 0 inside)."""
        beyond: np.ndarray = np.maximum(x - self.high, self.low - x) / self.spread - self.margin
        worst: np.ndarray = beyond.max(axis=1)
        return worst

    def score(self, x: np.ndarray, threshold: float) -> np.ndarray:
        """0 within range and margin; else from ``threshold`` towards 1 as the excess grows."""
        e = self.excess(x)
        return np.where(e > 0, threshold + (1.0 - threshold) * np.tanh(np.maximum(e, 0.0)), 0.0)

    def to_dict(self) -> dict[str, Any]:
        margin = [m if math.isfinite(m) else None for m in self.margin.tolist()]
        return {"low": self.low.tolist(), "high": self.high.tolist(), "margin": margin}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RangeGuard:
        low, high = np.asarray(d["low"], dtype=np.float64), np.asarray(d["high"], dtype=np.float64)
        margin = np.asarray([math.inf if m is None else m for m in d["margin"]], dtype=np.float64)
        if not (low.shape == high.shape == margin.shape) or low.ndim != 1:
            raise ValueError("range low, high and margin must be lists of one length")
        return cls(low, high, margin)


@dataclass(frozen=True)
class SensorModel:
    """Everything needed to score a sensor: features, forest, imputation, calibration."""

    name: str
    version: str
    sha256: str
    spec: FeatureSpec
    forest: Forest
    impute: np.ndarray
    calibration: Calibration
    range_guard: RangeGuard
    manifest: Mapping[str, Any]

    @property
    def fields(self) -> tuple[str, ...]:
        return self.spec.fields

    def score_row(self, row: list[float]) -> tuple[float, float]:
        """``score_features`` of one row, in plain Python: an idle agent's one reading at a time.

        Numpy's per-call overhead on a handful of values costs more than the arithmetic,
        so the steps below are the same as the vectorised ones, done on floats.
        """
        x = [m if v != v else v for v, m in zip(row, self._impute, strict=True)]  # NaN != NaN
        cols = self._forest_columns
        raw = self.forest.anomaly_score_one(np.asarray(x if cols is None else [x[i] for i in cols]))
        calibrated = _interp(raw, self.calibration.raw, self.calibration.score)
        g = self._guard
        excess = max(
            max(v - hi, lo - v) / spread - margin for v, lo, hi, spread, margin in zip(x, g[0], g[1], g[2], g[3], strict=True)
        )
        if excess > 0:
            threshold = CALIBRATION_SCORES[-1]
            calibrated = max(calibrated, threshold + (1.0 - threshold) * math.tanh(excess))
        return raw, calibrated

    @cached_property
    def _impute(self) -> list[float]:
        values: list[float] = self.impute.tolist()
        return values

    @cached_property
    def _forest_columns(self) -> list[int] | None:
        """The features the forest sees, or None when it sees them all."""
        cols = self.spec.forest_columns
        return None if len(cols) == len(self.spec.names) else cols

    def forest_input(self, x: np.ndarray) -> np.ndarray:
        """The columns of a feature matrix that the forest (and its scikit-learn estimator) takes."""
        cols = self._forest_columns
        return x if cols is None else x[:, cols]

    @cached_property
    def _guard(self) -> tuple[list[float], list[float], list[float], list[float]]:
        g = self.range_guard
        return g.low.tolist(), g.high.tolist(), g.spread.tolist(), g.margin.tolist()

    def score_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated scores of a feature matrix (NaN features take the training median)."""
        x = np.where(np.isnan(features), self.impute, features)
        raw = self.forest.anomaly_score(self.forest_input(x))
        threshold = CALIBRATION_SCORES[-1]
        return raw, np.maximum(self.calibration(raw), self.range_guard.score(x, threshold))


def build_model(
    name: str,
    version: str,
    spec: FeatureSpec,
    forest: Forest,
    features: np.ndarray,
    training: Mapping[str, Any],
    wandering_levels: np.ndarray | None = None,
    all_features: np.ndarray | None = None,
) -> SensorModel:
    """Assemble a model from a fitted forest and the training feature matrix it saw
    (every feature: the forest takes ``spec.forest_columns`` of them).

    ``all_features``: the rows before any outliers were left out (default: ``features``).
    How often a sensor repeats itself is a share of all its readings: an outlier filter
    takes rare repeats out as readily as a stuck stretch, and would leave none.

    A drift:N feature is checked only when training saw it defined on at least N rows,
    a baseline's memory: a range learned from less says little about its normal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column NaN throughout: a drift baseline never filled
        impute = np.nanmedian(features, axis=0) if len(features) else np.zeros(features.shape[1])
    impute = np.where(np.isnan(impute), 0.0, impute)
    x = np.where(np.isnan(features), impute, features)
    forest_x = x[:, spec.forest_columns]
    calibration = Calibration.fit(forest.anomaly_score(forest_x))
    margin = np.full(x.shape[1], range_margin(len(x)))
    if wandering_levels is not None:
        margin[np.asarray(wandering_levels, dtype=bool)] = WANDERING_MARGIN
    baselines = spec.baselines
    for i, memory in baselines.items():
        defined = int(np.count_nonzero(~np.isnan(features[:, i])))
        margin[i] = range_margin(defined) if defined >= memory else math.inf
    for i in spec.seasonal:
        # A season's range from less than a few hours of readings with a previous cycle says little.
        defined = int(np.count_nonzero(~np.isnan(features[:, i])))
        if defined < MIN_SEASONAL_ROWS:
            margin[i] = math.inf
        elif wandering_levels is None or not wandering_levels[i]:
            margin[i] = range_margin(defined)
    guard = RangeGuard.fit(x, margin).without_lone_extremes(x)
    if baselines:
        guard = guard.symmetric(list(baselines))
    repeats = np.array([parse_transform(t)[0] == "repeats" for _, t in spec.columns], dtype=bool)
    if repeats.any() and len(x):
        every = x if all_features is None else all_features
        high = guard.high.copy()
        high[repeats] = np.maximum(high[repeats], [normal_repeats(every[:, i]) for i in np.flatnonzero(repeats)])
        guard = RangeGuard(guard.low, high, guard.margin)
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "features": spec.to_dict(),
        "feature_names": spec.names,
        "impute": impute.tolist(),
        "calibration": calibration.to_dict(),
        # The raw forest score that calibrates to the default decision threshold.
        "threshold": {"calibrated": CALIBRATION_SCORES[-1], "raw": calibration.raw[len(CALIBRATION_SCORES) - 1]},
        "range": guard.to_dict(),
        "training": dict(training),
    }
    return SensorModel(name, version, "", spec, forest, impute, calibration, guard, manifest)


