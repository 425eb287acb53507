"""Numpy-only Isolation Forest evaluator that reproduces scikit-learn's ``score_samples``.

A fitted ``sklearn.ensemble.IsolationForest`` is flattened into one node table for
all trees (see ``Forest``); scoring then needs numpy alone, which keeps scikit-learn
and scipy off the edge device. Scores match scikit-learn's bit for bit in practice
(the tests hold them to 1e-12): inputs are rounded to float32 exactly as sklearn's
input validation does, and the per-tree path lengths are added in sklearn's order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

FORMAT_VERSION = 1
NODE_ARRAYS = ("feature", "threshold", "left", "nan_right", "path_length")
SCALARS = ("n_features", "max_samples", "max_depth")
# Tree-steps per block in batch scoring: the ~6 (n_trees, rows) work arrays then stay
# in L2 cache; measured best between 16k and 64k on a 2 MiB-L2 Xeon.
BLOCK_CELLS = 32_768
# Batches of at least this many blocks are shared between threads (numpy's gathers
# and comparisons release the GIL, so two cores nearly double throughput).
THREADED_MIN_BLOCKS = 8
MAX_THREADS = 4
# Univariate forests are scored by a lookup table over their distinct thresholds
# unless that table would take long to build.
MAX_STEP_TABLE = 65_536
MAX_DEPTH_LIMIT = 64
# A single reading branches all nodes of the first levels at once while they number at
# most this many per tree (about 5 levels of a 256-sample tree; measured best).
SINGLE_ROW_PREFIX_PER_TREE = 24


def average_path_length(n_samples: ArrayLike) -> np.ndarray:
    """sklearn's ``_average_path_length``: c(n), the mean depth of an n-sample isolation tree."""
    n = np.asarray(n_samples)
    out = np.zeros(n.shape, dtype=np.float64)
    # Same masks and operation order as sklearn, so the floats agree to the last bit.
    mask_2 = n == 2
    rest = ~((n <= 1) | mask_2)
    out[mask_2] = 1.0
    n_rest = n[rest]
    out[rest] = 2.0 * (np.log(n_rest - 1.0) + np.euler_gamma) - 2.0 * (n_rest - 1.0) / n_rest
    return out


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold.

    For a float32 input v, ``v <= t`` (sklearn's test, done in float64) holds exactly
    when ``v <= floor32(t)``, so comparisons can stay in float32: half the memory
    traffic of float64, and no widening of the input.
    """
    with np.errstate(over="ignore"):
        rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _scalar(arrays: Mapping[str, Any], name: str) -> int:
    value = np.asarray(arrays[name])
    if value.shape != () or value.dtype.kind not in "iu":
        raise ValueError(f"forest array {name!r} must be an integer scalar, got {value.dtype} {value.shape}")
    return int(value)


def _typed(value: Any, name: str, kinds: str, dtype: type) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in kinds:
        raise ValueError(f"forest array {name!r} must be 1-D of kind {kinds!r}, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def _index_type(count: int) -> type:
    """The smallest unsigned type that holds indexes below ``count``."""
    for kind in (np.uint8, np.uint16, np.uint32):
        if count <= np.iinfo(kind).max + 1:
            return kind
    return np.int64


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def _node_depths(forest: SimpleNamespace) -> np.ndarray:
    """Each node's depth (roots 0); ValueError unless the table is trees the kernel can walk."""
    n_nodes = forest.left.shape[0]
    if n_nodes == 0 or forest.roots.shape[0] == 0:
        raise ValueError("forest has no trees")
    for name in NODE_ARRAYS:
        if getattr(forest, name).shape != (n_nodes,):
            raise ValueError(f"forest array {name!r} has shape {getattr(forest, name).shape}, expected ({n_nodes},)")
    if forest.n_features < 1 or forest.max_samples < 1:
        raise ValueError(f"forest needs n_features >= 1 and max_samples >= 1, got {forest.n_features}, {forest.max_samples}")
    if not 0 <= forest.max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"forest max_depth {forest.max_depth} is outside [0, {MAX_DEPTH_LIMIT}]")
    roots = forest.roots
    if roots[0] < 0 or np.any(np.diff(roots) <= 0) or roots[-1] >= n_nodes:
        raise ValueError("forest roots must increase strictly and lie inside the node table")
    if np.any((forest.feature < 0) | (forest.feature >= forest.n_features)):
        raise ValueError(f"forest has a feature index outside [0, {forest.n_features})")
    if np.any(np.isnan(forest.threshold)):
        raise ValueError("forest has a NaN threshold")
    index = np.arange(n_nodes)
    leaf = forest.left == index
    # Leaves point at themselves with threshold +inf, so extra descent steps keep them put.
    if np.any(forest.threshold[leaf] != np.inf) or np.any(forest.nan_right[leaf]):
        raise ValueError("forest leaves must have threshold +inf and send NaN left")
    if not np.all(np.isfinite(forest.path_length[leaf])) or np.any(forest.path_length[leaf] < 0):
        raise ValueError("forest leaves need finite, non-negative path lengths")
    internal = ~leaf
    left = forest.left[internal]
    # Children after their parent, so every walk ends.
    if np.any(left <= index[internal]) or np.any(left + 1 >= n_nodes):
        raise ValueError("forest child index out of range (children must follow their parent)")
    # Exactly one parent for every node but the roots: disjoint trees, nothing shared or orphaned.
    parents = np.bincount(np.concatenate([left, left + 1]), minlength=n_nodes)
    expected = np.ones(n_nodes, dtype=parents.dtype)
    expected[roots] = 0
    if not np.array_equal(parents, expected):
        raise ValueError("forest nodes do not form disjoint trees below the given roots")
    depth = np.zeros(n_nodes, dtype=np.int64)
    level = roots
    for step in range(1, forest.max_depth + 1):
        inner = level[internal[level]]
        level = np.concatenate([forest.left[inner], forest.left[inner] + 1])
        depth[level] = step
    if np.any(internal[level]):
        raise ValueError(f"forest has paths deeper than its max_depth {forest.max_depth}")
    return depth


