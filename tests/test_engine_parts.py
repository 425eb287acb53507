"""The scoring engine's parts, each on its own: episodes, duplicate memory, routing, adaptation,
the sensor context, seasonal features and durations."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from conftest import REPO, verdicts_of
from edge_agent.config import ConfigError, load_config
from edge_agent.core.adaptation import MIN_LEARNING_ROWS, LearningPlan, SensorAdaptation
from edge_agent.core.dedup import RecentReadings
from edge_agent.core.detector import SensorContext
from edge_agent.core.domain import Reading, Verdict
from edge_agent.core.durations import Duration
from edge_agent.core.engine import ScoringEngine
from edge_agent.core.episodes import Decision, judge
from edge_agent.core.features import FeatureSpec, feature_matrix
from edge_agent.core.records import MARGIN, RecentRecords, Tally, record_score
from edge_agent.core.routing import ModelRouter, UnknownSensor
from edge_agent.tools.training import learn_model


def _events(decision: Decision, scores_at: Sequence[tuple[float, float]], can_adapt: bool = True) -> list[str | None]:
    state = decision.new_state()
    return [judge(decision, state, s, t, can_adapt).event for s, t in scores_at]


def test_an_episode_has_one_onset_and_ends_after_end_after_readings_that_no_longer_alert() -> None:
    d = Decision()
    assert d.end_after == 3
    scores = [(0.1, 0), (0.7, 1), (0.9, 2), (0.6, 3), (0.2, 4), (0.3, 5), (0.1, 6), (0.2, 7)]
    assert _events(d, scores) == [None, "onset", None, None, None, None, "end", None]
    state = d.new_state()
    assert [judge(d, state, s, t).anomaly for s, t in scores] == [0, 1, 1, 1, 0, 0, 0, 0]  # only flagged readings alert
    assert _events(Decision(end_after=1), scores) == [None, "onset", None, None, "end", None, None, None]


def test_a_burst_of_spikes_is_one_episode_and_a_spike_after_it_ended_a_new_one() -> None:
    d = Decision(repeat_horizon=0)  # every episode announced (repeats: the next test)
    state = d.new_state()
    burst = [0.9, 0.1, 0.1, 0.95, 0.2, 0.8, 0.1, 0.1, 0.1, 0.1, 0.9]  # gaps of 2 and 1 readings, then 3
    got = [judge(d, state, s, float(t)) for t, s in enumerate(burst)]
    assert [j.event for j in got] == ["onset", None, None, None, None, None, None, None, "end", None, "onset"]
    assert [j.anomaly for j in got] == [s >= d.threshold for s in burst]
    assert got[3].surprise < d.threshold and got[5].surprise < d.threshold  # the episode already told of them


def test_a_repeat_no_worse_within_a_day_is_anomalous_but_no_news() -> None:
    d = Decision(end_after=1)  # repeat_horizon: a day
    state, day = d.new_state(), 86400.0
    scores = [(0.8, 0), (0.1, 60), (0.7, 3600), (0.75, 3660), (0.1, 3720), (0.9, 7200), (0.1, 7260), (0.85, 1.5 * day)]
    got = [judge(d, state, s, t) for s, t in scores]
    # the spike; a weaker one an hour later (anomalous, a repeat: no onset, no end); a worse one; a weaker one past the day
    assert [j.event for j in got] == ["onset", "end", "repeat", None, None, "onset", "end", "onset"]
    assert [j.anomaly for j in got] == [1, 0, 1, 1, 0, 1, 0, 1]
    assert got[2].surprise < d.threshold and got[3].surprise < d.threshold
    assert [j.event for j in (judge(Decision(repeat_horizon=0, end_after=1), s_, s, t) for s_ in [Decision().new_state()]
                               for s, t in scores[:3])] == ["onset", "end", "onset"]
    # an episode that lasts for days keeps the last day's peaks only (a quarter of a day each)
    d_long = Decision(new_normal_after=0.0)
    state = d_long.new_state()
    for t in range(0, 10 * 86400, 3600):
        judge(d_long, state, 0.9, float(t))
    assert len(state.flagged_peaks) <= 5
    # a change taken in as the new normal is no yardstick for what comes after it
    d = Decision(new_normal_after=60.0, end_after=1)
    state = d.new_state()
    assert [judge(d, state, s, t).event for s, t in [(0.9, 0), (0.9, 30), (0.9, 60), (0.6, 200)]] == [
        "onset", None, "new_normal", "onset"]


def test_k_of_n_and_hysteresis_shape_the_episode() -> None:
    d = Decision(k=2, n=3, end_after=1)
    assert _events(d, [(0.9, 0), (0.1, 1), (0.9, 2), (0.1, 3), (0.1, 4)]) == [None, None, "onset", "end", None]
    # with clear 0.4, a score that hovers between 0.4 and the threshold holds the alert
    assert _events(Decision(clear=0.4, end_after=1), [(0.9, 0), (0.45, 1), (0.45, 2), (0.3, 3)]) == ["onset", None, None, "end"]
    assert _events(Decision(end_after=1), [(0.9, 0), (0.45, 1)]) == ["onset", "end"]


def test_a_lasting_episode_becomes_the_new_normal_by_the_readings_clock_only_where_the_model_can_adapt() -> None:
    d = Decision(new_normal_after=600.0)
    lasting = [(0.9, float(t)) for t in range(0, 1200, 60)]
    events = _events(d, lasting)
    assert events[0] == "onset" and events[10] == "new_normal" and events.count("new_normal") == 1
    assert events[11] == "onset"  # a model that did not adapt flags the new level again
    assert _events(d, lasting, can_adapt=False).count("new_normal") == 0
    assert _events(Decision(new_normal_after=0.0), lasting).count("new_normal") == 0


def test_the_surprise_peaks_at_the_onset_and_an_episode_s_later_readings_stay_below_the_threshold() -> None:
    d = Decision(end_after=1, repeat_horizon=0)  # the second onset is weaker than the first's peak
    state = d.new_state()
    scores = [0.1, 0.8, 0.9, 0.7, 0.95, 0.2, 0.3, 0.85]
    got = [judge(d, state, s, float(t)) for t, s in enumerate(scores)]
    surprise = [j.surprise for j in got]
    assert [j.event for j in got] == [None, "onset", None, None, None, "end", None, "onset"]
    assert surprise[1] == 0.8 and surprise[7] == 0.85  # each onset keeps its score
    assert surprise[0] == 0.1 and surprise[5:7] == [0.2, 0.3]  # so do readings outside episodes
    inside = surprise[2:5]
    assert all(s < d.threshold for s in inside), inside  # the episode already told of them
    assert inside[0] > inside[1]  # and they still rank by their score against the episode's peak
    assert all(j.anomaly for j in got[1:5])  # the alert holds for as long as before


def test_a_reading_delivered_twice_in_one_batch_gets_its_first_verdict_again(models_dir) -> None:
    from edge_agent.model_files import load_model

    engine = ScoringEngine({"m": load_model(models_dir / "default")}, default="m")
    readings = [Reading("s", {"value": 0.9 + 0.01 * (i % 3)}, float(i), ts=float(i), ts_raw=i) for i in range(40)]
    batch = readings + readings[10:30]  # a gateway flushing the same readings again, in the same batch
    results = verdicts_of(engine.score(batch).results)
    firsts, again = results[:40], results[40:]
    assert all(isinstance(v, Verdict) and v.duplicate for v in again)
    assert [(v.score, v.anomaly) for v in again] == [(v.score, v.anomaly) for v in firsts[10:30]]
    assert not any(v.duplicate for v in firsts)


def test_duplicate_memory_is_bounded_and_keys_on_time_and_values() -> None:
    memory = RecentReadings(capacity=3)
    v = Verdict("s", {"value": 1.0}, 1, 0.2, 0, "m", "1")
    for t in range(5):
        memory.remember(Reading("s", {"value": 1.0}, 0.0, ts=float(t)), [1.0], v)
    assert len(memory) == 3
    assert memory.duplicate_of(Reading("s", {"value": 1.0}, 0.0, ts=4.0), [1.0]) is not None
    assert memory.duplicate_of(Reading("s", {"value": 1.0}, 0.0, ts=0.0), [1.0]) is None  # forgotten
    assert memory.duplicate_of(Reading("s", {"value": 2.0}, 0.0, ts=4.0), [2.0]) is None
    # without a timestamp, only the transport's word makes a repeat a duplicate
    memory.remember(Reading("s", {"value": 7.0}, 0.0), [7.0], v)
    assert memory.duplicate_of(Reading("s", {"value": 7.0}, 1.0), [7.0]) is None
    assert memory.duplicate_of(Reading("s", {"value": 7.0}, 1.0, redelivered=True), [7.0]) is not None


def test_routing_takes_the_first_matching_pattern_then_the_learned_model_then_the_default(models_dir) -> None:
    from edge_agent.model_files import load_model

    a, b = load_model(models_dir / "default"), load_model(models_dir / "default")
    router = ModelRouter({"a": a, "b": b}, assign=[("pump-*", "a"), ("*", "b")], default="b", learned={"x": a})
    assert router.assigned("pump-1") is a and router.assigned("fan") is b
    assert ModelRouter({"a": a}, learned={"x": b}).assigned("x") is b
    with pytest.raises(UnknownSensor, match=r"models\.default is unset"):
        ModelRouter({"a": a}).default_model("y")
    with pytest.raises(KeyError, match="not loaded"):
        ModelRouter({"a": a}, assign=[("*", "zzz")])


def test_a_sensor_learns_for_its_period_by_its_own_clock() -> None:
    spec = FeatureSpec(("value",))
    slow = SensorAdaptation(LearningPlan(period=3600.0, rows=3600), "s", spec)
    # one reading every 5 minutes: an hour is 13 readings, too few; it learns until it has 50
    requests = [slow.learning([float(i)], at=300.0 * i) for i in range(MIN_LEARNING_ROWS)]
    assert [i for i, r in enumerate(requests) if r is not None] == [MIN_LEARNING_ROWS - 1]
    fast = SensorAdaptation(LearningPlan(period=3600.0, rows=200), "f", spec)
    # ten readings a second: rows caps it long before the hour is over
    requests = [fast.learning([float(i)], at=0.1 * i) for i in range(300)]
    first = next(i for i, r in enumerate(requests) if r is not None)
    assert first == 199 and requests[first].times is not None and len(requests[first].values) == 200  # type: ignore[union-attr]
    timely = SensorAdaptation(LearningPlan(period=3600.0, rows=100_000), "t", spec)
    requests = [timely.learning([float(i)], at=10.0 * i) for i in range(400)]
    assert next(i for i, r in enumerate(requests) if r is not None) == 360  # 3600 s at a reading every 10 s


def test_refits_come_by_time_once_a_model_knows_enough() -> None:
    spec = FeatureSpec(("value",))
    plan = LearningPlan(period=0.0, rows=100, refit_every=3600.0, refit_rows=200, refit_jitter=0.0)
    a = SensorAdaptation(plan, "s", spec, known=200)
    due = []
    for i in range(1000):
        if a.scored([0.0], False, at=10.0 * i):
            a.settled()  # each fit done at once
            due.append(i)
    assert due == [360, 720]  # every hour at a reading every 10 s


def test_a_flagged_reading_stays_out_of_the_clean_context_until_its_change_is_accepted() -> None:
    context = SensorContext(FeatureSpec(("value",), ("value", "delta", "mean:3")))
    for _ in range(10):
        context.advance([1.0], flagged=False)
    context.advance([9.0], flagged=True)
    # clean (the spike is not in its level; the change is counted from it), and live with it
    assert context.rows([1.0]) == [[1.0, -8.0, 1.0], [1.0, -8.0, pytest.approx(11.0 / 3)]]
    context.absorb()
    assert context.rows([9.0]) == [[9.0, 0.0, pytest.approx(19.0 / 3)]]  # accepted: one context, with the new level


def test_a_held_stretch_ends_in_the_context_that_explains_the_readings_after_it() -> None:
    from edge_agent.core.detector import SETTLE

    spec = FeatureSpec(("value",), ("value", "mean:5"))

    def after(live_explains: bool) -> list[list[float]]:
        context = SensorContext(spec)
        for _ in range(5):
            context.advance([1.0], flagged=False)
        context.advance([5.0], flagged=True)
        for _ in range(SETTLE):
            assert len(context.rows([1.0])) == 2  # both contexts kept while the stretch settles
            context.advance([1.0], flagged=False, scores=(0.45, 0.1) if live_explains else (0.1, 0.45))
        return context.rows([1.0])

    assert after(live_explains=False) == [[1.0, 1.0]]  # a glitch: the clean context goes on
    assert after(live_explains=True) == [[1.0, pytest.approx(9.0 / 5)]]  # a change that had crept in: the live one
    long = SensorContext(spec, hold=2)
    for _ in range(5):
        long.advance([1.0], flagged=False)
    for _ in range(2):  # as long as it may hold: taken in
        long.advance([5.0], flagged=True)
    assert long.rows([5.0]) == [[5.0, pytest.approx(17.0 / 5)]]


def test_season_compares_a_reading_with_the_same_time_of_day_a_cycle_before() -> None:
    spec = FeatureSpec(("value",), ("value", "season:1d"))
    t = np.arange(0, 3 * 86400, 300.0)
    daily = 10 + 5 * np.sin(2 * np.pi * t / 86400)
    f = feature_matrix(spec, daily[:, None], t)
    assert np.isnan(f[:288, 1]).all()  # no previous day yet
    assert np.nanmax(np.abs(f[288:, 1])) < 0.2  # the cycle is explained
    wrong = daily.copy()
    wrong[2 * 288 + 36] = daily[2 * 288 + 36 + 144]  # noon's value at 3 a.m.
    assert abs(feature_matrix(spec, wrong[:, None], t)[2 * 288 + 36, 1]) > 5
    assert np.isnan(feature_matrix(spec, daily[:, None])[:, 1]).all()  # no timestamps: no season


def test_a_season_makes_its_table_at_the_second_reading_and_scores_as_if_it_had_one_from_the_first() -> None:
    spec = FeatureSpec(("value",), ("value", "season:1d", "season:1w"))
    state = spec.new_state()
    state.update([3.0], at=86400.0 * 10 + 600)
    profiles = state._seasons[0] if state._seasons else []
    assert len(profiles) == 2 and all(p.cells is None for p in profiles)  # an id heard from once costs no table
    day_later = state.copy().update([5.0], at=86400.0 * 11 + 600)
    assert day_later[1] == 2.0 and np.isnan(day_later[2])  # against the one reading a day before
    assert np.isnan(state.copy().update([5.0], at=86400.0 * 11 + 6 * 3600)[1])  # not the same time of day
    state.update([4.0], at=86400.0 * 10 + 700)
    assert all(p.cells is not None for p in profiles)
    assert state.update([6.0], at=86400.0 * 11 + 800)[1] == 2.5  # both readings of that phase, the first included


def test_a_value_normal_at_noon_is_found_at_three_in_the_morning() -> None:
    spec = FeatureSpec(("value",), ("value", "delta", "mean:30", "std:10", "season:1d"))
    rng = np.random.default_rng(3)
    t = np.arange(0, 6 * 86400, 300.0)
    values = 10 + 5 * np.sin(2 * np.pi * (t / 86400 - 0.25)) + rng.normal(0, 0.2, len(t))  # low at 00:00, high at 12:00
    model = learn_model(spec, values[:4 * 288, None], "s", "1", times=t[:4 * 288])
    engine = ScoringEngine({"s": model}, default="s")
    readings = [Reading("x", {"value": float(v)}, float(ts), ts=float(ts), ts_raw=ts) for v, ts in zip(values, t, strict=True)]
    three_am = 5 * 288 + 36
    readings[three_am] = Reading("x", {"value": 15.0}, float(t[three_am]), ts=float(t[three_am]), ts_raw=t[three_am])
    verdicts = verdicts_of(engine.score(readings).results)
    assert verdicts[three_am].anomaly == 1
    assert verdicts[5 * 288 + 144].anomaly == 0  # 15 at noon is normal
    assert sum(v.anomaly for v in verdicts[4 * 288:]) <= 3


def test_durations_are_read_with_units_and_named_when_wrong() -> None:
    cfg = load_config(None, ["decision.new_normal_after=2d", "learning.period=90", "learning.refit_every=30m"], {})
    assert cfg.decision.new_normal_after == 172800.0 and str(cfg.decision.new_normal_after) == "2d"
    assert cfg.learning.period == 90.0 and cfg.learning.refit_every == 1800.0
    with pytest.raises(ConfigError, match=r"learning.period.*'soon'.*duration such as 90s"):
        load_config(None, ["learning.period=soon"], {})
    with pytest.raises(ConfigError, match=r"decision\.new_normal_after"):
        load_config(None, ["decision.new_normal_after=-5"], {})
    assert Duration.parse("1.5h") == 5400.0


def test_a_history_grows_as_readings_come_and_keeps_order_across_growth() -> None:
    from edge_agent.core.adaptation import History

    h = History(capacity=300, n_fields=1)
    h.append([0.0], at=0.0)
    assert h.nbytes < 2000  # one reading costs little: no full buffer up front
    for i in range(1, 1000):
        h.append([float(i)], flagged=i % 7 == 0, at=float(i))
    assert len(h) == 300 and h.latest().ravel().tolist() == [float(i) for i in range(700, 1000)]
    assert h.latest_times(3).tolist() == [997.0, 998.0, 999.0]
    assert h.latest_flags().tolist() == [i % 7 == 0 for i in range(700, 1000)]
    assert h.nbytes == 300 * (4 + 1 + 4) + 8  # float32 offsets, a flag, a float32 time offset; the origin


def test_a_history_keeps_small_steps_of_large_values_and_times_across_months() -> None:
    from edge_agent.core.adaptation import History

    h = History(capacity=1000, n_fields=1)
    start = 1_700_000_000.0
    meter = [1_000_000.0 + 0.001 * i for i in range(3000)]  # Wh: float32 alone would hold steps of 0.0625
    for i, wh in enumerate(meter):
        h.append([wh], at=start + 3600.37 * i)  # about a reading an hour: 125 days
    np.testing.assert_allclose(np.diff(h.latest()[:, 0]), 0.001, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h.latest()[:, 0], meter[-1000:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(h.latest_times(), [start + 3600.37 * i for i in range(2000, 3000)], rtol=0, atol=0.2)
    # A field with no value at first, then values beyond float32's range, kept exactly.
    h = History(capacity=100, n_fields=1)
    for i in range(200):
        h.append([math.nan if i < 5 else 1e300 * (1 + i % 3)])
    assert h.latest()[:, 0].tolist() == [1e300 * (1 + i % 3) for i in range(100, 200)]


def test_a_copied_feature_state_goes_its_own_way() -> None:
    state = FeatureSpec(("value",), ("value", "delta", "mean:3", "drift:5", "season:1d")).new_state()
    for i in range(40):  # more than a day at a reading an hour: every feature defined
        state.update([float(i)], at=3600.0 * i)
    twin = state.copy()
    before = twin.peek([7.0], at=3600.0 * 40)
    assert not any(x != x for x in before)
    state.update([100.0], at=3600.0 * 40)
    state.update([100.0], at=3600.0 * 41)
    assert twin.peek([7.0], at=3600.0 * 40) == before
    assert state.peek([7.0], at=3600.0 * 40) != before


# docs/architecture.md: "the last 32 readings it remembers to recognise redeliveries".
DOCUMENTED_MEMORY = 32


def test_the_duplicate_memory_holds_the_documented_number_of_readings(models_dir) -> None:
    from edge_agent.model_files import load_model

    assert re.search(rf"the last {DOCUMENTED_MEMORY} readings it\s+remembers to recognise redeliveries",
                     (REPO / "docs" / "architecture.md").read_text())
    engine = ScoringEngine({"m": load_model(models_dir / "default")}, default="m")

    def resent_after(sensor: str, others: int) -> Verdict:
        """Send a sensor's first reading, ``others`` more one by one (as live), then the first again."""
        readings = [Reading(sensor, {"value": 0.9 + 0.001 * i}, float(i), ts=float(i), ts_raw=i) for i in range(others + 1)]
        for reading in readings:
            engine.score([reading])
        (again,) = engine.score([readings[0]]).results
        assert isinstance(again, Verdict)
        return again

    assert resent_after("kept", DOCUMENTED_MEMORY - 1).duplicate  # the oldest of the last 32: recognised
    assert not resent_after("forgotten", DOCUMENTED_MEMORY).duplicate  # one more in between: scored anew


