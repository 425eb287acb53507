"""The scoring core without any I/O: features, model files, calibration, engine decisions."""

from __future__ import annotations

import doctest
import json
import math
import types
from pathlib import Path

import numpy as np
import pytest

import edge_agent.core.features
import edge_agent.core.timestamps
from conftest import verdicts_of
from edge_agent.core.domain import InvalidReading, Reading, Verdict
from edge_agent.core.engine import Decision, ScoringEngine, UnknownSensor
from edge_agent.core.features import FeatureSpec, feature_matrix, parse_transform
from edge_agent.core.model import CALIBRATION_SCORES, LONE_EXTREMES, Calibration, ModelError, RangeGuard, tail_quantile
from edge_agent.model_files import load_estimator, load_model


@pytest.mark.parametrize("module", [edge_agent.core.features, edge_agent.core.timestamps], ids=lambda m: m.__name__)
def test_doctests(module: types.ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("bad", ["median", "std", "std:1", "std:x", "value:3", "delta:2"])
def test_unknown_or_malformed_transforms_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.split(":", maxsplit=1)[0]):
        parse_transform(bad)


def test_streaming_features_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    x = 1013.25 + rng.normal(0, 0.01, 200)  # large values, tiny noise: precision matters
    spec = FeatureSpec(fields=("value",), transforms=("value", "delta", "mean_dev:10", "std:10", "std:4"))
    f = feature_matrix(spec, x.reshape(-1, 1))
    for i in range(12, 200):
        window10 = x[i - 9 : i + 1]
        assert f[i, 0] == x[i]
        assert f[i, 1] == pytest.approx(x[i] - x[i - 1], abs=1e-9)
        assert f[i, 2] == pytest.approx(x[i] - x[i - 9 : i].mean(), abs=1e-9)
        assert f[i, 3] == pytest.approx(window10.std(ddof=1), rel=1e-6)
        assert f[i, 4] == pytest.approx(x[i - 3 : i + 1].std(ddof=1), rel=1e-6)
    assert math.isnan(f[0, 1]) and math.isnan(f[0, 3])


def test_drift_compares_the_last_ten_with_a_baseline_of_the_readings_before_them() -> None:
    from edge_agent.core.features import DRIFT_RECENT

    rng = np.random.default_rng(1)
    x = 1013.25 + np.cumsum(rng.normal(0, 0.01, 400))
    # the same drift values whatever else the spec computes (its recent window is its own)
    alone = feature_matrix(FeatureSpec(("value",), ("drift:50",)), x[:, None])[:, 0]
    beside = feature_matrix(FeatureSpec(("value",), ("value", "mean:30", "drift:50", "drift:20")), x[:, None])
    np.testing.assert_allclose(beside[:, 2], alone, atol=1e-9, equal_nan=True)
    # undefined until the baseline holds 50 readings before the last ten
    assert np.isnan(alone[: 50 + DRIFT_RECENT - 1]).all() and not np.isnan(alone[50 + DRIFT_RECENT - 1 :]).any()
    # a direct computation: a plain mean of the first 50, then exponentially weighted (1/50)
    baseline = x[:50].mean()
    for i in range(50 + DRIFT_RECENT - 1, 400):
        if i > 50 + DRIFT_RECENT - 1:
            baseline += (x[i - DRIFT_RECENT] - baseline) / 50
        assert alone[i] == pytest.approx(x[i - DRIFT_RECENT + 1 : i + 1].mean() - baseline, abs=1e-9)
    assert np.isnan(beside[20 + DRIFT_RECENT - 2, 3]) and not np.isnan(beside[20 + DRIFT_RECENT - 1, 3])


