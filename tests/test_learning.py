"""Learning on the device: sensors without a model learn one, keep it across restarts, refit it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from conftest import verdicts_of
from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.domain import Reading, Verdict
from edge_agent.core.engine import LearningPlan, Scored, ScoringEngine, UnknownSensor
from edge_agent.core.features import DEFAULT_TRANSFORMS, MAX_REPEATS, FeatureSpec
from edge_agent.core.forest import Forest
from edge_agent.core.forest_fit import fit_forest
from edge_agent.core.model import WANDERING_MARGIN
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


class _Dispatching:
    """An engine whose learn requests go to a Learner, as the pipeline hands them over."""

    def __init__(self, engine: ScoringEngine, learner: Learner) -> None:
        self.engine, self.learner = engine, learner

    def score(self, readings: list[Reading]) -> Scored:
        scored = self.engine.score(readings)
        for request in scored.learn_requests:
            self.learner(request)
        return scored

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


def _engine(tmp_path: Path, rows: int = 200, refit_every: int = 0, learned: dict | None = None) -> tuple[ScoringEngine, Learner]:
    learner = Learner(tmp_path)
    engine = ScoringEngine({}, learning=LearningPlan(rows=rows, refit_every=refit_every, refit_rows=300), learned=learned)
    learner.attach(engine)
    return _Dispatching(engine, learner), learner  # type: ignore[return-value]


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
    first = verdicts_of(engine.score(_readings("boiler", list(20 + rng.normal(0, 0.2, 200)))).results)
    assert all(isinstance(v, Verdict) and v.learning and v.anomaly == 0 for v in first)
    assert first[-1].model_version == "200/200"
    with pytest.raises(UnknownSensor, match="still learning"):
        engine.predict({"value": 20.0}, "boiler")
    with pytest.raises(UnknownSensor, match="'never-seen' is unknown"):  # not "still learning": nothing is
        engine.predict({"value": 20.0}, "never-seen")
    _wait_for_model(engine, "boiler")
    later = verdicts_of(engine.score(_readings("boiler", list(20 + rng.normal(0, 0.2, 50)) + [35.0], start=200)).results)
    assert not any(v.learning for v in later)
    assert later[-1].anomaly == 1 and later[-1].model == "learned:boiler"
    assert sum(v.anomaly for v in later[:-1]) <= 1
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
    [v] = engine2.score(_readings("pump/1", [1.02], start=500)).results
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
    # Fitted in the fit process (learning.fits: process, the default), which is still up and counted.
    assert agent.registry.get_sample_value("edge_agent_fits_total", {"where": "worker"}) == 1.0
    assert agent.fit_worker is not None and agent.fit_worker.pid not in (None, os.getpid())
    assert agent.registry.get_sample_value("edge_agent_fit_worker_rss_bytes") > 1e6


def test_history_keeps_the_newest_readings_in_order() -> None:
    from edge_agent.core.adaptation import History

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
    assert h.latest_flags().tolist() == [False] * 4


def test_history_remembers_which_readings_were_flagged() -> None:
    from edge_agent.core.adaptation import History

    h = History(capacity=3, n_fields=1)
    for i, flagged in enumerate([True, False, True, False]):
        h.append([i], flagged)
    assert h.latest().ravel().tolist() == [1, 2, 3]
    assert h.latest_flags().tolist() == [False, True, False]
    assert h.latest_flags(2).tolist() == [True, False]


class _InlineLearner:
    """Fits each request at once (after the scoring call returns) and keeps it for the test to inspect."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.requests: list[LearnRequest] = []
        self.pending: list[LearnRequest] = []
        self.engine = engine

    def __call__(self, request: LearnRequest) -> None:
        self.requests.append(request)
        self.pending.append(request)

    def feed(self, readings: list[Reading]) -> list[Verdict]:
        from edge_agent.tools.training import fit_request

        out = []
        for reading in readings:
            scored = self.engine.score([reading])
            out += verdicts_of(scored.results)
            for request in scored.learn_requests:
                self(request)
            while self.pending:
                r = self.pending.pop(0)
                self.engine.install(r.sensor_id, fit_request(r, str(len(self.requests))), learned_flagged=r.keep is None)
        return out


def _inline(plan: LearningPlan) -> _InlineLearner:
    learner = _InlineLearner(ScoringEngine({}, learning=plan))
    return learner


def test_refits_double_what_a_young_model_knows_then_keep_their_pace() -> None:
    learner = _inline(LearningPlan(rows=100, refit_every=500, refit_rows=400))
    rng = np.random.default_rng(4)
    learner.feed(_readings("s", list(rng.normal(0, 1, 1800))))
    # after 100 readings; then after as many new ones as the last fit saw (100, 200); then every 500
    assert [len(r.values) for r in learner.requests] == [100, 200, 400, 400, 400]
    assert not learner.requests[0].refit and all(r.refit for r in learner.requests[1:])