def test_the_scoring_core_opens_no_files_and_knows_no_adapter() -> None:
    # docs/architecture.md promises edge_agent/core/ needs no files, network or MQTT: the
    # adapters and model_files.py do that. A core module importing one of these breaks it.
    import ast

    forbidden = ("socket", "subprocess", "paho", "prometheus_client", "pathlib", "shutil", "tempfile", "asyncio")
    for path in sorted((REPO / "edge_agent" / "core").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
                assert not name.startswith("edge_agent.") or name.startswith("edge_agent.core."), f"{path.name} imports {name}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "open", f"{path.name} opens a file"


def test_records_judge_a_reading_by_how_far_it_goes_past_the_highest_and_lowest_of_recent_days() -> None:
    hour = 3600.0
    records = RecentRecords(1, horizon=30 * 86400.0)
    for i in range(24):  # a day of readings between 10 and 12, mean 11
        records.add([10.0 + 2.0 * (i % 2)], i * hour)
    assert records.excess([20.0]) == 0.0  # too young: less than a day and MIN_COUNT readings
    for i in range(24, 24 * 5):
        records.add([10.0 + 2.0 * (i % 2)], i * hour)
    assert records.excess([11.5]) == 0.0 and records.excess([12.0]) == 0.0  # within the records
    # Past the high of 12 by a third of its distance from the mean (1) is the threshold.
    assert records.excess([12.0 + MARGIN]) == pytest.approx(1.0)
    assert records.excess([9.0]) == pytest.approx(3.0)  # a low: one unit below 10, three margins
    assert record_score(records.excess([12.0 + MARGIN / 2]), 0.5) == pytest.approx(0.25)
    assert record_score(records.excess([13.0]), 0.5) > 0.5
    # A stretch held out of the records counts once it is taken in.
    stretch = Tally(1)
    stretch.add([14.0])
    assert records.excess([13.0]) > 0.0
    records.take_in(stretch)
    assert records.excess([13.0]) == 0.0


def test_settled_records_judge_a_day_s_slide_against_the_days_before_it() -> None:
    hour = 3600.0

    def slide(days: int) -> list[float]:
        """Excesses of a slide from 80, one unit an hour, after ``days`` days between 80 and 90."""
        records = RecentRecords(1, horizon=30 * 86400.0)
        for i in range(24 * days):
            records.add([80.0 + 10.0 * (i % 2)], i * hour)
        out = []
        for k in range(1, 12):  # each reading normal to the model, so each joins the current block
            out.append(records.excess([80.0 - k]))
            records.add([80.0 - k], (24 * days + k) * hour)
        return out

    # A week of completed days: the slide is judged against them (low 80, mean 85: a third
    # of 5 below 80 is the threshold; the slide moves the mean a little), not against its own
    # last reading.
    settled = slide(8)
    assert settled[0] == pytest.approx(0.6) and settled[1] == pytest.approx(1.2, abs=0.01) and max(settled) > 3.0
    # Five days: too few to hold a day's wander; each reading is judged with the day's own
    # readings, so one unit past the last low stays under the threshold.
    young = slide(5)
    assert 0.0 < max(young) < 1.0


def test_records_forget_what_lies_past_their_horizon() -> None:
    day = 86400.0
    records = RecentRecords(1, horizon=10 * day)
    records.add([50.0], 0.0)  # an old high
    for i in range(1, 24 * 30):
        records.add([10.0 + (i % 2)], i * 3600.0)
    assert records.excess([40.0]) > 1.0  # the high of 50 is 30 days old: a 40 now breaks the records


def test_a_flagged_stretch_stays_out_of_the_records_until_the_context_takes_it_in() -> None:
    spec = FeatureSpec(fields=("v",), transforms=("value",))
    context = SensorContext(spec, record_horizon=30 * 86400.0)
    for i in range(200):
        context.advance([10.0 + (i % 2)], flagged=False, at=i * 3600.0)
    assert context.record_excess([20.0]) > 1.0
    context.advance([20.0], flagged=True, at=200 * 3600.0)
    context.advance([20.0], flagged=True, at=201 * 3600.0)
    assert context.live is not None  # held: the live context has the spike, the records do not
    assert context.record_excess([20.0]) > 1.0  # the spike set no record
    context.absorb()  # its level is the new normal
    assert context.record_excess([20.0]) == 0.0


def test_an_episode_is_the_new_normal_only_once_it_has_lasted_enough_readings_too() -> None:
    d = Decision(new_normal_after=3600.0)
    hourly = [(0.9, 0.0), (0.9, 3600.0), (0.9, 7200.0), (0.9, 10800.0)]
    assert _events(d, hourly)[1] == "new_normal"
    state = d.new_state()
    events = [judge(d, state, s, t, new_normal_readings=3).event for s, t in hourly]
    assert events == ["onset", None, "new_normal", "onset"]
