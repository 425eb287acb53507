"""Fitting an Isolation Forest with numpy alone, for models learned on the device.

``edge-agent train`` fits with scikit-learn; a sensor that learns on the edge
cannot import it (the running agent stays small), so this module grows the same
kind of trees (Liu, Ting and Zhou 2008, as scikit-learn does: random feature,
uniform random threshold between the node's min and max, depth limit
ceil(log2(max_samples))) and hands them to ``Forest.from_sklearn``, which only
reads the tree arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge_agent.core.forest import Forest, float32_floor


@dataclass
class _Tree:
    """The arrays ``Forest.from_sklearn`` reads from an sklearn tree (``tree_``)."""

    children_left: list[int] = field(default_factory=list)
    children_right: list[int] = field(default_factory=list)
    feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    n_node_samples: list[int] = field(default_factory=list)

    def add(self, n: int) -> int:
        self.children_left.append(-1)
        self.children_right.append(-1)
        self.feature.append(-2)
        self.threshold.append(-2.0)
        self.n_node_samples.append(n)
        return len(self.n_node_samples) - 1


@dataclass
class _Estimator:
    tree_: _Tree


@dataclass
class _FittedForest:
    """Duck-typed like a fitted ``sklearn.ensemble.IsolationForest``."""

    estimators_: list[_Estimator]
    estimators_features_: list[np.ndarray]
    n_features_in_: int
    max_samples_: int


def _grow(x: np.ndarray, rng: np.random.Generator, max_depth: int) -> _Tree:
    tree = _Tree()
    stack = [(tree.add(len(x)), x, 0)]
    while stack:
        node, rows, depth = stack.pop()
        if depth >= max_depth or len(rows) <= 1:
            continue
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        candidates = np.flatnonzero(hi > lo)
        if not len(candidates):
            continue  # every row alike: nothing left to isolate
        f = int(rng.choice(candidates))
        t = float(rng.uniform(lo[f], hi[f]))
        if not lo[f] <= t < hi[f]:
            t = float(lo[f])
        # The largest float32 <= t splits float32 rows exactly as t does, and lets the
        # forest keep float32 thresholds alone (see Forest): the same trees, half the bytes.
        t = float(float32_floor(np.array([t]))[0])
        go_left = rows[:, f] <= t
        left, right = rows[go_left], rows[~go_left]
        tree.feature[node], tree.threshold[node] = f, t
        tree.children_left[node] = tree.add(len(left))
        tree.children_right[node] = tree.add(len(right))
        stack.append((tree.children_right[node], right, depth + 1))
        stack.append((tree.children_left[node], left, depth + 1))
    return tree


def fit_forest(x: np.ndarray, trees: int = 100, max_samples: int = 256, seed: int = 0) -> Forest:
    """An Isolation Forest on the rows of ``x`` (no NaN), as plain arrays.

    Rows are compared as float32, like scikit-learn's trees see them, so a model
    scores the same whichever library grew it.
    """
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 rows of features to fit a forest, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError("training features contain NaN")
    rng = np.random.default_rng(seed)
    n_samples = min(max_samples, len(x))
    max_depth = max(1, math.ceil(math.log2(max(n_samples, 2))))
    estimators = []
    for _ in range(trees):
        sample = x[rng.choice(len(x), size=n_samples, replace=False)]
        estimators.append(_Estimator(_grow(sample, rng, max_depth)))
    fitted = _FittedForest(
        estimators_=estimators,
        estimators_features_=[np.arange(x.shape[1])] * trees,
        n_features_in_=x.shape[1],
        max_samples_=n_samples,
    )
    return Forest.from_sklearn(fitted)