def test_a_refit_leaves_flagged_readings_out_but_learns_a_new_normal() -> None:
    learner = _inline(LearningPlan(rows=200, refit_every=300, refit_rows=300, stale_share=0.5))
    rng = np.random.default_rng(5)
    learner.feed(_readings("s", list(rng.normal(0, 1, 200))))
    # 100 normal readings with a few wild ones, then the refit: those few are left out
    values = list(rng.normal(0, 1, 100))
    values[10] = values[50] = 40.0
    verdicts = learner.feed(_readings("s", values + list(rng.normal(0, 1, 100)), start=200))
    first_refit = learner.requests[1]
    assert first_refit.refit and first_refit.keep is not None
    # the window is readings 100..399; the wild ones are 210 and 250, their echo in the
    # rolling features lasts a feature window (30 readings), and the readings within a
    # window of a flagged one are left out too: nothing else is
    left_out = np.flatnonzero(~first_refit.keep) + 100
    assert {210, 250} <= set(left_out.tolist())
    assert left_out.min() == 210 - 30 and left_out.max() <= 250 + 30 + 30
    assert verdicts[10].anomaly == 1 and verdicts[50].anomaly == 1
    # the level moves for good: more than half of what follows is flagged, so the next
    # refit learns from all of it, and the new level stops being an anomaly
    shifted = learner.feed(_readings("s", list(25 + rng.normal(0, 1, 1200)), start=400))
    stale = [r for r in learner.requests[2:] if r.keep is None]
    assert stale, "no refit learned the new normal"
    assert shifted[0].anomaly == 1
    assert sum(v.anomaly for v in shifted[:100]) == 100  # until a refit, the new level is flagged
    assert sum(v.anomaly for v in shifted[-300:]) <= 15  # then it is the normal


def test_learning_told_to_leaves_unmarked_outliers_out_of_the_model() -> None:
    from edge_agent.tools.training import learn_model

    rng = np.random.default_rng(6)
    values = rng.normal(0, 1, 1000)
    values[[100, 400, 700]] = 12.0  # spikes nobody labelled, in the readings a sensor learns from
    model = learn_model(FeatureSpec(("value",), DEFAULT_TRANSFORMS), values[:, None], "s", "1", leave_out_outliers=True)
    assert model.manifest["training"]["rows"] < 1000
    assert model.range_guard.high[0] < 6  # the normal's range, not the spikes'
    engine = ScoringEngine({"s": model}, default="s")
    *_, spike = engine.score(_readings("x", list(rng.normal(0, 1, 50)) + [12.0])).results
    assert spike.anomaly == 1  # type: ignore[union-attr]


def test_learning_features_come_from_the_config_and_stay_with_the_learned_model() -> None:
    from edge_agent.agent import learning_plan
    from edge_agent.config import load_config

    cfg = load_config(None, ["learning.features=[value, delta, 'mean_dev:20']", "learning.rows=100"], {})
    plan = learning_plan(cfg)
    assert plan.features == ("value", "delta", "mean_dev:20")
    learner = _inline(dataclasses.replace(plan, refit_every=0))
    learner.feed(_readings("s", list(np.random.default_rng(13).normal(0, 1, 150))))
    model = learner.engine.learned["s"]
    assert model.spec.transforms == ("value", "delta", "mean_dev:20")
    assert model.forest.n_features == 3
    assert learning_plan(load_config(None, [], {})).features == DEFAULT_TRANSFORMS


def test_a_slow_ramp_is_flagged_while_it_climbs_not_only_when_it_snaps_back() -> None:
    from edge_agent.tools.training import learn_model

    # A temperature with slow wander (AR(1), ~2 minutes) learns for an hour at 1 reading/s;
    # then it drifts 8 noise widths over 300 readings and snaps back.
    rng = np.random.default_rng(12)
    n, phi = 5400, np.exp(-1 / 120)
    wander = np.zeros(n)
    for i in range(1, n):
        wander[i] = phi * wander[i - 1] + 0.15 * np.sqrt(1 - phi**2) * rng.normal()
    temp = 22 + wander + rng.normal(0, 0.03, n)
    sigma = float(np.hypot(0.15, 0.03))
    start, length = 4500, 300
    temp[start : start + length] += 8 * sigma * np.arange(1, length + 1) / length
    first_alert = {}
    for transforms in (DEFAULT_TRANSFORMS, tuple(t for t in DEFAULT_TRANSFORMS if not t.startswith("drift"))):
        model = learn_model(FeatureSpec(("value",), transforms), temp[:3600, None], "s", "1")
        verdicts = verdicts_of(ScoringEngine({"s": model}, default="s").score(_readings("x", list(temp))).results)
        alerts = [i for i in range(3600, n) if verdicts[i].anomaly]
        assert all(i >= start for i in alerts)  # no false alarm in the half hour before
        first_alert["drift" in " ".join(transforms)] = alerts[0] - start if alerts else None
    with_drift, without_drift = first_alert[True], first_alert[False]
    assert with_drift is not None and with_drift < length  # found while it climbs
    assert without_drift is None or without_drift >= length  # without it: at the snap-back at best