def test_the_forest_never_sees_a_drift_feature_and_its_range_is_checked_only_once_learned() -> None:
    from edge_agent.tools.training import learn_model

    spec = FeatureSpec(("value",), ("value", "delta", "drift:600"))
    assert spec.forest_columns == [0, 1] and spec.baselines == {2: 600}
    rng = np.random.default_rng(2)
    # a sensor that warms steadily while it learns: every drift it shows is positive
    warming = 20 + np.arange(3000) * 0.001 + rng.normal(0, 0.01, 3000)
    model = learn_model(spec, warming[:, None], "s", "1")
    assert model.forest.n_features == 2  # the first 609 rows, whose drift is NaN, still taught the forest
    assert model.manifest["training"]["rows"] == 3000
    low, high = model.range_guard.low[2], model.range_guard.high[2]
    assert low == -high and high > 0.2  # judged by size either way: a pause in the warming is no drift
    engine = ScoringEngine({"s": model}, default="s")
    verdicts = verdicts_of(engine.score([Reading("p", {"value": float(v)}, float(i)) for i, v in enumerate(
        np.concatenate([warming, 23.0 + rng.normal(0, 0.01, 1500)]))]).results)
    assert sum(v.anomaly for v in verdicts[3000:]) == 0
    # 400 rows (SKAB's protocol) never fill a 600-reading baseline: the check stays off
    short = learn_model(spec, warming[:400, None], "s", "1")
    assert math.isinf(short.range_guard.margin[2]) and math.isfinite(short.range_guard.margin[1])
    assert RangeGuard.from_dict(json.loads(json.dumps(short.range_guard.to_dict()))).margin[2] == math.inf
    assert short.range_guard.to_dict()["margin"][2] is None  # JSON has no infinity: null is "not checked"


def test_peek_does_not_advance_the_state() -> None:
    spec = FeatureSpec(fields=("a", "b"), transforms=("value", "delta"))
    state = spec.new_state()
    state.update([1.0, 10.0])
    assert state.peek([2.0, 12.0]) == [2.0, 1.0, 12.0, 2.0]
    assert state.peek([3.0, 13.0]) == [3.0, 2.0, 13.0, 3.0]


def test_a_threshold_learned_from_few_scores_comes_from_their_tail_not_their_maximum() -> None:
    knot = len(CALIBRATION_SCORES) - 1  # the knot that maps to the threshold, 0.5
    rng = np.random.default_rng(0)
    few = 0.4 + 0.05 * rng.standard_normal(400)
    fresh = 0.4 + 0.05 * rng.standard_normal(200_000)  # more normal readings like the training ones
    calibration = Calibration.fit(few)
    threshold = calibration.raw[knot]
    assert calibration.score[knot] == 0.5 and threshold > few.max()
    # the maximum of 400 is exceeded by about one reading in 400; the tail estimate by far fewer
    assert (fresh > few.max()).mean() > 1e-3
    assert (calibration(fresh) >= 0.5).mean() < 2e-4
    # from many readings the maximum is the higher of the two, and stays the threshold
    many = 0.4 + 0.05 * rng.standard_normal(200_000)
    assert Calibration.fit(many).raw[knot] == many.max()
    # too few scores to fit a tail to: the maximum alone
    assert tail_quantile(few[:50], 1e-4) == -np.inf
    assert Calibration.fit(few[:50]).raw[knot] == few[:50].max()
    # never beyond halfway from the maximum to 1, the highest raw score there is
    heavy = np.concatenate([np.full(380, 0.3), np.linspace(0.3, 0.95, 20)])
    assert tail_quantile(heavy, 1e-4) == (0.95 + 1.0) / 2


def test_a_lone_training_extreme_stays_out_of_the_range_but_a_recurring_one_stays_in() -> None:
    rng = np.random.default_rng(2)
    normal = rng.normal(0, 1, (1000, 1))
    margin = np.array([0.3])

    def guard(column: np.ndarray) -> RangeGuard:
        return RangeGuard.fit(column, margin).without_lone_extremes(column)

    glitch = np.vstack([normal, [[10.0]]])  # one bad reading: the rest's guard would flag it
    g = guard(glitch)
    assert g.high[0] == normal.max() and g.low[0] == normal.min()
    assert g.excess(np.array([[8.0]]))[0] > 0  # so a later spike of its size is out of range
    twice = np.vstack([normal, [[10.0], [10.0]]])  # seen twice: part of the normal
    assert guard(twice).high[0] == 10.0
    dip = np.vstack([normal, [[-10.0]]])
    assert guard(dip).low[0] == normal.min() and guard(dip).high[0] == normal.max()
    near = np.vstack([normal, [[normal.max() + 0.1]]])  # within the margin of the rest: kept
    assert guard(near).high[0] == near.max()
    # each further out than the rest's margin, so each is lone; only LONE_EXTREMES go
    ladder = np.vstack([normal, 10.0 * 2.0 ** np.arange(LONE_EXTREMES + 3)[:, None]])
    assert guard(ladder).high[0] == np.sort(ladder[:, 0])[-(LONE_EXTREMES + 1)]