@dataclass(frozen=True, eq=False)
class StepTable:
    """A univariate forest as a step function: ``score = scores[searchsorted(cuts, x)]``."""

    cuts: np.ndarray  # distinct float32-floored internal thresholds, ascending
    scores: np.ndarray  # score of the interval (cuts[k-1], cuts[k]], one more than cuts


class Forest:
    """All trees of a fitted IsolationForest, stacked into one node table.

    Per node: ``feature`` (index in the ORIGINAL feature space), ``threshold`` (go
    right when ``x > threshold``), ``left`` (the left child; the right child is
    ``left + 1``), ``nan_right`` (where a NaN goes, sklearn's missing-value rule) and,
    for leaves, ``path_length`` (sklearn's depth + c(n_node_samples) - 1, with root
    depth 1). Leaves have ``left`` = themselves and threshold +inf, so one step
    ``node = left[node] + (x[feature[node]] > threshold[node])`` advances every tree
    at once without branches, and ``max_depth`` steps reach every leaf.
    ``roots`` holds each tree's root. Any order with children after their parent is
    valid; ``from_sklearn`` stores nodes level-major (all roots, then all depth-1
    nodes, ...), which lets ``score_one`` branch the first levels in one go.

    Held compactly, since a site may keep a thousand learned forests: the smallest
    integer types that hold the feature and child indexes, float32-floored thresholds
    (the float64 ones only when they differ, as scikit-learn's midpoints do), and each
    node's path length as a small code into its few distinct values (one per leaf
    depth and size): about 8-10 bytes a node instead of 53 (a learned model's forest
    ~110 KB instead of ~700 KB), and the same scores to the last bit. The public arrays are rebuilt in their int64/float64 form on request.

    ``wide=True`` trades memory for speed, for a forest that many sensors share (a
    shipped model): ``score_one`` then walks pointer-width copies of ``left`` and
    ``feature`` (16 bytes a node more). numpy's ``take`` converts small-typed indexes on
    every call, which makes a compact forest's single reading about a third slower
    (``python -m bench.bench_scoring`` measures both).
    """

    __slots__ = (
        "_denominator",
        "_feature",
        "_left",
        "_nan_right",
        "_path_code",
        "_path_values",
        "_prefix_size",
        "_prefix_steps",
        "_root_feature",
        "_root_left",
        "_root_threshold32",
        "_roots",
        "_steps",
        "_threshold32",
        "_threshold64",
        "_walk_feature",
        "_walk_left",
        "max_depth",
        "max_samples",
        "n_features",
        "normaliser",
        "roots",
    )

    def __init__(
        self, feature: ArrayLike, threshold: ArrayLike, left: ArrayLike, nan_right: ArrayLike, path_length: ArrayLike,
        roots: ArrayLike, n_features: int, max_samples: int, max_depth: int, *, wide: bool = False,
    ) -> None:
        full = SimpleNamespace(
            feature=_typed(feature, "feature", "iu", np.int64),
            threshold=_typed(threshold, "threshold", "f", np.float64),
            left=_typed(left, "left", "iu", np.int64),
            nan_right=_typed(nan_right, "nan_right", "b", np.bool_),
            path_length=_typed(path_length, "path_length", "f", np.float64),
            roots=_typed(roots, "roots", "iu", np.int64),
            n_features=int(n_features), max_samples=int(max_samples), max_depth=int(max_depth),
        )
        depth = _node_depths(full)
        self.roots = _frozen(full.roots)
        self.n_features, self.max_samples, self.max_depth = full.n_features, full.max_samples, full.max_depth
        self.normaliser = float(average_path_length(np.array([self.max_samples]))[0])
        self._denominator = self.n_trees * self.normaliser  # as sklearn: n_trees * c(max_samples)
        self._feature = _frozen(full.feature.astype(_index_type(self.n_features)))
        self._left = _frozen(full.left.astype(_index_type(full.left.shape[0])))
        self._roots = self.roots.astype(np.intp)
        self._threshold32 = _frozen(float32_floor(full.threshold))
        exact = np.array_equal(self._threshold32.astype(np.float64), full.threshold)
        self._threshold64 = None if exact else _frozen(full.threshold)
        self._nan_right = _frozen(full.nan_right) if full.nan_right.any() else None
        values, code = np.unique(full.path_length, return_inverse=True)
        self._path_values = _frozen(values)
        self._path_code = _frozen(code.reshape(-1).astype(_index_type(values.shape[0])))
        self._root_feature = self._feature[self._roots].astype(np.intp)
        self._root_threshold32 = self._threshold32[self._roots]
        self._root_left = self._left[self._roots].astype(np.intp)
        self._steps = self._build_step_table()
        # A step table scores a one-feature forest's reading without a walk.
        walks = wide and self._steps is None
        self._walk_left = _frozen(full.left.astype(np.intp)) if walks else None
        self._walk_feature = _frozen(full.feature.astype(np.intp)) if walks else None
        self._prefix_steps, self._prefix_size = _single_row_prefix(depth, self.n_trees, self.max_depth)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise AttributeError(f"Forest is immutable: cannot set {name}")
        object.__setattr__(self, name, value)

    @property
    def feature(self) -> np.ndarray:
        return _frozen(self._feature.astype(np.int64))

    @property
    def threshold(self) -> np.ndarray:
        return self._threshold64 if self._threshold64 is not None else _frozen(self._threshold32.astype(np.float64))

    @property
    def left(self) -> np.ndarray:
        return _frozen(self._left.astype(np.int64))

    @property
    def nan_right(self) -> np.ndarray:
        return self._nan_right if self._nan_right is not None else _frozen(np.zeros(self.n_nodes, dtype=np.bool_))

    @property
    def path_length(self) -> np.ndarray:
        return _frozen(self._path_values[self._path_code])

    @property
    def nbytes(self) -> int:
        """Bytes of the node arrays held (what a model's forest costs in memory)."""
        held = (self._feature, self._left, self._threshold32, self._threshold64, self._nan_right, self._path_code,
                self._path_values, self.roots, self._roots, self._root_feature, self._root_threshold32, self._root_left,
                self._walk_left, self._walk_feature)
        steps = self._steps
        return sum(a.nbytes for a in held if a is not None) + (steps.cuts.nbytes + steps.scores.nbytes if steps else 0)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self._left.shape[0])

    # ----------------------------------------------------------------- building

    @classmethod
    def from_sklearn(cls, estimator: Any, *, wide: bool = False) -> Forest:
        """Flatten a fitted ``sklearn.ensemble.IsolationForest`` (duck-typed, sklearn not imported)."""
        try:
            trees = list(estimator.estimators_)
            tree_features = list(estimator.estimators_features_)
            n_features = int(estimator.n_features_in_)
        except AttributeError as exc:
            raise ValueError(f"not a fitted IsolationForest: {exc}") from exc
        # sklearn normalises by c(_max_samples) and subsets features iff _max_features != n_features.
        max_samples = int(getattr(estimator, "_max_samples", None) or estimator.max_samples_)
        max_features = getattr(estimator, "_max_features", None)
        parts: list[dict[str, np.ndarray]] = []
        offset = 0
        for tree, features in zip(trees, tree_features, strict=True):
            subset = (len(features) if max_features is None else int(max_features)) != n_features
            part = _flatten_tree(tree.tree_, np.asarray(features, dtype=np.int64) if subset else None, offset)
            parts.append(part)
            offset += part["left"].shape[0]
        if not parts:
            raise ValueError("not a fitted IsolationForest: it has no trees")
        nodes = {name: np.concatenate([p[name] for p in parts]) for name in (*NODE_ARRAYS, "depth")}
        # Level-major order (all roots, then all depth-1 nodes, ...; stable, so siblings
        # stay adjacent): the first levels form a prefix, which single readings exploit.
        order = np.argsort(nodes["depth"], kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(order.shape[0])
        columns = {name: nodes[name][order] for name in NODE_ARRAYS}
        columns["left"] = position[columns["left"]]
        return cls(
            **columns,
            roots=np.sort(position[[p["root"] for p in parts]]),
            n_features=n_features,
            max_samples=max_samples,
            max_depth=int(nodes["depth"].max()),
            wide=wide,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The forest as plain arrays (what ``save`` writes)."""
        # The int64/float64 arrays of format 1, whatever this forest holds in memory.
        arrays = {name: np.array(getattr(self, name)) for name in (*NODE_ARRAYS, "roots")}
        arrays.update({name: np.array(getattr(self, name), dtype=np.int64) for name in SCALARS})
        arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], *, wide: bool = False) -> Forest:
        """Rebuild a forest from ``to_arrays`` output; ValueError if anything is missing or inconsistent."""
        missing = [name for name in (*NODE_ARRAYS, "roots", *SCALARS, "format_version") if name not in arrays]
        if missing:
            raise ValueError(f"forest arrays missing: {', '.join(missing)}")
        version = _scalar(arrays, "format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"forest format version {version} is not supported (expected {FORMAT_VERSION})")
        return cls(
            arrays["feature"], arrays["threshold"], arrays["left"], arrays["nan_right"], arrays["path_length"],
            arrays["roots"], *(_scalar(arrays, name) for name in SCALARS), wide=wide,
        )

    # ----------------------------------------------------------------- scoring

    def score_samples(self, X: ArrayLike, n_threads: int | None = None) -> np.ndarray:
        """sklearn's ``IsolationForest.score_samples``: in [-1, 0), lower is more anomalous.

        ``n_threads`` caps the threads used for large batches (default: up to 4 cores).
        """
        rows = self._rows(X)
        if rows.shape[0] == 1:
            return np.array([self._score_row(rows[0])])
        if self._steps is not None:
            return self._score_by_table(rows, n_threads)
        return self._score_by_descent(rows, n_threads)

    def anomaly_score(self, X: ArrayLike, n_threads: int | None = None) -> np.ndarray:
        """The paper's anomaly score, ``-score_samples``: in (0, 1], higher is more anomalous."""
        return -self.score_samples(X, n_threads)

    def score_one(self, x: ArrayLike) -> float:
        """``score_samples`` of a single reading given as a 1-D array of ``n_features`` values."""
        row = np.asarray(x, dtype=np.float32)
        if row.shape != (self.n_features,):
            raise ValueError(f"expected a reading of {self.n_features} values, got shape {row.shape}")
        return self._score_row(row)

    def anomaly_score_one(self, x: ArrayLike) -> float:
        """``anomaly_score`` of a single reading."""
        return -self.score_one(x)

    def _rows(self, X: ArrayLike) -> np.ndarray:
        # sklearn validates to float32 before descending; values beyond float32 become
        # +-inf (numpy warns about that overflow here just as it does inside sklearn).
        rows = np.ascontiguousarray(X, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n_rows, {self.n_features}), got {rows.shape}")
        return rows

    def _score_row(self, row: np.ndarray) -> float:
        if self._steps is not None and not math.isnan(row[0]):
            return float(self._steps.scores[np.searchsorted(self._steps.cuts, row[0])])
        # Without a node that sends NaN right, NaN compares False and goes left, as sklearn
        # sends it: the walk below is right for it too.
        if self._nan_right is not None and any(map(math.isnan, row.tolist())):  # 4x cheaper than np.isnan(...).any()
            return float(self._score_block(row[np.newaxis, :])[0])
        wide = self._walk_left is not None and self._walk_feature is not None
        left = self._walk_left if wide else self._left
        feature = self._walk_feature if wide else self._feature
        assert left is not None and feature is not None
        threshold = self._threshold32
        node = self._roots
        if self._prefix_steps:
            # Level-major layout: the nodes of the first levels are a prefix of the table.
            # Branching all of them at once (3 numpy calls) is cheaper than 6 calls a level.
            size = self._prefix_size
            following = left[:size] + (row.take(feature[:size]) > threshold[:size])
            for _ in range(self._prefix_steps):
                node = following.take(node)
        for _ in range(self.max_depth - self._prefix_steps):
            if wide:
                node = left.take(node) + (row.take(feature.take(node)) > threshold.take(node))
            else:  # kept pointer-wide (dtype=): take converts a small-typed index on every call
                node = np.add(left.take(node), row.take(feature.take(node)) > threshold.take(node), dtype=np.intp)
        # accumulate adds tree after tree, in sklearn's order (a plain sum pairs them up).
        return float(self._score_depth(np.add.accumulate(self._path_values.take(self._path_code.take(node)))[-1]))

    def _score_by_table(self, rows: np.ndarray, n_threads: int | None) -> np.ndarray:
        assert self._steps is not None
        column = rows[:, 0]
        scores = self._steps.scores[np.searchsorted(self._steps.cuts, column)]
        missing = np.isnan(column)
        if missing.any():  # NaN follows each node's missing-value rule, not an interval
            scores[missing] = self._score_by_descent(rows[missing], n_threads)
        return scores

    def _score_by_descent(self, rows: np.ndarray, n_threads: int | None) -> np.ndarray:
        n_rows = rows.shape[0]
        scores = np.empty(n_rows, dtype=np.float64)
        block = max(1, BLOCK_CELLS // self.n_trees)
        starts = range(0, n_rows, block)

        def run(start: int) -> None:
            scores[start : start + block] = self._score_block(rows[start : start + block])

        workers = _thread_count(len(starts), n_threads)
        if workers <= 1:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forest") as pool:
                list(pool.map(run, starts))
        return scores

    def _score_block(self, rows: np.ndarray) -> np.ndarray:
        return self._score_leaves(self._descend(rows))

    def _descend(self, rows: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree, shape (n_trees, n_rows), for float32 rows."""
        n_rows = rows.shape[0]
        shape = (self.n_trees, n_rows)
        values = rows.reshape(-1)
        row_offset = (np.arange(n_rows, dtype=np.intp) * self.n_features)[np.newaxis, :]
        has_nan = bool(np.isnan(values).any())
        node = np.empty(shape, dtype=np.intp)
        child = np.empty(shape, dtype=self._left.dtype)  # gathered in the stored (small) types, widened on the add
        column = np.empty(shape, dtype=self._feature.dtype)
        cell = np.empty(shape, dtype=np.intp)
        value = np.empty(shape, dtype=np.float32)
        cut = np.empty(shape, dtype=np.float32)
        right = np.empty(shape, dtype=np.bool_)
        # First step: every row is at the roots, whose feature, threshold and child need no gather.
        np.take(rows.T, self._root_feature, axis=0, out=value, mode="wrap")
        np.greater(value, self._root_threshold32[:, np.newaxis], out=right)
        nan_right = self._nan_right
        if has_nan and nan_right is not None:
            right |= np.isnan(value) & nan_right[self._roots][:, np.newaxis]
        np.add(self._root_left[:, np.newaxis], right, out=node)
        # mode="wrap": indices are validated in range, and the default mode="raise"
        # copies the whole output buffer when out= is given (3x slower).
        for _ in range(self.max_depth - 1):
            np.take(self._feature, node, out=column, mode="wrap")
            np.add(column, row_offset, out=cell)
            np.take(values, cell, out=value, mode="wrap")
            np.take(self._threshold32, node, out=cut, mode="wrap")
            np.greater(value, cut, out=right)
            if has_nan and nan_right is not None:  # NaN compares False; sklearn routes it by the node's missing-value side
                right |= np.isnan(value) & nan_right.take(node)
            np.take(self._left, node, out=child, mode="wrap")
            np.add(child, right, out=node)
        return node

    def _score_leaves(self, leaves: np.ndarray) -> np.ndarray:
        """Scores from the leaf reached in every tree, shape (n_trees, n_rows)."""
        lengths = self._path_values.take(self._path_code.take(leaves))
        # sklearn adds the trees' path lengths one tree after another; accumulate does
        # the same (a plain sum may pair them up), so the floats agree to the last bit.
        np.add.accumulate(lengths, axis=0, out=lengths)
        return np.asarray(self._score_depth(lengths[-1]))

    def _score_depth(self, depth: Any) -> Any:
        """sklearn's ``-2 ** (-depth / (n_trees * c(max_samples)))`` (numpy's power, as sklearn)."""
        if self._denominator == 0.0:  # max_samples == 1: sklearn defines the ratio as 1
            return -np.power(2.0, -np.ones_like(depth))
        return -np.power(2.0, -(depth / self._denominator))

    def _build_step_table(self) -> StepTable | None:
        """For one feature, the score is a step function of x with steps at the thresholds."""
        if self.n_features != 1:
            return None
        internal = self.left != np.arange(self.n_nodes)
        cuts = np.unique(self._threshold32[internal])
        if cuts.shape[0] > MAX_STEP_TABLE:
            return None
        # Every float32 x in (cuts[k-1], cuts[k]] takes the same branches as cuts[k]
        # itself (and x > cuts[-1] the same as +inf), so scoring those points fills the table.
        probes = np.append(cuts, np.float32(np.inf))[:, np.newaxis]
        return StepTable(cuts=_frozen(cuts), scores=_frozen(self._score_by_descent(probes, 1)))


def _single_row_prefix(depth: np.ndarray, n_trees: int, max_depth: int) -> tuple[int, int]:
    """How many first levels a single reading branches in one go, and their node count.

    Only for level-major tables (depths non-decreasing along the table), where the
    nodes above depth k are exactly the first ``count(depth < k)`` entries.
    """
    if np.any(np.diff(depth) < 0):
        return 0, 0
    steps, size = 0, 0
    for k in range(1, max_depth + 1):
        below = int(np.searchsorted(depth, k))
        if below > SINGLE_ROW_PREFIX_PER_TREE * n_trees:
            break
        steps, size = k, below
    return steps, size


def _thread_count(n_blocks: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, min(int(requested), n_blocks))
    if n_blocks < THREADED_MIN_BLOCKS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _flatten_tree(tree: Any, features: np.ndarray | None, offset: int) -> dict[str, Any]:
    """One sklearn tree in breadth-first order (siblings adjacent), its indices shifted by ``offset``.

    ``depth`` is each node's depth with the root at 0.
    """
    children_left = np.asarray(tree.children_left, dtype=np.int64)
    children_right = np.asarray(tree.children_right, dtype=np.int64)
    is_leaf = children_left == -1
    order_levels: list[np.ndarray] = []
    level = np.array([0], dtype=np.int64)
    while level.size:
        if len(order_levels) > MAX_DEPTH_LIMIT:
            raise ValueError(f"tree deeper than {MAX_DEPTH_LIMIT} levels")
        order_levels.append(level)
        inner = level[~is_leaf[level]]
        level = np.stack([children_left[inner], children_right[inner]], axis=1).reshape(-1)
    order = np.concatenate(order_levels)
    if order.shape[0] != children_left.shape[0]:
        raise ValueError("tree has unreachable or shared nodes")
    depth = np.concatenate([np.full(lv.shape[0], d, dtype=np.int64) for d, lv in enumerate(order_levels)])
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    leaf = is_leaf[order]
    new_index = np.arange(order.shape[0]) + offset
    left = np.where(leaf, new_index, position[np.where(leaf, 0, children_left[order])] + offset)
    feature = np.asarray(tree.feature, dtype=np.int64)[order]
    feature = np.where(leaf, 0, feature)
    if features is not None:
        feature = np.where(leaf, 0, features[feature])
    # Exactly sklearn's per-leaf term: node depth (root = 1) + c(n_node_samples) - 1.0.
    average = average_path_length(np.asarray(tree.n_node_samples))[order]
    path_length = np.where(leaf, ((depth + 1).astype(np.float64) + average) - 1.0, 0.0)
    missing_left = np.asarray(getattr(tree, "missing_go_to_left", np.ones(order.shape[0])), dtype=bool)[order]
    return {
        "feature": feature,
        "threshold": np.where(leaf, np.inf, np.asarray(tree.threshold, dtype=np.float64)[order]),
        "left": left,
        "nan_right": ~missing_left & ~leaf,
        "path_length": path_length,
        "root": offset,
        "depth": depth,
    }
