"""Learning on the device: sensors without a model learn one, keep it across restarts, refit it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from edge_agent.domain import Reading, Verdict
from edge_agent.engine import LearningPlan, ScoringEngine, UnknownSensor
from edge_agent.forest import Forest
from edge_agent.forest_fit import fit_forest
from edge_agent.learning import Learner, load_learned, model_dir


def test_numpy_fitter_detects_as_well_as_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, 4))
    test = np.vstack([rng.normal(size=(1000, 4)), rng.normal(size=(60, 4)) * 4])
    labels = np.r_[np.zeros(1000), np.ones(60)]
    ours = roc_auc_score(labels, fit_forest(train, seed=3).anomaly_score(test))
    theirs = roc_auc_score(labels, Forest.from_sklearn(IsolationForest(random_state=3).fit(train)).anomaly_score(test))
    assert ours > 0.9 and abs(ours - theirs) < 0.03


def test_numpy_fitter_is_reproducible_and_handles_constant_columns() -> None:
    x = np.c_[np.arange(300.0), np.ones(300)]
    a = fit_forest(x, seed=1).anomaly_score(x[:10])
    assert np.array_equal(a, fit_forest(x, seed=1).anomaly_score(x[:10]))
    with pytest.raises(ValueError, match="NaN"):
        fit_forest(np.array([[1.0], [np.nan]]))


def _engine(tmp_path: Path, rows: int = 200, refit_every: int = 0, learned: dict | None = None) -> tuple[ScoringEngine, Learner]:
    learner = Learner(tmp_path)
    engine = ScoringEngine({}, learning=LearningPlan(rows=rows, refit_every=refit_every, refit_rows=300), learner=learner, learned=learned)
    learner.attach(engine)
    return engine, learner


def _readings(sensor: str, values: list[float], start: int = 0) -> list[Reading]:
    return [Reading(sensor, {"value": v}, float(start + i), ts=float(start + i), ts_raw=start + i) for i, v in enumerate(values)]


def _wait_for_model(engine: ScoringEngine, sensor: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sensor not in engine.learned:
        assert time.monotonic() < deadline, "no model was learned"
        time.sleep(0.02)


def test_a_sensor_learns_then_scores(tmp_path: Path) -> None:
    engine, learner = _engine(tmp_path)
    rng = np.random.default_rng(1)
    first = engine.score(_readings("boiler", list(20 + rng.normal(0, 0.2, 200))))
    assert all(isinstance(v, Verdict) and v.learning and v.anomaly == 0 for v in first)
    assert first[-1].model_version == "200/200"  # type: ignore[union-attr]
    with pytest.raises(UnknownSensor, match="still learning"):
        engine.predict({"value": 20.0}, "boiler")
    _wait_for_model(engine, "boiler")
    later = engine.score(_readings("boiler", list(20 + rng.normal(0, 0.2, 50)) + [35.0], start=200))
    assert not any(v.learning for v in later)  # type: ignore[union-attr]
    assert later[-1].anomaly == 1 and later[-1].model == "learned:boiler"  # type: ignore[union-attr]
    assert sum(v.anomaly for v in later[:-1]) <= 1  # type: ignore[union-attr]
    learner.stop()


def test_learned_models_survive_a_restart_and_tampering_is_refused(tmp_path: Path) -> None:
    engine, learner = _engine(tmp_path)
    engine.score(_readings("pump/1", [1.0 + 0.01 * (i % 5) for i in range(200)]))
    _wait_for_model(engine, "pump/1")
    learner.stop()
    manifest = json.loads((model_dir(tmp_path, "pump/1") / "manifest.json").read_text())
    assert manifest["forest"]["sha256"] and "scikit-learn" not in manifest["training"]["library_versions"]

    restored = load_learned(tmp_path)
    assert list(restored) == ["pump/1"]
    engine2, learner2 = _engine(tmp_path, learned=restored)
    [v] = engine2.score(_readings("pump/1", [1.02], start=500))
    assert not v.learning and v.model == "learned:pump/1"  # type: ignore[union-attr]
    learner2.stop()

    forest = model_dir(tmp_path, "pump/1") / "forest.npz"
    forest.write_bytes(forest.read_bytes()[:-10] + b"0123456789")
    assert load_learned(tmp_path) == {}  # refused: the sensor learns again


def test_refit_swaps_in_a_new_model_without_blocking_scoring(tmp_path: Path) -> None:
    engine, learner = _engine(tmp_path, rows=100, refit_every=150)
    rng = np.random.default_rng(2)
    engine.score(_readings("drifty", list(10 + rng.normal(0, 0.1, 100))))
    _wait_for_model(engine, "drifty")
    first = engine.learned["drifty"]
    # The level drifts slowly; the refit learns the new normal from unflagged readings.
    values = list(10 + np.linspace(0, 0.5, 400) + rng.normal(0, 0.1, 400))
    started = time.perf_counter()
    engine.score(_readings("drifty", values, start=100))
    assert time.perf_counter() - started < 5  # fits happen on the learner's thread
    deadline = time.monotonic() + 10
    while engine.learned["drifty"] is first:
        assert time.monotonic() < deadline, "no refit installed"
        time.sleep(0.02)
    assert engine.learned["drifty"].version >= first.version
    learner.stop()


@pytest.mark.broker
def test_learning_over_mqtt_is_visible_in_verdicts_and_metrics(start_agent, collect, sensor, tmp_path: Path) -> None:
    agent = start_agent("learning.enabled=true", "learning.rows=60", f"learning.state_dir={tmp_path}", "models.default=null")
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/verdicts/#"])
    for i in range(60):
        sensor.send_json("sensors/fridge", {"value": 4.0 + 0.05 * (i % 4), "ts": i})
    learning = out.wait_count(f"edge/{aid}/verdicts/fridge", 60)
    assert all(json.loads(m.payload).get("learning") for m in learning)
    deadline = time.monotonic() + 10
    while "fridge" not in agent.engine.learned:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sensor.send_json("sensors/fridge", {"value": 4.05, "ts": 100})
    sensor.send_json("sensors/fridge", {"value": 15.0, "ts": 101})
    msgs = out.wait_count(f"edge/{aid}/verdicts/fridge", 62)
    last = [json.loads(m.payload) for m in msgs[-2:]]
    assert [v.get("learning", False) for v in last] == [False, False]
    assert [v["anomaly"] for v in last] == [0, 1]
    assert (model_dir(tmp_path, "fridge") / "manifest.json").is_file()
    assert agent.registry.get_sample_value("edge_agent_learning", {"sensor": "fridge"}) == 0.0


def test_history_keeps_the_newest_readings_in_order() -> None:
    from edge_agent.engine import History

    h = History(capacity=4, n_fields=2)
    for i in range(3):
        h.append([i, 10 * i])
    assert len(h) == 3 and h.latest().tolist() == [[0, 0], [1, 10], [2, 20]]
    for i in range(3, 7):
        h.append([i, 10 * i])
    assert len(h) == 4
    assert h.latest().tolist() == [[3, 30], [4, 40], [5, 50], [6, 60]]
    assert h.latest(2).tolist() == [[5, 50], [6, 60]]
    snapshot = h.latest()
    h.append([7, 70])
    assert snapshot[-1].tolist() == [6, 60]  # a copy: the learner's data does not move under it