def test_a_sensor_that_counts_may_repeat_itself_but_not_freeze() -> None:
    from edge_agent.core.model import normal_repeats
    from edge_agent.tools.training import learn_model

    # Counts (events per 5 minutes over a daily cycle) often equal the last count: runs of
    # two or three equal readings are normal for it, unlike for a continuous sensor.
    rng = np.random.default_rng(10)  # its 604 learning readings never hold three equal in a row
    counts = rng.poisson(20 + 15 * np.sin(2 * np.pi * np.arange(3600) / 288)).astype(float)
    model = learn_model(FeatureSpec(("value",), DEFAULT_TRANSFORMS), counts[:604, None], "s", "1", leave_out_outliers=True)
    engine = ScoringEngine({"s": model}, default="s")
    normal = verdicts_of(engine.score(_readings("x", list(counts[604:]))).results)
    runs = [i for i in range(2, len(normal)) if counts[604 + i] == counts[603 + i] == counts[602 + i]]
    assert len(runs) > 10  # three equal counts in a row happen, and are not alarms
    assert sum(v.anomaly for v in normal) <= 3
    frozen = verdicts_of(engine.score(_readings("x", [counts[-1]] * 40)).results)
    first = next(i for i, v in enumerate(frozen) if v.anomaly)
    assert first <= 12 and all(v.anomaly for v in frozen[first:])
    # the run length allowed: the one that gets as rare as one reading in 10,000
    # never repeated in 500 readings: a repeat is rarer than ~1 in 500, not impossible, so
    # one is allowed (q = 1/502 by the rule of succession) and a second in a row is stuck;
    # past 10,000 readings with none, q is under 1e-4 and the first repeat is stuck
    assert normal_repeats(np.zeros(500)) == 1
    assert normal_repeats(np.zeros(20_000)) == 0
    assert normal_repeats(np.tile([0.0, 1.0], 250)) == 13  # half repeat: 0.5**14 < 1e-4
    assert normal_repeats(np.ones(500)) == MAX_REPEATS


def test_a_repeat_unseen_while_learning_is_rare_not_stuck_but_a_frozen_sensor_is() -> None:
    from edge_agent.tools.training import learn_model

    # A temperature in 4 decimals: about one reading in 400 equals the last, and these 600
    # learning readings hold none. Its later single repeats are normal.
    rng = np.random.default_rng(11)
    temp = np.round(21 + rng.normal(0, 0.012, 20_000), 4)
    learning, later = temp[:600], temp[600:]
    assert not np.any(learning[1:] == learning[:-1])
    model = learn_model(FeatureSpec(("value",), DEFAULT_TRANSFORMS), learning[:, None], "s", "1")
    engine = ScoringEngine({"s": model}, default="s")
    verdicts = verdicts_of(engine.score(_readings("x", list(later))).results)
    repeats = [i for i in range(2, len(later)) if later[i] == later[i - 1] != later[i - 2]]
    assert len(repeats) > 10  # each one was flagged as a frozen sensor before
    assert sum(verdicts[i].anomaly for i in repeats) == 0
    frozen = verdicts_of(engine.score(_readings("x", [later[-1]] * 10, start=len(later))).results)
    assert [v.anomaly for v in frozen[:3]] == [0, 1, 1]  # repeated once: rare; twice: stuck


def test_repeats_left_out_as_outliers_still_count_towards_what_is_normal() -> None:
    from edge_agent.tools.training import learn_model

    # A CPU load in steps of 0.2 % over a daily cycle (5-minute rows): about one reading in
    # 100 equals the last. In these 604 learning rows the outlier filter leaves all of those
    # out of the fit; a repeat must not then look like a sensor that never repeats and froze.
    rng = np.random.default_rng(0)
    daily = np.sin(2 * np.pi * np.arange(4000) / 288)
    load = np.round(np.clip(40 + 10 * daily + 3 * rng.standard_normal(4000), 0, 100) / 0.2) * 0.2
    model = learn_model(FeatureSpec(("value",), DEFAULT_TRANSFORMS), load[:604, None], "s", "1", leave_out_outliers=True)
    assert model.manifest["training"]["rows"] < 604  # the filter did leave rows out
    engine = ScoringEngine({"s": model}, default="s")
    verdicts = verdicts_of(engine.score(_readings("x", list(load[604:]))).results)
    repeats = [i for i in range(2, len(verdicts)) if load[604 + i] == load[603 + i] != load[602 + i]]
    assert len(repeats) > 30
    assert sum(verdicts[i].anomaly for i in repeats) == 0
    assert sum(v.anomaly for v in verdicts) <= 3


