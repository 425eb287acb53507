"""Sensor state stays bounded and fair: metric series, learned models that cannot be saved, a busy learner."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from edge_agent.agent import Agent, load_models
from edge_agent.config import load_config
from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.domain import Reading
from edge_agent.core.engine import LearningPlan, ScoringEngine
from edge_agent.core.features import FeatureSpec
from edge_agent.learning import LEARNED_DIR, Learner, load_learned


def _readings(sensor: str, n: int, start: int = 0) -> list[Reading]:
    return [Reading(sensor, {"value": 1.0 + 0.01 * (i % 7)}, float(start + i), ts=float(start + i), ts_raw=start + i)
            for i in range(n)]


def _agent(tmp_path: Path, *overrides: str) -> Agent:
    cfg = load_config(None, [f"models.dir={REPO / 'models'}", f"learning.state_dir={tmp_path / 'state'}", *overrides], {})
    return Agent(cfg, load_models(cfg), env={})


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# --------------------------------------------------------------------------- metric series


def test_model_info_keeps_one_series_per_model_across_1000_refits(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    try:
        assert agent.learner is not None and agent.learner.on_learned is not None
        shipped = load_models(agent.cfg)
        base = next(iter(shipped.values()))
        for i in range(1000):
            for sensor in ("pump-a", "pump-b"):
                refit = dataclasses.replace(base, name=f"learned:{sensor}", version=f"v{i}", sha256=f"{i:064x}")
                agent.learner.on_learned(sensor, refit)  # what the learner calls after each refit
        series = [s for m in agent.registry.collect() if m.name == "edge_agent_model_info" for s in m.samples]
        assert len(series) == len(shipped) + 2, sorted(str(s.labels) for s in series)
        assert agent.registry.get_sample_value(
            "edge_agent_model_info", {"model": "learned:pump-a", "version": "v999", "sha256": f"{999:064x}"}) == 1
    finally:
        agent.learner.stop()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- a state dir that cannot be written


def test_a_state_dir_that_cannot_be_written_is_reported_retried_and_saved_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Learner, "RETRY_MIN", 0.2)
    state = tmp_path / "state"
    state.mkdir()
    (state / LEARNED_DIR).write_text("not a folder")  # every save fails with an OSError (root ignores chmod)
    agent = _agent(tmp_path, "learning.rows=60", "models.default=null")
    learner = agent.learner
    assert learner is not None
    agent.transport._connected = agent.transport._subscribed = agent.transport._publishing = True  # readiness past the broker check, without a broker
    try:
        with caplog.at_level(logging.INFO):
            # Reported at start, before any sensor has learned.
            assert agent.registry.get_sample_value("edge_agent_state_dir_writable") == 0
            ready, reason = agent.readiness()
            assert not ready and "cannot be written" in reason and str(state) in reason
            for request in agent.engine.score(_readings("boiler", 60)).learn_requests:
                learner(request)
            _wait(lambda: "boiler" in agent.engine.learned, "boiler never learned")
            # The fit scores from memory; it never goes back to learning.
            [v] = agent.engine.score(_readings("boiler", 1, start=100)).results
            assert not v.learning and v.model == "learned:boiler"  # type: ignore[union-attr]
            assert list(learner.unsaved) == ["boiler"]
            assert agent.registry.get_sample_value("edge_agent_learned_models_unsaved") == 1
            assert "1 learned model(s) score from memory only" in agent.readiness()[1]
            time.sleep(1.0)  # several retries fail, each logged, none loses the model
            assert "boiler" in learner.unsaved and "still cannot be written" in caplog.text
            [v] = agent.engine.score(_readings("boiler", 1, start=101)).results
            assert v.model == "learned:boiler"  # type: ignore[union-attr]

            (state / LEARNED_DIR).unlink()  # the disk is fixed
            _wait(lambda: learner.save_error is None, "the unsaved model was never saved")
        assert agent.readiness() == (True, "")
        assert agent.registry.get_sample_value("edge_agent_state_dir_writable") == 1
        assert agent.registry.get_sample_value("edge_agent_learned_models_unsaved") == 0
        assert "writable again" in caplog.text
        assert load_learned(state)["boiler"].version == agent.engine.learned["boiler"].version
        saved = load_learned(state)["boiler"]  # and the metric names the saved file's digest
        assert agent.registry.get_sample_value(
            "edge_agent_model_info", {"model": "learned:boiler", "version": saved.version, "sha256": saved.sha256}) == 1
    finally:
        learner.stop()


def test_retries_back_off() -> None:
    learner = Learner(Path("/nonexistent"))
    waits = []
    for _ in range(10):
        learner._retry_at = None
        learner._save_failed(OSError("read-only"))
        waits.append(learner._retry_at - time.monotonic())  # type: ignore[operator]
    assert waits[0] == pytest.approx(Learner.RETRY_MIN, abs=0.5)
    assert all(b >= a - 0.1 for a, b in itertools.pairwise(waits))
    assert waits[-1] == pytest.approx(Learner.RETRY_MAX, abs=0.5)


# --------------------------------------------------------------------------- a busy learner


def test_learner_busy_warnings_are_rate_limited_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    learner = Learner(tmp_path, max_pending=1)  # never attached: nothing drains its queue
    engine = ScoringEngine({}, learning=LearningPlan(rows=60))
    learner.engine = engine
    spec = FeatureSpec(fields=("value",))
    with caplog.at_level(logging.WARNING):
        for i in range(500):
            learner(LearnRequest(f"s{i}", spec, np.zeros((60, 1)), refit=False))
    lines = [r for r in caplog.records if "learner busy" in r.getMessage()]
    assert learner.refused == 499
    assert len(lines) == 1, [r.getMessage() for r in lines]
    learner._log._last["busy"] -= Learner.LOG_EVERY  # the interval has passed
    with caplog.at_level(logging.WARNING):
        learner(LearnRequest("late", spec, np.zeros((60, 1)), refit=False))
    assert "and 498 more since the last line" in caplog.records[-1].getMessage()


# --------------------------------------------------------------------------- eviction at max_sensors


def test_when_all_are_established_the_one_idle_longest_goes_and_its_learned_model_scores_when_it_returns() -> None:
    model = load_models(load_config(None, [f"models.dir={REPO / 'models'}"], {}))["default"]
    engine = ScoringEngine({}, learning=LearningPlan(rows=60), learned={"pump-a": model}, max_sensors=2)
    for sensor in ("pump-a", "pump-b", "pump-a", "pump-b"):
        engine.score(_readings(sensor, 1))
    assert engine.score(_readings("pump-c", 1)).evicted == ["pump-a"]  # idle longest, though established
    assert engine.score(_readings("pump-b", 1)).evicted == []
    scored = engine.score(_readings("pump-a", 1, start=10))
    assert scored.evicted == ["pump-c"]  # new, so it goes before the established pump-b
    [v] = scored.results
    assert not v.learning and v.model == model.name  # type: ignore[union-attr]  # no relearning


def test_a_sensor_reporting_every_minute_keeps_its_state_through_a_flood_of_new_ids() -> None:
    engine = ScoringEngine({}, learning=LearningPlan(rows=60), max_sensors=100)
    engine.score(_readings("boiler", 1, start=-60))  # heard from twice before the flood: established
    minute = 0
    for batch in range(50):
        engine.score(_readings("boiler", 1, start=60 * minute))
        minute += 1
        engine.score([Reading(f"flood-{batch}-{i}", {"value": 1.0}, 1.0) for i in range(500)])
    [v] = engine.score(_readings("boiler", 1, start=60 * minute)).results
    assert v.learning and v.model_version == "52/60"  # type: ignore[union-attr]  # every reading kept, none lost
    assert engine.sensor_count == 100


def test_sensors_finishing_learning_together_add_no_threads(tmp_path: Path) -> None:
    learner = Learner(tmp_path)
    engine = ScoringEngine({}, learning=LearningPlan(rows=60))
    learner.attach(engine)
    baseline = threading.active_count()
    peak = baseline
    try:
        for i in range(60):
            scored = engine.score([Reading(f"s{k}", {"value": 1.0 + 0.01 * ((i * 7 + k) % 5)}, float(i), ts=float(i))
                                   for k in range(30)])
            for request in scored.learn_requests:
                learner(request)
        assert len(scored.learn_requests) == 30  # every sensor due at once
        deadline = time.monotonic() + 60
        while len(engine.learned) < 30:
            assert time.monotonic() < deadline, f"{len(engine.learned)} of 30 learned"
            peak = max(peak, threading.active_count())
            time.sleep(0.01)
    finally:
        learner.stop()
    assert peak == baseline  # one learner thread fits them in turn, whatever the number due


def test_a_sensor_whose_fit_was_refused_asks_again_50_readings_later_not_every_reading() -> None:
    engine = ScoringEngine({}, learning=LearningPlan(rows=60))
    asked = []
    for i in range(200):
        for request in engine.score(_readings("boiler", 1, start=i)).learn_requests:
            asked.append(i)
            engine.learning_failed(request.sensor_id)  # what a busy learner does
    assert asked == [59, 110, 161], asked  # at 60 readings, then after 50 more each time