def test_model_round_trip_scores_identically(models_dir: Path, tmp_path: Path) -> None:
    model = load_model(models_dir / "default")
    state = model.spec.new_state()
    for v in 0.9 + 0.03 * np.sin(np.arange(40)):
        state.update([float(v)])
    x = np.array([state.peek([0.9]), state.peek([5.0])])
    raw, calibrated = model.score_features(x)
    assert 0 < raw[0] < raw[1] <= 1
    assert 0 <= calibrated[0] < 0.5 <= calibrated[1] <= 1
    manifest = json.loads((models_dir / "default" / "manifest.json").read_text())
    for key in ("features", "calibration", "threshold", "training", "forest", "estimator"):
        assert key in manifest
    assert manifest["training"]["library_versions"]["scikit-learn"]
    estimator = load_estimator(models_dir / "default")
    np.testing.assert_allclose(-estimator.score_samples(model.forest_input(x)), raw, atol=1e-9)


def test_a_tampered_model_file_is_refused(models_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(models_dir / "default", copy)
    data = bytearray((copy / "forest.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "forest.npz").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256.*tampered"):
        load_model(copy)
    (copy / "model.joblib").write_bytes(b"not what was trained")
    with pytest.raises(ModelError, match=r"model\.joblib has sha256"):
        load_estimator(copy)


def test_a_pinned_hash_overrides_the_manifest(models_dir: Path) -> None:
    with pytest.raises(ModelError, match="pinned value in the config"):
        load_model(models_dir / "default", pinned_sha256="0" * 64)


def test_missing_model_directory_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        load_model(tmp_path)


def _reading(sensor: str, value: float, i: int, **values: float) -> Reading:
    return Reading(sensor_id=sensor, values=values or {"value": value}, received_at=float(i), ts=1e9 + i, ts_raw=1e9 + i)


@pytest.fixture
def engine(models_dir: Path) -> ScoringEngine:
    models = {"default": load_model(models_dir / "default"), "climate": load_model(models_dir / "climate")}
    return ScoringEngine(models, assign=[("room-*", "climate")], default="default", decision=Decision(0.5, 1, 1))


def test_engine_flags_a_spike_and_not_normal_readings(engine: ScoringEngine) -> None:
    rng = np.random.default_rng(5)
    readings = [_reading("vib", 0.9 + rng.normal(0, 0.03), i) for i in range(300)]
    readings.append(_reading("vib", 3.0, 300))
    verdicts = verdicts_of(engine.score(readings).results)
    assert all(isinstance(v, Verdict) for v in verdicts)
    normal_flags = sum(v.anomaly for v in verdicts[20:300])
    assert normal_flags <= 3
    assert verdicts[-1].anomaly == 1
    assert verdicts[-1].score > verdicts[-2].score


def test_batching_does_not_change_scores(models_dir: Path) -> None:
    rng = np.random.default_rng(6)
    readings = [_reading(f"s{i % 3}", 0.9 + rng.normal(0, 0.05), i) for i in range(200)]
    one_by_one = [ScoringEngine({"default": load_model(models_dir / "default")}, default="default")]
    batched = ScoringEngine({"default": load_model(models_dir / "default")}, default="default")
    a = [one_by_one[0].score([r]).results[0] for r in readings]
    b = verdicts_of(batched.score(readings[:77]).results + batched.score(readings[77:]).results)
    # One reading alone takes the plain-Python path, a batch the numpy one: equal to the last bits.
    assert [v.score for v in a] == pytest.approx([v.score for v in b], abs=1e-12)  # type: ignore[union-attr]
    assert [v.anomaly for v in a] == [v.anomaly for v in b]  # type: ignore[union-attr]


def test_assignment_patterns_pick_the_model(engine: ScoringEngine) -> None:
    [v] = engine.score([_reading("room-1", 0, 1, temperature=21.0, humidity=45.0)]).results
    assert isinstance(v, Verdict) and v.model == "climate" and v.values == {"temperature": 21.0, "humidity": 45.0}
    [bad] = engine.score([_reading("room-2", 0, 2, temperature=21.0)]).results
    assert isinstance(bad, InvalidReading) and bad.reason == "missing_field" and "humidity" in bad.detail


def test_unknown_sensor_without_default_is_rejected(models_dir: Path) -> None:
    engine = ScoringEngine({"climate": load_model(models_dir / "climate")}, assign=[("room-*", "climate")])
    [r] = engine.score([_reading("boiler", 1.0, 1)]).results
    assert isinstance(r, InvalidReading) and r.reason == "no_model"
    with pytest.raises(UnknownSensor):
        engine.predict({"value": 1.0}, "boiler")


def test_sensor_cap_evicts_the_new_sensor_heard_from_longest_ago(models_dir: Path) -> None:
    engine = ScoringEngine({"default": load_model(models_dir / "default")}, default="default", max_sensors=2)
    scored = engine.score([_reading(f"s{i}", 0.9, i) for i in range(4)] + [_reading("s0", 0.9, 9)])
    assert [type(r).__name__ for r in scored.results] == ["Verdict"] * 5
    assert scored.evicted == ["s0", "s1", "s2"] and engine.sensor_count == 2


def test_redelivered_reading_gets_the_same_verdict_marked_duplicate(engine: ScoringEngine) -> None:
    first = verdicts_of(engine.score([_reading("s", 0.9, 1), _reading("s", 0.95, 2)]).results)
    again = engine.score([_reading("s", 0.95, 2)]).results[0]
    assert isinstance(again, Verdict) and again.duplicate
    assert again.score == first[1].score
    # Without a timestamp, equal values are a duplicate only when the transport says so.
    plain = Reading("p", {"value": 0.9}, 1.0)
    engine.score([plain])
    assert not engine.score([Reading("p", {"value": 0.9}, 2.0)]).results[0].duplicate  # type: ignore[union-attr]
    assert engine.score([Reading("p", {"value": 0.9}, 3.0, redelivered=True)]).results[0].duplicate  # type: ignore[union-attr]


def _model_score(v: Verdict) -> float:
    """The model's own score, which every verdict of a scored (not learning) reading has."""
    assert v.model_score is not None, v
    return v.model_score


def test_k_of_n_flags_only_when_k_of_the_last_n_scores_cross_the_threshold(models_dir: Path) -> None:
    engine = ScoringEngine({"default": load_model(models_dir / "default")}, default="default", decision=Decision(0.5, 2, 3))
    values = [0.9] * 30 + [4.0, 0.9, 0.9, 0.9, 0.9, 5.0, 0.9, 6.0, 0.9, 0.9, 0.9, 0.9]
    verdicts = verdicts_of(engine.score([_reading("s", v, i) for i, v in enumerate(values)]).results)
    over = [_model_score(v) >= 0.5 for v in verdicts]
    expected = [int(sum(over[max(0, i - 2) : i + 1]) >= 2) for i in range(len(over))]
    assert [v.anomaly for v in verdicts] == expected
    assert 0 < sum(expected) < len(expected)


def test_hysteresis_keeps_an_alert_while_the_score_stays_over_the_clear_threshold(models_dir: Path) -> None:
    model = load_model(models_dir / "default")
    rng = np.random.default_rng(0)
    values = list(0.8 + rng.normal(0, 0.02, 40)) + [1.3] + list(1.0 + rng.normal(0, 0.02, 8)) + list(0.8 + rng.normal(0, 0.02, 40))
    readings = [_reading("s", float(v), i) for i, v in enumerate(values)]
    plain = verdicts_of(ScoringEngine({"m": model}, default="m").score(readings).results)
    scores = [_model_score(v) for v in plain]

    held = ScoringEngine({"m": model}, default="m", decision=Decision(0.5, 1, 1, clear=0.2))
    verdicts = verdicts_of(held.score(readings[:45]).results + held.score(readings[45:]).results)  # the alert state carries across calls
    # an alert starts at the threshold and lasts until a score falls under 0.2
    expected, alerting = [], False
    for x in scores:
        alerting = x >= 0.5 or (alerting and x >= 0.2)
        expected.append(int(alerting))
    assert [v.anomaly for v in verdicts] == expected
    assert sum(expected) > sum(int(x >= 0.5) for x in scores)  # it held the alert past the threshold
    assert expected[:40] == [0] * 40 and expected[-1] == 0  # and it clears


def test_onset_marks_the_first_anomalous_reading_of_each_episode(models_dir: Path) -> None:
    engine = ScoringEngine({"m": load_model(models_dir / "default")}, default="m")
    rng = np.random.default_rng(3)
    values = list(0.8 + rng.normal(0, 0.02, 40)) + [3.0, 3.1, 3.0] + list(0.8 + rng.normal(0, 0.02, 60)) + [4.0]
    readings = [Reading("s", {"value": float(v)}, float(i), ts=float(i), ts_raw=i) for i, v in enumerate(values)]
    verdicts = verdicts_of(engine.score(readings[:41]).results + engine.score(readings[41:]).results)  # an episode spanning two calls
    anomalies = [v.anomaly for v in verdicts]
    onsets = [int(v.onset) for v in verdicts]
    assert onsets == [int(a and not (i and anomalies[i - 1])) for i, a in enumerate(anomalies)]
    assert onsets[40] == 1 and onsets[41] == onsets[42] == 0 and onsets[-1] == 1
    assert verdicts[40].to_payload()["onset"] is True and "onset" not in verdicts[41].to_payload()
    [again] = engine.score([Reading("s", {"value": 4.0}, 500.0, ts=103.0, ts_raw=103, redelivered=True)]).results
    assert again.duplicate and again.onset  # type: ignore[union-attr]  # a redelivery repeats the original verdict


def test_predict_is_the_seed_contract_and_leaves_state_alone(engine: ScoringEngine) -> None:
    assert engine.predict({"value": 0.95}).anomaly == 0
    assert engine.predict({"value": 50.0}).anomaly == 1
    engine.score([_reading("s", 0.9, 1)])
    before = engine.predict({"value": 0.91}, "s").score
    engine.predict({"value": 10.0}, "s")
    assert engine.predict({"value": 0.91}, "s").score == before


def test_the_single_row_path_scores_like_the_batch_path(models_dir: Path) -> None:
    model = load_model(models_dir / "default")
    rng = np.random.default_rng(0)
    n = len(model.spec.names)
    x = rng.normal(0.9, 0.6, size=(2000, n))
    x[::7, 1] = np.nan  # undefined features take the training median on both paths
    x[::11, 0] = 40.0  # far outside the range: the range check decides
    raw, calibrated = model.score_features(x)
    rows = [model.score_row(r) for r in x.tolist()]
    np.testing.assert_allclose([r for r, _ in rows], raw, atol=1e-12)
    np.testing.assert_allclose([c for _, c in rows], calibrated, atol=1e-12)
    assert (calibrated[::11] >= 0.5).all()


def test_models_with_the_same_forest_file_share_it(models_dir: Path, tmp_path: Path) -> None:
    import shutil

    from edge_agent.core.forest import Forest

    shutil.copytree(models_dir / "default", tmp_path / "twin")
    forests: dict[str, Forest] = {}
    a = load_model(models_dir / "default", forests=forests)
    b = load_model(tmp_path / "twin", forests=forests)
    c = load_model(models_dir / "climate", forests=forests)
    assert a.forest is b.forest and a.forest is not c.forest and len(forests) == 2