def test_a_sensor_with_rare_recurring_extremes_keeps_them_unless_told_to_leave_outliers_out() -> None:
    # A machine that runs half the day: a step of 60 twice a day, 4 of them in the 604
    # readings learned from (5-minute readings). Kept (the default), no later step is an
    # alarm; left out as outliers (learning.leave_out_outliers: true), every one is.
    rng = np.random.default_rng(1)
    day = np.arange(4032) % 288
    level = list(np.where(day < 144, 20.0, 80.0) + rng.normal(0, 1, 4032))
    flagged = {}
    for leave_out in (True, False):
        learner = _inline(LearningPlan(rows=604, refit_every=600, refit_rows=1200, leave_out_outliers=leave_out))
        verdicts = learner.feed(_readings("s", level))
        assert len(learner.requests) > 1 and all(r.leave_out_outliers is leave_out for r in learner.requests)
        flagged[leave_out] = sum(v.anomaly for v in verdicts)
    assert flagged[False] == 0
    assert flagged[True] >= 22  # at least a reading at each later step: 2 a day for 11 days


def test_one_bad_reading_while_learning_does_not_hide_later_spikes_of_its_size() -> None:
    rng = np.random.default_rng(8)
    values = list(10 + rng.normal(0, 1, 1600))
    values[300] = 20.0  # a glitch among the 600 readings learned from (outliers are kept by default)
    spikes = [800, 1000, 1200, 1400]
    for i in spikes:
        values[i] = 20.0  # the same reading again, later: with the glitch as the range's edge, none was flagged
    learner = _inline(LearningPlan(rows=600, refit_every=0))
    verdicts = learner.feed(_readings("s", values))
    model = learner.engine.learned["s"]
    assert model.manifest["training"]["rows"] == 600  # nothing left out of the fit
    assert model.range_guard.high[0] < 15  # but the glitch is not the edge of the normal range
    assert all(verdicts[i].anomaly for i in spikes)


def test_an_abrupt_step_seen_once_while_learning_stays_strange_and_one_seen_twice_does_not() -> None:
    rng = np.random.default_rng(3)
    flagged = {}
    for runs in (1, 2):  # the machine starts and stops once, or twice, in each hour
        t = np.arange(3 * 3600) % 3600
        on = (t >= 1000) & (t < 1600) if runs == 1 else ((t >= 500) & (t < 1100)) | ((t >= 2000) & (t < 2600))
        level = list(np.where(on, 80.0, 20.0) + rng.normal(0, 1, len(t)))
        learner = _inline(LearningPlan(rows=3600, refit_every=0))
        verdicts = learner.feed(_readings("s", level))
        flagged[runs] = sum(v.anomaly for v in verdicts)
    assert flagged[1] >= 4  # every later start and stop: 2 of each
    assert flagged[2] == 0


@pytest.mark.broker
def test_predict_over_http_tells_an_unknown_sensor_from_a_learning_one(start_agent, sensor, tmp_path: Path) -> None:
    import json as _json
    import urllib.error
    import urllib.request

    agent = start_agent("learning.enabled=true", f"learning.state_dir={tmp_path}", "models.default=null")
    sensor.send_json("sensors/boiler", {"value": 20.0, "ts": 1})
    host, port = agent.http_address

    def predict(sensor_id: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://{host}:{port}/predict", method="POST",
                                         data=_json.dumps({"value": 20.0, "sensor_id": sensor_id}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    deadline = time.monotonic() + 5
    while "still learning" not in predict("boiler")[1]:
        assert time.monotonic() < deadline, predict("boiler")
        time.sleep(0.05)
    status, body = predict("never-seen")
    assert status == 404 and "'never-seen' is unknown" in body and "learning" not in body.replace("models.assign", "")


def test_a_season_is_range_checked_and_gets_a_wandering_margin_where_it_does_not_explain_the_sensor() -> None:
    from edge_agent.tools.training import learn_model

    t = np.arange(0, 4 * 86400, 300.0)
    rng = np.random.default_rng(8)
    walk = 20 + np.cumsum(rng.normal(0, 0.05, len(t)))  # no daily cycle: yesterday at this time says little
    cycle = 20 + 5 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 0.3, len(t))
    spec = FeatureSpec(("value",), DEFAULT_TRANSFORMS)
    season = spec.names.index("value:season:1d")
    assert season not in spec.forest_columns  # the range check watches it, the forest does not see it
    assert learn_model(spec, walk[:, None], "w", "1", times=t).range_guard.margin[season] == WANDERING_MARGIN
    assert learn_model(spec, cycle[:, None], "c", "1", times=t).range_guard.margin[season] < 1
