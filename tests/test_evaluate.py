"""``edge-agent evaluate``: a user's labelled CSV gets F1, false-alarm rate and delay per event."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.core.domain import Verdict
from edge_agent.tools.evaluate import evaluate
from edge_agent.tools.replay import ReplayRow


def _rows(flags: str) -> list[ReplayRow]:
    """'L' learning, '.' scored normal, 'x' scored and flagged."""
    return [ReplayRow(Verdict("s", {"value": 0.0}, None, 0.9 if c == "x" else 0.1, int(c == "x"), "m", "1", learning=c == "L"),
                      learning=c == "L") for c in flags]


def test_figures_by_hand() -> None:
    flags = "LLLL..xx.....x...x.."
    labels = np.array([int(c) for c in "00000111100000000011"], dtype=float)
    ts = [1000.0 + 10 * i for i in range(len(flags))]
    result = evaluate(_rows(flags), labels, ts)
    assert (result.scored, result.learning) == (16, 4)
    assert (result.tp, result.fp, result.fn, result.normal) == (2, 2, 4, 10)
    assert result.f1 == pytest.approx(2 * (2 / 4) * (2 / 6) / (2 / 4 + 2 / 6))
    assert result.false_alarm_rate == pytest.approx(0.2)
    assert result.false_alarm_stretches == 2
    first, second = result.events
    assert (first.start, first.end, first.delay_rows, first.delay_seconds) == (5, 9, 1, 10.0)
    assert (second.start, second.detected_at) == (18, None)


def _labelled_csv(path: Path) -> Path:
    rng = np.random.default_rng(3)
    values = list(1 + rng.normal(0, 0.02, 900))
    values[700:730] = [2.0] * 30
    lines = ["time,flow,fault"] + [f"{1764241200 + 60 * i},{v:.5f},{int(695 <= i < 735)}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_reports_the_figures_and_draws_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _labelled_csv(tmp_path / "pump.csv")
    png = tmp_path / "pump.png"
    assert main(["evaluate", str(src), "--labels", "fault", "--learn-rows", "400", "--plot", str(png), "-q"]) == 0
    out = capsys.readouterr().out
    assert "500 rows scored (400 learned from, not counted)" in out
    assert "labelled events: 1, detected 1" in out
    assert "rows 697-736: detected after 5 row(s), 300 s" in out  # the spike starts 5 rows into the label
    f1 = float(out.split("F1 ")[1].split()[0])
    assert 0.5 < f1 <= 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _labelled_csv(tmp_path / "pump.csv")
    assert main(["evaluate", str(src), "--labels", "broken", "-q"]) == 2
    assert "no label column 'broken'; columns are time, flow, fault" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text(src.read_text().replace(",0\n", ",maybe\n", 1))
    assert main(["evaluate", str(bad), "--labels", "fault", "-q"]) == 2
    assert "label column 'fault': 'maybe' is not 0/1" in capsys.readouterr().err


def test_evaluate_and_replay_hold_a_model_to_its_pinned_manifest(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _labelled_csv(tmp_path / "run.csv")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"models:\n  pinned_manifest_sha256:\n    default: '{'0' * 64}'\n")
    model = str(models_dir / "default")
    assert main(["evaluate", str(src), "--labels", "fault", "--model", model, "-c", str(cfg), "-q"]) == 2
    assert "sha256" in capsys.readouterr().err
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--columns", "flow", "--out", str(out), "--model", model, "-c", str(cfg), "-q"]) == 2
    assert "sha256" in capsys.readouterr().err
