"""The evaluation scripts in bench/ run end to end on small inputs and print their tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, skab_like_csv


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_eval_skab_prints_both_rows_and_the_healthy_share(tmp_path: Path) -> None:
    skab_like_csv(tmp_path / "valve1" / "0.csv", 700, fault_from=550, seed=1)
    skab_like_csv(tmp_path / "anomaly-free" / "anomaly-free.csv", 900, fault_from=None, seed=2)
    done = _run("-m", "bench.eval_skab", "--data", str(tmp_path), "-q", "--set", "learning.rows=300")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1 files under" in out and "300 rows scored in each mode" in out
    protocol = next(line for line in out.splitlines() if "scikit-learn model of the first 400 rows" in line)
    f1 = float(protocol.split("|")[2].strip(" *"))
    assert f1 > 0.9  # a 25-noise-width pressure step is found
    assert "learning on the device, numpy fitter, refit every 1h" in out
    assert "anomaly-free recording, learned as an unknown sensor (learning.rows 300" in out
    assert "each field alone:" in out


def test_eval_skab_skips_a_file_it_cannot_score_and_names_it(tmp_path: Path) -> None:
    skab_like_csv(tmp_path / "valve1" / "0.csv", 700, fault_from=550, seed=1)
    unlabelled = tmp_path / "other" / "9.csv"
    unlabelled.parent.mkdir()
    unlabelled.write_text("datetime;Pressure\n2020-03-09 10:00:00;1.0\n")
    done = _run("-m", "bench.eval_skab", "--data", str(tmp_path), "-q")
    assert done.returncode == 0, done.stderr
    assert "SKAB: 1 files under" in done.stdout and "(1 skipped, see stderr)" in done.stdout
    assert f"skipped {unlabelled}: no anomaly column" in done.stderr
    protocol = next(line for line in done.stdout.splitlines() if "scikit-learn model of the first 400 rows" in line)
    assert float(protocol.split("|")[2].strip(" *")) > 0.9  # the good file is scored as before

    valve = tmp_path / "valve1" / "0.csv"
    valve.unlink()
    nothing = _run("-m", "bench.eval_skab", "--data", str(tmp_path), "-q")
    assert nothing.returncode == 2 and "no usable SKAB files" in nothing.stderr


def test_eval_simulator_scores_shipped_and_learned_models(tmp_path: Path) -> None:
    shipped = _run("-m", "bench.eval_simulator", "--sensors", "4", "--hours", "0.5")
    assert shipped.returncode == 0, shipped.stderr
    assert "shipped models" in shipped.stdout and "false alarms:" in shipped.stdout
    assert "| detected before it ended |" in shipped.stdout
    # one sensor of each kind, so the per-kind table has a column for each shipped model
    assert "| anomaly kind | current | humidity | temperature | vibration |" in shipped.stdout

    config = tmp_path / "agent.yaml"
    config.write_text("learning:\n  enabled: true\n  rows: 300\n")
    learned = _run("-m", "bench.eval_simulator", "--sensors", "4", "--hours", "0.5", "--learn", "--config", str(config))
    assert learned.returncode == 0, learned.stderr
    assert "each sensor learning its own model" in learned.stdout and "false alarms:" in learned.stdout
    clean = _run("-m", "bench.eval_simulator", "--sensors", "4", "--hours", "0.5", "--learn", "--clean-learning",
                 "--glitch", "10", "--config", str(config), "--set", "learning.leave_out_outliers=true")
    assert clean.returncode == 0, clean.stderr
    assert "each sensor learning its own model from clean readings, one reading off by 10 noise widths" in clean.stdout


def test_a_glitch_moves_one_reading_per_sensor_by_its_noise_width() -> None:
    from bench.eval_simulator import with_glitches
    from simulator.streams import Simulation

    sim = Simulation(n_sensors=2, rate=1.0, seed=1, start=0.0, anomaly_rate=0.0)
    readings = list(sim.iter_readings(count=20))
    sigma = {s.sensor_id: s.sigma for s in sim.sensors}
    moved = with_glitches(readings, sigma, 3, 10.0)
    changed = [(a.sensor_id, b.value - a.value) for a, b in zip(readings, moved, strict=True) if a.value != b.value]
    assert [sid for sid, _ in changed] == [s.sensor_id for s in sim.sensors]  # one each: its 4th reading
    assert all(d == pytest.approx(10 * sigma[sid], abs=1e-4) for sid, d in changed)

    too_short = _run("-m", "bench.eval_simulator", "--sensors", "2", "--hours", "0.05", "--learn")
    assert too_short.returncode == 1 and "nothing scored" in too_short.stderr


def test_simulator_outcomes_tell_a_find_inside_an_injection_from_one_after_it() -> None:
    from bench import eval_simulator

    # (anomaly_id, label, kind, alert): a drift (id 1, rows 2-5) alerted only at row 7, after
    # it snapped back; a level shift (id 2, rows 20-22) alerted at once; a stuck one (id 3)
    # that was learned through; alerts at 12-13 (one run) and 30 outside everything.
    rows = [(0, 0, "", 0)] * 40
    rows[2:6] = [(1, 1, "drift", 0)] * 4
    rows[7] = (0, 0, "", 1)
    rows[12] = rows[13] = (0, 0, "", 1)
    rows[20:23] = [(2, 1, "level_shift", 1)] * 3
    rows[25:27] = [(3, 1, "stuck", 0)] * 2
    rows[30] = (0, 0, "", 1)
    outcomes, false_alarms = eval_simulator.injection_outcomes(rows, left_out={3}, grace=3)
    assert outcomes == [("drift", eval_simulator.Outcome(5, 4)), ("level_shift", eval_simulator.Outcome(0, 3))]
    assert [o.before_end for _, o in outcomes] == [False, True]
    assert false_alarms == 2  # row 7 is in the drift's grace; 12-13 count once; 30 once
    # with no grace the drift is missed and row 7 becomes a false alarm of its own
    outcomes, false_alarms = eval_simulator.injection_outcomes(rows, left_out={3}, grace=0)
    assert outcomes[0] == ("drift", eval_simulator.Outcome(None, 4)) and not outcomes[0][1].before_end
    assert false_alarms == 3


def test_nab_scoring_weighs_detections_as_the_benchmark_does() -> None:
    from bench import eval_nab

    assert eval_nab.probation(100) == 15 and eval_nab.probation(10_000) == 750
    detections = [0] * 200
    for i in (5, 30, 50, 55, 70, 190):  # in probation, before any window, two in a window, two after it
        detections[i] = 1
    s = eval_nab.score_file(detections, [(40, 59), (120, 139)])
    # the window's earliest detection, halfway in: 2 / (1 + e^-2.5) - 1, scaled so that its first row is worth 1
    earliest = 2 / (1 + np.exp(-5)) - 1
    assert s.window_hits[0] == pytest.approx((2 / (1 + np.exp(-2.5)) - 1) / earliest) and s.window_hits[1] is None
    # 30 is before every window (-1); 70 lies 11 rows past the first window (20 rows, 19
    # steps), 190 51 rows past the second: the weight falls towards -1 with the distance
    past = [2 / (1 + np.exp(5 * d / 19)) - 1 for d in (11, 51)]
    assert s.false_positives == pytest.approx([-1.0, *past], abs=1e-12)
    assert -1 < past[1] < past[0] < 0
    # a window that ends inside the probationary period (the first 30 of 200 rows) is not scored
    assert len(eval_nab.score_file([0] * 200, [(0, 20), (100, 110)]).window_hits) == 1
    tp, fn, fp = eval_nab.PROFILES["standard"]
    hit = s.window_hits[0]
    assert hit is not None
    assert s.raw(tp, fn, fp) == pytest.approx(hit - 1.0 + 0.11 * sum(s.false_positives))


def test_nab_threshold_search_finds_the_best_corpus_threshold() -> None:
    from bench import eval_nab

    rng = np.random.default_rng(9)
    for _ in range(50):  # with 0/1 scores, the search at threshold 1 is the fixed-detections score
        files = []
        for _ in range(3):
            n = int(rng.integers(80, 300))
            a = int(rng.integers(20, n - 30))
            files.append(((rng.random(n) < 0.03).astype(float).tolist(), [(a, a + int(rng.integers(3, 20)))]))
        for weights in eval_nab.PROFILES.values():
            found = eval_nab.sweep(files, *weights)
            fixed = eval_nab.normalised([eval_nab.score_file(d, w) for d, w in files], *weights)
            assert found.normalised == pytest.approx(max(fixed, 0.0))
            assert found.threshold == (1.0 if fixed > 0 else np.inf)
    # graded scores: the search picks the threshold that catches the window's start and
    # leaves the lower false positive out
    scores = [0.0] * 100
    scores[60], scores[80], scores[90] = 0.9, 0.5, 0.95
    found = eval_nab.sweep([(scores, [(60, 70)])], *eval_nab.PROFILES["standard"])
    assert (found.threshold, found.detected, found.false_positives) == (0.9, 1, 1)
    # a later row of a window that scores higher is met first; the earlier one, met after it,
    # is the window's earliest detection and weighs more
    scores[62], scores[90] = 0.95, 0.0
    found = eval_nab.sweep([(scores, [(60, 70)])], *eval_nab.PROFILES["standard"])
    at_090 = [1 if s >= 0.9 else 0 for s in scores]
    assert found.threshold == 0.9
    assert found.normalised == pytest.approx(eval_nab.normalised([eval_nab.score_file(at_090, [(60, 70)])], *eval_nab.PROFILES["standard"]))


def test_eval_nab_scores_a_simulated_corpus_in_nab_layout() -> None:
    done = _run("-m", "bench.eval_nab", "--simulate", "2", "-q", "--per-file")
    assert done.returncode == 0, done.stderr
    assert "2 files from 2 simulator streams" in done.stdout
    assert "| standard | reward_low_FP_rate | reward_low_FN_rate |" in done.stdout
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in done.stdout.splitlines() if line.startswith("| e")}
    assert set(rows) == {"every anomalous reading", "episode onsets"}
    # the same windows; onsets are a subset of the flags, so never more outside the windows
    assert rows["episode onsets"][0] == rows["every anomalous reading"][0]
    assert int(rows["episode onsets"][2]) <= int(rows["every anomalous reading"][2])
    refused = _run("-m", "bench.eval_nab", "--data", "x")
    assert refused.returncode == 2 and "give --data and --labels" in refused.stderr


def test_eval_nab_reads_nab_layout_and_skips_a_file_it_cannot_read(tmp_path: Path) -> None:
    # NAB's own formats: "timestamp,value" rows, windows as timestamps with microseconds
    rng = np.random.default_rng(3)
    (tmp_path / "data" / "realX").mkdir(parents=True)
    lines = ["timestamp,value"]
    for i in range(1000):
        value = 10 + rng.normal(0, 0.2) + (30.0 if 700 <= i < 705 else 0.0)
        lines.append(f"2014-04-{1 + i // 288:02d} {i % 288 * 5 // 60:02d}:{i % 288 * 5 % 60:02d}:00,{value:.3f}")
    (tmp_path / "data" / "realX" / "good.csv").write_text("\n".join(lines) + "\n")
    labels = {
        "realX/good.csv": [["2014-04-03 09:20:00.000000", "2014-04-03 13:20:00.000000"]],  # rows 688-736
        "realX/missing.csv": [],
    }
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    args = ("-m", "bench.eval_nab", "--data", str(tmp_path / "data"), "--labels", str(tmp_path / "labels.json"), "-q")
    done = _run(*args, "--results", str(tmp_path / "results"), "--dump", str(tmp_path / "dump.json"))
    assert done.returncode == 0, done.stderr
    assert "NAB-style: 1 files from" in done.stdout and "(1 skipped, see stderr)" in done.stdout
    assert "eval_nab: skipped" in done.stderr and "missing.csv" in done.stderr
    onsets = next(line for line in done.stdout.splitlines() if line.startswith("| episode onsets"))
    windows, detected = onsets.split("|")[2:4]
    assert (windows.strip(), detected.strip()) == ("1", "1")  # the 30-unit spike inside the window is found

    # --results: the files NAB's official scorer reads, where it reads them
    from bench import eval_nab

    printed = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in done.stdout.splitlines() if line.startswith("| ")}
    results = {}
    for detector in ("edgeAgent", "edgeAgentOnsets"):
        path = tmp_path / "results" / detector / "realX" / f"{detector}_good.csv"
        header, *rows = [line.split(",") for line in path.read_text().splitlines()]
        assert header == ["timestamp", "value", "anomaly_score", "label"]
        assert [r[0] for r in rows] == [line.split(",")[0] for line in lines[1:]]  # the data file's own timestamps
        assert [i for i, r in enumerate(rows) if r[3] == "1"] == list(range(688, 737))  # label: inside the window
        results[detector] = [float(r[2]) for r in rows]
    replayed = json.loads((tmp_path / "dump.json").read_text())["realX/good.csv"]
    assert results["edgeAgent"] == pytest.approx(replayed["score"], abs=1e-6)  # the verdicts' per-reading score
    assert [i for i, s in enumerate(results["edgeAgentOnsets"]) if s] == [i for i, e in enumerate(replayed["event"]) if e == "onset"]
    assert 688 <= results["edgeAgentOnsets"].index(1.0) <= 736
    # scored back from the files, each gives the figure the run printed for it
    standard = eval_nab.PROFILES["standard"]
    onset_score = eval_nab.normalised([eval_nab.score_file([int(s) for s in results["edgeAgentOnsets"]], [(688, 736)])], *standard)
    assert f"{onset_score:.1f}" == printed["episode onsets"]
    swept = eval_nab.sweep([(results["edgeAgent"], [(688, 736)])], *standard)
    assert f"{swept.normalised:.1f}" == next(v for k, v in printed.items() if k.startswith("per-reading score"))

    labels.pop("realX/good.csv")
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    nothing = _run(*args)
    assert nothing.returncode == 2 and "no usable files" in nothing.stderr


def test_eval_quiet_counts_false_alarms_on_every_shape() -> None:
    done = _run("-m", "bench.eval_quiet", "--files", "1", "--rows", "1000")
    assert done.returncode == 0, done.stderr
    assert "learning from the first 150 rows" in done.stdout
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in done.stdout.splitlines()[3:] if line.startswith("| ")}
    assert len(rows) == 12 and "all" in rows
    assert all(int(cells[0]) == 850 for name, cells in rows.items() if name != "all")  # 1000 rows less 150 learned from
    assert int(rows["all"][0]) == 11 * 850
    # episodes never outnumber flagged readings, and the total adds up
    assert all(int(cells[2]) <= int(cells[1]) for cells in rows.values())
    assert int(rows["all"][2]) == sum(int(cells[2]) for name, cells in rows.items() if name != "all")
    refused = _run("-m", "bench.eval_quiet", "--rows", "100")
    assert refused.returncode == 2 and "--rows" in refused.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "bench").glob("*.py") if p.stem != "__init__"))
def test_every_bench_script_imports_as_part_of_the_package(name: str) -> None:
    # bench/report.py runs them as `python -m bench.<name>`: one that still imports a
    # neighbour by its bare name (the old sys.path habit) fails only when its page is written.
    import importlib

    importlib.import_module(f"bench.{name}")
