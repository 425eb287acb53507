"""Fits in the niced fit process: same models as in a thread, crashes retried, refits spread by sensor id."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import verdicts_of
from edge_agent.core.adaptation import MIN_LEARNING_ROWS, LearningPlan, LearnRequest, SensorAdaptation, share_of
from edge_agent.core.domain import Reading
from edge_agent.core.engine import ScoringEngine
from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec
from edge_agent.fit_worker import (
    FIT_IN_THREAD,
    FIT_IN_WORKER,
    WORKER_DIED,
    FitWorker,
    FitWorkerError,
)
from edge_agent.learning import Learner
from edge_agent.tools.training import TrainingError, fit_request


def _request(rows: int = 400, fields: int = 2) -> LearnRequest:
    rng = np.random.default_rng(3)
    spec = FeatureSpec(fields=tuple(f"f{i}" for i in range(fields)), transforms=DEFAULT_TRANSFORMS)
    keep = rng.random(rows) > 0.1
    return LearnRequest("pump/1", spec, rng.normal(size=(rows, fields)), refit=True,
                        times=1.7e9 + np.arange(rows) * 60.0, keep=keep, leave_out_outliers=True)


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# A child that dies on its first request, and serves normally when started again.
DIES_ONCE = (
    "import os, sys\n"
    "marker = sys.argv[1]\n"
    "if not os.path.exists(marker):\n"
    "    open(marker, 'w').close(); sys.stdin.buffer.read(8); os._exit(3)\n"
    "from edge_agent.fit_worker import main\n"
    "sys.exit(main(['0']))\n"
)


def test_a_fit_in_the_worker_is_the_fit_in_a_thread_and_runs_niced() -> None:
    request = _request()
    events: list[str] = []
    worker = FitWorker(nice=7, idle_exit=0, on_event=events.append)
    try:
        model = worker.fit(request, "v1")
        pid = worker.pid
        assert pid is not None and pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        assert worker.rss_bytes()
    finally:
        worker.close()
    assert worker.pid is None and events == [FIT_IN_WORKER]
    here = fit_request(request, "v1")
    assert model.name == "learned:pump/1" and model.version == "v1"
    assert {k: v for k, v in model.manifest.items() if k != "training"} == {k: v for k, v in here.manifest.items() if k != "training"}
    x = np.random.default_rng(4).normal(size=(500, len(request.spec.names))) * 3
    np.testing.assert_array_equal(model.score_features(x)[1], here.score_features(x)[1])


def test_a_request_that_cannot_give_a_model_says_why_and_the_worker_keeps_serving() -> None:
    worker = FitWorker(idle_exit=0)
    try:
        with pytest.raises(TrainingError, match="usable normal rows"):
            worker.fit(_request(rows=5), "v1")
        pid = worker.pid
        worker.fit(_request(), "v2")
        assert worker.pid == pid
    finally:
        worker.close()


def test_a_worker_that_dies_is_restarted_and_the_fit_retried(tmp_path: Path) -> None:
    events: list[str] = []
    worker = FitWorker(idle_exit=0, on_event=events.append,
                       argv=[sys.executable, "-c", DIES_ONCE, str(tmp_path / "died")])
    try:
        model = worker.fit(_request(), "v1")
    finally:
        worker.close()
    assert model.name == "learned:pump/1"
    assert events == [WORKER_DIED, FIT_IN_WORKER]


def test_a_worker_that_dies_twice_loses_the_fit_not_the_sensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    events: list[str] = []
    dying = FitWorker(idle_exit=0, on_event=events.append, argv=[sys.executable, "-c", "import os, sys; sys.stdin.buffer.read(8); os._exit(9)"])
    with pytest.raises(FitWorkerError):
        dying.fit(_request(), "v1")
    assert events == [WORKER_DIED, WORKER_DIED]

    learner = Learner(tmp_path, fit=dying.fit)
    engine = ScoringEngine({}, learning=LearningPlan(rows=60))
    learner.attach(engine)
    readings = [Reading("boiler", {"value": float(v)}, float(i), ts=float(i), ts_raw=i) for i, v in enumerate(rng.normal(size=60))]
    requests = engine.score(readings).learn_requests
    assert len(requests) == 1
    learner(requests[0])
    # The failed fit is handed back: the sensor goes on learning and asks again a while later
    # (MIN_LEARNING_ROWS readings, so a failing fitter is not asked on every reading).
    _wait(lambda: not engine._streams["boiler"].adaptation.fitting)  # type: ignore[union-attr]
    later = [Reading("boiler", {"value": 0.1}, 60.0 + i, ts=60.0 + i, ts_raw=60 + i) for i in range(MIN_LEARNING_ROWS + 1)]
    again = engine.score(later)
    assert all(v.learning for v in verdicts_of(again.results))
    assert len(again.learn_requests) == 1
    learner.stop()
    dying.close()


def test_no_worker_to_start_means_the_fit_runs_in_the_calling_thread(tmp_path: Path) -> None:
    events: list[str] = []
    worker = FitWorker(idle_exit=0, on_event=events.append, argv=[str(tmp_path / "no-such-python")])
    model = worker.fit(_request(), "v1")
    assert model.name == "learned:pump/1" and events == [FIT_IN_THREAD]


def test_an_idle_worker_exits_and_the_next_fit_starts_another() -> None:
    worker = FitWorker(idle_exit=0.3)
    try:
        worker.fit(_request(), "v1")
        first = worker.pid
        assert first is not None
        _wait(lambda: worker.pid is None)
        worker.fit(_request(), "v2")
        assert worker.pid not in (None, first)
    finally:
        worker.close()


def test_refits_of_sensors_that_started_together_are_spread_by_sensor_id() -> None:
    plan = LearningPlan(rows=60, refit_every=1000.0, refit_rows=60, refit_jitter=0.5)
    spec = FeatureSpec(fields=("value",), transforms=DEFAULT_TRANSFORMS)
    due_at = {}
    for sensor in (f"s{i}" for i in range(40)):
        a = SensorAdaptation(plan, sensor, spec, known=60)
        for t in range(1, 1100):
            if a.scored([0.0], False, float(t)) is not None:
                due_at[sensor] = t
                break
    # Each sensor refits after refit_every less its own share of refit_jitter of it, the same on every run.
    for sensor, t in due_at.items():
        assert t == 1 + int(np.ceil(1000.0 * (1 - 0.5 * share_of(sensor)))), sensor
    assert len(due_at) == 40 and min(due_at.values()) >= 500 and max(due_at.values()) <= 1001
    assert len(set(due_at.values())) > 30  # spread, not all at once
    assert share_of("s1") == share_of("s1") != share_of("s2")


def test_closing_kills_a_worker_busy_with_a_fit_and_starts_no_other() -> None:
    import threading

    worker = FitWorker(idle_exit=0, argv=[sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(8); time.sleep(60)"])
    failed: list[BaseException] = []

    def fit() -> None:
        try:
            worker.fit(_request(), "v1")
        except FitWorkerError as e:
            failed.append(e)

    fitting = threading.Thread(target=fit)
    fitting.start()
    _wait(lambda: worker.pid is not None)
    started = time.monotonic()
    worker.close(wait=0.2)
    fitting.join(10)
    assert not fitting.is_alive() and time.monotonic() - started < 5
    assert failed and "stopping" in str(failed[0]) and worker.pid is None
