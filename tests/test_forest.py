"""The numpy forest evaluator must score exactly as scikit-learn's IsolationForest does."""

from __future__ import annotations

import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from edge_agent.core.forest import Forest, average_path_length
from edge_agent.model_files import load_forest, save_forest

# Values beyond float32 overflow to inf on the way in, with numpy's warning (sklearn's too).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

ATOL = 1e-12  # the brief asks for 1e-9; the evaluator is meant to be bit-exact


def fit(X: np.ndarray, **params: Any) -> tuple[IsolationForest, Forest]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_samples > n_samples warns; that case is wanted
        estimator = IsolationForest(**params).fit(X)
    return estimator, Forest.from_sklearn(estimator)


def sklearn_scores(estimator: IsolationForest, X: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow to float32 inf warns in some numpy versions
        return estimator.score_samples(X)


def threshold_probes(forest: Forest, base: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Rows whose one column sits on, or one float64/float32 step either side of, a split threshold."""
    internal = np.flatnonzero(forest.left != np.arange(forest.n_nodes))
    if internal.size == 0:
        return np.empty((0, forest.n_features))
    chosen = rng.choice(internal, size=min(limit, internal.size), replace=False)
    rows = []
    for node in chosen:
        t = forest.threshold[node]
        t32 = np.float32(t)
        for value in (t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), float(t32),
                      float(np.nextafter(t32, np.float32(np.inf))), float(np.nextafter(t32, np.float32(-np.inf)))):
            row = base.copy()
            row[forest.feature[node]] = value
            rows.append(row)
    return np.array(rows)


def probe_rows(forest: Forest, X_train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_features = X_train.shape[1]
    scale = np.std(X_train, axis=0) + 1.0
    center = np.median(X_train, axis=0)
    extremes = np.array([np.inf, -np.inf, 1e39, -1e39, 0.0, -0.0, 3.4028235e38])
    parts = [
        X_train[:200],
        center + rng.normal(size=(300, n_features)) * scale * 2,
        threshold_probes(forest, center, 60, rng),
        np.repeat(extremes[:, None], n_features, axis=1),
    ]
    return np.vstack([p for p in parts if len(p)])


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


def training_data(kind: str, n_rows: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(size=(n_rows, n_features)) * rng.uniform(0.1, 100, n_features) + rng.uniform(-50, 50, n_features)
    if kind == "integers":  # many duplicated values and rows
        return rng.integers(0, 4, size=(n_rows, n_features)).astype(np.float64)
    if kind == "constant_column":
        X = rng.normal(size=(n_rows, n_features))
        X[:, 0] = 7.25
        return X
    if kind == "duplicated_rows":
        return np.repeat(rng.normal(size=(max(1, n_rows // 4), n_features)), 4, axis=0)[:n_rows]
    if kind == "float32_edges":  # values just apart in float64 that collapse in float32
        X = rng.normal(size=(n_rows, n_features))
        X[1::2] = np.nextafter(X[::2][: len(X[1::2])], np.inf)
        return X
    raise AssertionError(kind)


CASES = [
    # (n_rows, n_features, kind, params)
    (2, 1, "normal", {}),
    (3, 1, "normal", {}),
    (3, 2, "integers", {}),
    (10, 1, "normal", {"bootstrap": True}),
    (10, 3, "normal", {"max_features": 0.5}),
    (10, 4, "duplicated_rows", {"max_samples": 8}),
    (40, 1, "integers", {}),
    (60, 2, "constant_column", {"max_features": 1}),
    (200, 5, "normal", {"max_features": 0.6, "bootstrap": True}),
    (300, 3, "float32_edges", {"max_samples": 0.5}),
    (300, 1, "float32_edges", {}),
    (500, 6, "normal", {"max_features": 3}),
    (800, 2, "duplicated_rows", {"bootstrap": True, "max_samples": 100}),
    (1000, 1, "normal", {"max_samples": 512}),
    (3000, 4, "normal", {"max_samples": 1000, "max_features": 0.75}),
    (2000, 2, "integers", {"max_features": 0.5, "bootstrap": True}),
]


@pytest.mark.parametrize(("n_rows", "n_features", "kind", "params"), CASES)
def test_batch_and_single_scores_match_sklearn(n_rows: int, n_features: int, kind: str, params: dict[str, Any]) -> None:
    rng = np.random.default_rng(n_rows * 31 + n_features)
    X = training_data(kind, n_rows, n_features, rng)
    estimator, forest = fit(X, n_estimators=30, random_state=int(rng.integers(1 << 30)), **params)
    probes = probe_rows(forest, X, rng)
    expected = sklearn_scores(estimator, probes)
    assert_same(forest.score_samples(probes), expected)
    assert_same(forest.anomaly_score(probes), -expected)
    singles = np.array([forest.score_one(row) for row in probes[::7]])
    assert_same(singles, expected[::7])
    wide = Forest.from_sklearn(estimator, wide=True)  # a shared model's walk tables: same scores
    assert_same(np.array([wide.score_one(row) for row in probes[::7]]), expected[::7])


def test_many_seeded_random_forests_match_sklearn() -> None:
    rng = np.random.default_rng(2024)
    for _ in range(60):
        n_features = int(rng.integers(1, 6))
        n_rows = int(rng.choice([2, 3, 5, 17, 64, 257, 1500]))
        kind = str(rng.choice(["normal", "integers", "constant_column", "duplicated_rows", "float32_edges"]))
        params: dict[str, Any] = {
            "n_estimators": int(rng.integers(1, 25)),
            "bootstrap": bool(rng.integers(2)),
            "max_features": float(rng.choice([1.0, 0.5, 0.34])),
            "max_samples": ["auto", 0.7, 40][int(rng.integers(3))],
            "random_state": int(rng.integers(1 << 30)),
        }
        X = training_data(kind, n_rows, n_features, rng)
        estimator, forest = fit(X, **params)
        probes = probe_rows(forest, X, rng)
        context = f"{kind} {n_rows}x{n_features} {params}"
        np.testing.assert_allclose(forest.score_samples(probes), sklearn_scores(estimator, probes), rtol=0, atol=ATOL, err_msg=context)


def test_features_are_mapped_back_to_the_original_columns() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 6))
    estimator, forest = fit(X, n_estimators=20, max_features=2, random_state=3)
    used = set(forest.feature[forest.left != np.arange(forest.n_nodes)].tolist())
    # Each tree sees 2 columns renumbered 0..1; the forest must reference the real ones.
    assert used - {0, 1}
    X_test = rng.normal(size=(500, 6)) * 2
    assert_same(forest.score_samples(X_test), sklearn_scores(estimator, X_test))


def test_float32_rounding_decides_the_branch_as_in_sklearn() -> None:
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 2)) * 1000
    estimator, forest = fit(X, n_estimators=40, random_state=0)
    internal = np.flatnonzero(forest.left != np.arange(forest.n_nodes))
    rows, flips = [], 0
    for node in internal:
        t = forest.threshold[node]
        above = np.nextafter(t, np.inf)  # > t in float64, but may round to <= t in float32
        flips += bool(np.float32(above) <= t)
        row = np.median(X, axis=0)
        row[forest.feature[node]] = above
        rows.append(row)
    assert flips > 0, "probe set never exercises float32 rounding"
    probes = np.array(rows)
    assert_same(forest.score_samples(probes), sklearn_scores(estimator, probes))


def test_nan_follows_sklearn_missing_value_routing() -> None:
    rng = np.random.default_rng(8)
    for n_features in (1, 3):
        X = rng.normal(size=(500, n_features))
        estimator, forest = fit(X, n_estimators=25, random_state=n_features)
        probes = rng.normal(size=(200, n_features))
        probes[rng.random(probes.shape) < 0.3] = np.nan
        probes[0] = np.nan
        expected = sklearn_scores(estimator, probes)
        assert_same(forest.score_samples(probes), expected)
        assert_same(np.array([forest.score_one(r) for r in probes[:20]]), expected[:20])
        wide = Forest.from_sklearn(estimator, wide=True)
        assert_same(np.array([wide.score_one(r) for r in probes[:20]]), expected[:20])


def test_single_training_sample_scores_like_sklearn() -> None:
    X = np.array([[1.0, 2.0]])
    estimator, forest = fit(X, n_estimators=5, random_state=0)
    probes = np.array([[1.0, 2.0], [50.0, -3.0]])
    assert forest.normaliser == 0.0
    assert_same(forest.score_samples(probes), sklearn_scores(estimator, probes))


def test_large_forest_and_batch_match_with_threads() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 4))
    estimator, forest = fit(X, n_estimators=100, random_state=42)
    X_test = rng.normal(size=(20_000, 4)) * 1.5
    expected = sklearn_scores(estimator, X_test)
    single_thread = forest.score_samples(X_test, n_threads=1)
    assert_same(single_thread, expected)
    np.testing.assert_array_equal(forest.score_samples(X_test, n_threads=2), single_thread)
    as_float32 = X_test[:500].astype(np.float32)
    assert_same(forest.score_samples(as_float32), sklearn_scores(estimator, as_float32))
    as_ints = np.rint(X_test[:50] * 3).astype(int).tolist()  # plain lists of ints, as JSON might give
    assert_same(forest.score_samples(as_ints), sklearn_scores(estimator, np.array(as_ints)))
    assert np.all((forest.anomaly_score(X_test) > 0) & (forest.anomaly_score(X_test) <= 1))


def test_single_row_path_agrees_with_batch_path() -> None:
    rng = np.random.default_rng(4)
    for n_features in (1, 3):
        X = rng.normal(size=(400, n_features))
        _, forest = fit(X, n_estimators=50, random_state=1)
        X_test = rng.normal(size=(300, n_features)) * 3
        batch = forest.score_samples(X_test)
        one_by_one = np.array([forest.score_one(row) for row in X_test])
        np.testing.assert_array_equal(one_by_one, batch)
        assert forest.anomaly_score_one(X_test[0]) == -batch[0]
        np.testing.assert_array_equal(forest.score_samples(X_test[:1]), batch[:1])


def test_hand_built_forest_in_tree_by_tree_order() -> None:
    # Two trees stored one after another (not level-major): x0 <= 0.5 ? (x1 <= -1 ? A : B) : C,
    # and x1 <= 2 ? D : E; the leaves' path lengths are made up, distinct values.
    leaf = np.inf
    forest = Forest(
        feature=np.array([0, 1, 0, 0, 0, 1, 0, 0]),
        threshold=np.array([0.5, -1.0, leaf, leaf, leaf, 2.0, leaf, leaf]),
        left=np.array([1, 3, 2, 3, 4, 6, 6, 7]),
        nan_right=np.zeros(8, dtype=bool),
        path_length=np.array([0, 0, 1.5, 2.0, 2.25, 0, 1.0, 3.0]),
        roots=np.array([0, 5]),
        n_features=2,
        max_samples=4,
        max_depth=2,
    )
    c4 = 2.0 * (np.log(3.0) + np.euler_gamma) - 2.0 * 3.0 / 4.0
    cases = {(0.0, -5.0): 2.0 + 1.0, (0.0, 0.0): 2.25 + 1.0, (1.0, 3.0): 1.5 + 3.0, (0.5, 2.0): 2.25 + 1.0}
    for x, depth in cases.items():
        expected = -(2.0 ** (-depth / (2 * c4)))
        assert forest.score_one(np.array(x)) == pytest.approx(expected, abs=1e-12)
        assert forest.score_samples(np.array([x, x]))[0] == pytest.approx(expected, abs=1e-12)


def test_average_path_length_matches_sklearn_rules() -> None:
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 4, 10, 255, 256, 100_000])
    np.testing.assert_array_equal(average_path_length(n), _average_path_length(n))
    assert average_path_length(np.array([1, 2])).tolist() == [0.0, 1.0]


@pytest.fixture(scope="module")
def multivariate() -> tuple[IsolationForest, Forest]:
    X = np.random.default_rng(9).normal(size=(1000, 3))
    return fit(X, n_estimators=40, random_state=7, max_features=0.67)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=64), min_size=3, max_size=3))
def test_arbitrary_readings_match_sklearn(multivariate: tuple[IsolationForest, Forest], values: list[float]) -> None:
    estimator, forest = multivariate
    row = np.array([values])
    expected = sklearn_scores(estimator, row)[0]
    assert abs(forest.score_one(np.array(values)) - expected) <= ATOL


def test_wrong_shapes_are_refused(multivariate: tuple[IsolationForest, Forest]) -> None:
    _, forest = multivariate
    with pytest.raises(ValueError, match="3 values"):
        forest.score_one([1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        forest.score_samples([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="shape"):
        forest.score_samples(np.zeros((4, 2)))
    assert forest.score_samples(np.zeros((0, 3))).shape == (0,)


def test_unfitted_estimator_is_refused() -> None:
    with pytest.raises(ValueError, match="fitted"):
        Forest.from_sklearn(IsolationForest())


def test_forest_arrays_are_read_only(multivariate: tuple[IsolationForest, Forest]) -> None:
    _, forest = multivariate
    with pytest.raises(ValueError):
        forest.threshold[0] = 0.0


def test_arrays_and_file_round_trip_give_identical_scores(tmp_path: Path, multivariate: tuple[IsolationForest, Forest]) -> None:
    estimator, forest = multivariate
    X_test = np.random.default_rng(1).normal(size=(2000, 3)) * 2
    expected = forest.score_samples(X_test)
    rebuilt = Forest.from_arrays(forest.to_arrays())
    np.testing.assert_array_equal(rebuilt.score_samples(X_test), expected)
    path = tmp_path / "forest.npz"
    save_forest(forest, path)
    loaded = load_forest(path)
    np.testing.assert_array_equal(loaded.score_samples(X_test), expected)
    assert_same(loaded.score_samples(X_test), sklearn_scores(estimator, X_test))
    for name, array in forest.to_arrays().items():
        np.testing.assert_array_equal(loaded.to_arrays()[name], array, err_msg=name)
    assert [p.name for p in tmp_path.iterdir()] == ["forest.npz"]  # no temp file left behind
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # an ordinary new file: the umask's permissions, not mkstemp's 0600
    assert path.stat().st_mode == reference.stat().st_mode


def test_univariate_file_round_trip(tmp_path: Path) -> None:
    X = np.random.default_rng(2).normal(size=(700, 1))
    estimator, forest = fit(X, n_estimators=60, random_state=5)
    save_forest(forest, tmp_path / "uni.npz")
    loaded = load_forest(tmp_path / "uni.npz")
    X_test = np.random.default_rng(3).normal(size=(3000, 1)) * 3
    assert_same(loaded.score_samples(X_test), sklearn_scores(estimator, X_test))


def _mutations() -> list[tuple[str, Any]]:
    def set_item(name: str, index: int, value: Any) -> Any:
        def mutate(arrays: dict[str, np.ndarray]) -> None:
            arrays[name] = arrays[name].copy()
            arrays[name][index] = value
        return mutate

    def internal_node(arrays: dict[str, np.ndarray], rank: int = 0) -> int:
        return int(np.flatnonzero(arrays["left"] != np.arange(arrays["left"].shape[0]))[rank])

    def replace(name: str, value: Any) -> Any:
        return lambda arrays: arrays.__setitem__(name, value(arrays[name]))

    return [
        ("missing key", lambda a: a.pop("threshold")),
        ("child out of range", lambda a: set_item("left", internal_node(a), a["left"].shape[0] + 5)(a)),
        ("child before parent", lambda a: set_item("left", internal_node(a, 1), internal_node(a, 1) - 1)(a)),
        ("feature out of range", set_item("feature", 0, 99)),
        ("negative feature", set_item("feature", 0, -1)),
        ("nan threshold", lambda a: set_item("threshold", internal_node(a), np.nan)(a)),
        ("leaf threshold", lambda a: set_item("threshold", a["left"].shape[0] - 1, 0.5)(a)),
        ("float feature dtype", replace("feature", lambda v: v.astype(np.float64))),
        ("short array", replace("nan_right", lambda v: v[:-1])),
        ("2-D array", replace("path_length", lambda v: v.reshape(1, -1))),
        ("unsorted roots", replace("roots", lambda v: v[::-1].copy())),
        ("too shallow", lambda a: a.__setitem__("max_depth", np.array(2))),
        ("scalar shape", lambda a: a.__setitem__("n_features", np.array([3, 3]))),
        ("version", lambda a: a.__setitem__("format_version", np.array(99))),
        ("nan path length", lambda a: set_item("path_length", a["left"].shape[0] - 1, np.nan)(a)),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_inconsistent_arrays_are_refused(tmp_path: Path, multivariate: tuple[IsolationForest, Forest], what: str, mutate: Any) -> None:
    _, forest = multivariate
    arrays = forest.to_arrays()
    mutate(arrays)
    with pytest.raises(ValueError, match="forest"):
        Forest.from_arrays(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy >= 2.1 stubs take **arrays for its allow_pickle flag
    with pytest.raises(ValueError, match="corrupt forest file"):
        load_forest(path)


def test_corrupt_files_are_refused(tmp_path: Path, multivariate: tuple[IsolationForest, Forest]) -> None:
    _, forest = multivariate
    good = tmp_path / "good.npz"
    save_forest(forest, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    npy = tmp_path / "plain.npy"
    np.save(npy, np.arange(5))
    flipped = tmp_path / "flipped.npz"
    damaged = bytearray(data)
    with zipfile.ZipFile(good) as archive:
        member = archive.getinfo("threshold.npy")
    start = member.header_offset + 30 + len(member.filename) + 200  # inside the stored threshold data
    damaged[start : start + 8] = b"\xff" * 8
    flipped.write_bytes(bytes(damaged))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**forest.to_arrays(), "threshold": np.array([object()] * 3, dtype=object)})  # type: ignore[arg-type]  # as above
    for path in (truncated, garbage, empty, npy, flipped, pickled):
        with pytest.raises(ValueError, match="corrupt forest file"):
            load_forest(path)
    with pytest.raises(FileNotFoundError):
        load_forest(tmp_path / "absent.npz")


def test_module_needs_neither_sklearn_nor_scipy() -> None:
    code = "import sys, edge_agent.core.forest; bad = {'sklearn', 'scipy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_forest_grown_on_the_device_is_held_in_about_nine_bytes_a_node() -> None:
    from edge_agent.core.forest_fit import fit_forest

    X = np.random.default_rng(4).normal(size=(3000, 5))
    forest = fit_forest(X, trees=100, max_samples=256, seed=1)
    # float32 thresholds alone (the fitter floors them), 8/16-bit indexes, path lengths by code.
    assert forest.nbytes / forest.n_nodes < 10, forest.nbytes / forest.n_nodes
    # What is saved keeps format 1's types, and reads back to the same scores.
    arrays = forest.to_arrays()
    assert {arrays[n].dtype for n in ("feature", "left", "roots")} == {np.dtype(np.int64)}
    assert {arrays[n].dtype for n in ("threshold", "path_length")} == {np.dtype(np.float64)}
    probes = np.random.default_rng(5).normal(size=(2000, 5)) * 2
    probes[::9, 2] = np.nan
    np.testing.assert_array_equal(Forest.from_arrays(arrays).score_samples(probes), forest.score_samples(probes))


def test_a_forest_of_more_nodes_than_16_bits_index_scores_as_sklearn() -> None:
    X = np.random.default_rng(6).normal(size=(2000, 3))
    estimator, forest = fit(X, n_estimators=520, random_state=2)
    assert forest.n_nodes > 65_536
    probes = np.random.default_rng(7).normal(size=(1500, 3)) * 2
    assert_same(forest.score_samples(probes), sklearn_scores(estimator, probes))
    assert_same(np.array([forest.score_one(p) for p in probes[:50]]), sklearn_scores(estimator, probes[:50]))
