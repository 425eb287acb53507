"""train, replay and demo as a user runs them, through the real command line."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, normal_csv, skab_like_csv
from edge_agent.cli import main
from edge_agent.core.engine import Decision
from edge_agent.model_files import load_model
from edge_agent.tools.replay import replay
from edge_agent.tools.table import read_table


def test_train_writes_a_verified_model_with_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = normal_csv(tmp_path / "n.csv", n=600)
    assert main(["train", "--input", str(data), "--out", str(tmp_path / "m"), "--model-version", "v7"]) == 0
    model = load_model(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert model.name == "m" and model.version == "v7" and model.fields == ("value",)
    assert manifest["training"]["rows"] == 600
    assert manifest["training"]["command"].startswith("edge-agent")
    assert "forest sha256" in capsys.readouterr().out


def test_train_leaves_labelled_anomalies_out(tmp_path: Path) -> None:
    rows = ["value,anomaly"] + [f"{1 + 0.01 * (i % 7)},0" for i in range(300)] + ["50,1"] * 20
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    assert main(["train", "--input", str(tmp_path / "l.csv"), "--out", str(tmp_path / "m")]) == 0
    model = load_model(tmp_path / "m")
    assert model.manifest["training"]["rows"] == 300
    assert model.range_guard.high[0] < 2  # the anomalies did not widen what counts as normal


@pytest.mark.parametrize(
    "content, message",
    [("", "empty"), ("a,b\n1,x\n", "row 2, column 'b'"), ("a\n1\n2\n", "usable normal rows")],
)
def test_train_rejects_unusable_files_with_exit_2(tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.csv").write_text(content)
    assert main(["train", "--input", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err


def test_replay_learn_rows_trains_on_the_head_and_flags_the_fault(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = list(1 + rng.normal(0, 0.02, 600))
    values[500:520] = [1.5] * 20  # a level shift well after the training rows
    src = tmp_path / "s.csv"
    src.write_text("datetime;value\n" + "\n".join(f"2024-01-01T00:{i // 60:02d}:{i % 60:02d};{v:.5f}" for i, v in enumerate(values)) + "\n")
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--learn-rows", "400"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 600 and rows[0]["datetime"] == "2024-01-01T00:00:00"
    assert all(r["anomaly"] == "0" and r["phase"] == "learn" for r in rows[:400])
    assert all(r["phase"] == "score" for r in rows[400:])
    assert rows[500]["anomaly"] == "1"
    assert sum(int(r["anomaly"]) for r in rows[400:500]) <= 2


def test_replay_without_a_model_learns_and_refits_like_the_live_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("learning:\n  enabled: true\n  rows: 200\n  refit_every: 300\n  refit_rows: 400\n")
    rng = np.random.default_rng(8)
    values = list(10 + rng.normal(0, 0.1, 1500))
    values[600:] = [v + 3 for v in values[600:]]  # the level moves for good at row 600
    src = tmp_path / "s.csv"
    src.write_text("value\n" + "\n".join(f"{v:.4f}" for v in values) + "\n")
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "-c", str(cfg), "-q"]) == 0
    # a file without timestamps is replayed one row a second
    assert "learned from the first 200 rows, refitted every 5m of the file's time" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [r["phase"] for r in rows] == ["learn"] * 200 + ["score"] * 1300
    assert sum(int(r["anomaly"]) for r in rows[200:600]) <= 4
    assert rows[600]["anomaly"] == "1"
    assert sum(int(r["anomaly"]) for r in rows[-300:]) <= 15  # a refit took the new level as normal

    assert main(["replay", str(src), "--out", str(out), "-c", str(cfg), "--learn-rows", "10"]) == 2
    assert "--learn-rows 10 is too few" in capsys.readouterr().err
    assert main(["replay", str(src), "--out", str(out), "-c", str(cfg), "--learn-rows", "1500"]) == 2
    assert "leaves nothing to score in 1500 rows" in capsys.readouterr().err


def test_replay_of_a_file_shorter_than_the_learning_period_learns_from_its_first_15_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = normal_csv(tmp_path / "n.csv", n=1000, seed=4)
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "-c", str(REPO / "config.yaml"), "-q"]) == 0
    captured = capsys.readouterr()
    assert "learning from the first 150 (15 %) instead of learning.rows 3600" in captured.err
    phases = [r["phase"] for r in csv.DictReader(out.open())]
    assert phases == ["learn"] * 150 + ["score"] * 850


def test_replay_without_a_model_or_a_config_learns_from_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A NAB-shaped file: nothing like the vibration readings the default model knows.
    rng = np.random.default_rng(5)
    values = list(250 + rng.normal(0, 5, 2000))
    values[1500:1503] = [400.0] * 3
    src = tmp_path / "cpu.csv"
    src.write_text("timestamp,value\n" + "\n".join(
        f"2014-04-{1 + i // 288:02d} {i % 288 * 5 // 60:02d}:{i % 288 * 5 % 60:02d}:00,{v:.2f}" for i, v in enumerate(values)) + "\n")
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "-q"]) == 0  # built-in defaults: learning.enabled is false
    captured = capsys.readouterr()
    assert "learning from the first 300 (15 %)" in captured.err and "a model learned from the first 300 rows" in captured.out
    rows = list(csv.DictReader(out.open()))
    assert [r["phase"] for r in rows] == ["learn"] * 300 + ["score"] * 1700
    assert rows[1500]["anomaly"] == "1" and rows[1500]["onset"] == "1"
    assert sum(int(r["anomaly"]) for r in rows[300:1500]) <= 12  # not every reading, as the default model would say


def test_replay_of_a_labelled_file_keeps_its_labels_apart_from_the_verdicts(tmp_path: Path) -> None:
    src = tmp_path / "valve.csv"
    skab_like_csv(src, 600, fault_from=440, seed=2)
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--learn-rows", "400", "-q"]) == 0
    with out.open() as f:
        header = next(csv.reader(f))
    assert header.count("anomaly") == 1 and "anomaly_input" in header and "changepoint" in header
    assert header[-5:] == ["score", "raw_score", "anomaly", "phase", "onset"]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    labels = [line.split(";")[-2] for line in src.read_text().splitlines()[1:]]
    assert [r["anomaly_input"] for r in rows] == labels  # the file's own labels, as they were
    assert rows[450]["anomaly_input"] == "1" and rows[450]["anomaly"] == "1"  # and the verdict beside them


def test_replay_scores_exactly_like_the_live_engine(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    src = normal_csv(tmp_path / "n.csv", n=300, seed=9)
    assert main(["replay", str(src), "--out", str(out), "--model", str(models_dir / "default")]) == 0
    scores = [float(r["score"]) for r in csv.DictReader(out.open())]
    direct = replay(read_table(src), load_model(models_dir / "default"), Decision())
    assert scores == pytest.approx([r.verdict.score for r in direct], abs=1e-6)


def test_replay_with_a_missing_model_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = normal_csv(tmp_path / "n.csv", n=50)
    assert main(["replay", str(src), "--out", str(tmp_path / "o.csv"), "--model", str(tmp_path / "nope")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.broker
@pytest.mark.parametrize("broker_kind", ["mosquitto", "embedded"])
def test_demo_shows_verdicts_and_stops_cleanly(broker_kind: str, tmp_path: Path) -> None:
    from bench.kit import MOSQUITTO, free_port

    if broker_kind == "mosquitto" and MOSQUITTO is None:
        pytest.skip("no mosquitto binary: the embedded case covers this machine")
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--config", str(REPO / "config.yaml"), "--broker", broker_kind,
         "--duration", "4", "--rate", "5", "--http-port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "mosquitto_sub" in r.stdout and "/predict" in r.stdout
    lines = [line for line in r.stdout.splitlines() if " score " in line]
    assert len(lines) >= 8, r.stdout
    assert any(k in r.stdout for k in ("vibration-3", "temperature-1"))
    assert "stopped:" in r.stdout


def test_replay_plot_draws_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    values = list(1 + rng.normal(0, 0.02, 500))
    values[450:470] = [2.0] * 20
    src = tmp_path / "s.csv"
    src.write_text("value,anomaly\n" + "\n".join(f"{v:.5f},{int(450 <= i < 470)}" for i, v in enumerate(values)) + "\n")
    png = tmp_path / "o.png"
    assert main(["replay", str(src), "--out", str(tmp_path / "o.csv"), "--learn-rows", "300", "--plot", str(png), "-q"]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_progress_shows_only_on_a_terminal() -> None:
    import io

    from edge_agent.tools.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(100, "replaying", stream=stream)
        p.update(50)
        p.close()
    assert "replaying: 50/100 (50%)" in tty.getvalue() and pipe.getvalue() == ""
    quiet = Tty()
    Progress(10, "x", quiet=True, stream=quiet).update(5)
    assert quiet.getvalue() == ""
    assert "s left" in Progress(100, "x", stream=Tty()).line(25, 10.0)


def _demo_config(tmp_path: Path, broker: Any) -> Path:
    """The shipped config.yaml pointed at ``broker``, its models where the repository has them."""
    import yaml

    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["mqtt"] = {**data.get("mqtt", {}), "host": broker.host, "port": broker.port}
    data["models"]["dir"] = str(REPO / "models")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_demo(config: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    from bench.kit import free_port

    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "demo", "--config", str(config), "--duration", "3", "--rate", "5",
         "--http-port", str(free_port()), *extra],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


@pytest.mark.broker
def test_demo_on_the_configured_broker_leaves_no_session_and_no_retained_message(tmp_path: Path) -> None:
    from bench.kit import MOSQUITTO, Collector, MosquittoBroker

    if MOSQUITTO is None:
        pytest.skip("needs mosquitto: its $SYS counters tell the sessions it keeps")
    broker = MosquittoBroker(extra_config="sys_interval 1")
    broker.start()
    try:
        r = _run_demo(_demo_config(tmp_path, broker), tmp_path, "--broker", "configured")
        assert r.returncode == 0, r.stderr
        assert len([line for line in r.stdout.splitlines() if " score " in line]) >= 8, r.stdout
        assert "left no trace" in r.stdout and "1 retained message(s) cleared" in r.stdout, r.stdout
        time.sleep(2.5)  # $SYS is refreshed every second here

        with Collector(broker, ["#", "$SYS/broker/clients/disconnected"]) as inspector:
            time.sleep(1.0)
        seen = inspector.messages
    finally:
        broker.close()
    retained = [m.topic for m in seen if m.retain and not m.topic.startswith("$SYS")]
    assert retained == []
    disconnected = [int(m.payload) for m in seen if m.topic == "$SYS/broker/clients/disconnected"]
    assert disconnected and disconnected[-1] == 0  # no persistent session is left waiting for the agent


@pytest.mark.broker
def test_demo_by_default_starts_its_own_broker_on_the_port_asked_and_leaves_the_configured_one_alone(
    tmp_path: Path, broker: Any, collect: Any
) -> None:
    from bench.kit import free_port

    watcher = collect(["#"])
    port = free_port()
    r = _run_demo(_demo_config(tmp_path, broker), tmp_path, "--broker-port", str(port))
    assert r.returncode == 0, r.stderr
    assert f"of its own on 127.0.0.1:{port}" in r.stdout
    assert len([line for line in r.stdout.splitlines() if " score " in line]) >= 8, r.stdout
    assert watcher.messages == []  # not one message on the configured broker


def test_version_is_printed() -> None:
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and re.fullmatch(r"edge-agent \d+\.\d+\S*\n", r.stdout), (r.stdout, r.stderr)


def test_train_without_scikit_learn_names_the_extra_to_install(tmp_path: Path) -> None:
    src = normal_csv(tmp_path / "n.csv", n=300)
    # sklearn as if not installed: importing it raises ModuleNotFoundError.
    code = ("import sys; sys.modules['sklearn'] = None; from edge_agent.cli import main; "
            f"sys.exit(main(['train', '--input', {str(src)!r}, '--out', {str(tmp_path / 'm')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "pip install 'edge-anomaly-agent[train]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_replay_plot_uses_time_when_the_file_has_timestamps(tmp_path: Path) -> None:
    from edge_agent.tools.plot import _x_axis
    from edge_agent.tools.table import read_table

    timed = normal_csv(tmp_path / "t.csv", n=400)  # a timestamp column, one reading a second
    x, is_time = _x_axis(read_table(timed), 400)
    assert is_time and x[1] - x[0] == pytest.approx(1 / 86400)
    untimed = tmp_path / "u.csv"
    untimed.write_text("value\n" + "\n".join("1.0" for _ in range(10)) + "\n")
    assert _x_axis(read_table(untimed), 10)[1] is False
    png = tmp_path / "t.png"
    assert main(["replay", str(timed), "--out", str(tmp_path / "o.csv"), "--learn-rows", "100", "--plot", str(png), "-q"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
