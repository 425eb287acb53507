"""The evaluation scripts in bench/ run end to end on small inputs and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _skab_like(path: Path, n: int, fault_from: int | None, seed: int) -> None:
    """A SKAB-shaped file: ';'-separated, datetime first, two sensors, anomaly and changepoint columns."""
    rng = np.random.default_rng(seed)
    lines = ["datetime;Pressure;Temperature;anomaly;changepoint"]
    for i in range(n):
        fault = fault_from is not None and i >= fault_from
        pressure = 1.0 + rng.normal(0, 0.02) + (0.5 if fault else 0.0)
        lines.append(f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d};{pressure:.4f};{70 + rng.normal(0, 0.1):.3f};{int(fault)};0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_eval_skab_prints_both_rows_and_the_healthy_share(tmp_path: Path) -> None:
    _skab_like(tmp_path / "valve1" / "0.csv", 700, fault_from=550, seed=1)
    _skab_like(tmp_path / "anomaly-free" / "anomaly-free.csv", 900, fault_from=None, seed=2)
    done = _run("bench/eval_skab.py", "--data", str(tmp_path), "-q", "--set", "learning.rows=300")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1 files under" in out and "300 rows scored in each mode" in out
    protocol = next(line for line in out.splitlines() if "scikit-learn model of the first 400 rows" in line)
    f1 = float(protocol.split("|")[2].strip(" *"))
    assert f1 > 0.9  # a 25-noise-width pressure step is found
    assert "learning on the device, numpy fitter, refit every 3600 rows" in out
    assert "anomaly-free recording, learned as an unknown sensor (learning.rows 300" in out
    assert "each field alone:" in out


def test_eval_simulator_scores_shipped_and_learned_models(tmp_path: Path) -> None:
    shipped = _run("bench/eval_simulator.py", "--sensors", "4", "--hours", "0.5")
    assert shipped.returncode == 0, shipped.stderr
    assert "shipped models" in shipped.stdout and "false alarms:" in shipped.stdout

    config = tmp_path / "agent.yaml"
    config.write_text("learning:\n  enabled: true\n  rows: 300\n")
    learned = _run("bench/eval_simulator.py", "--sensors", "4", "--hours", "0.5", "--learn", "--config", str(config))
    assert learned.returncode == 0, learned.stderr
    assert "each sensor learning its own model" in learned.stdout and "false alarms:" in learned.stdout

    too_short = _run("bench/eval_simulator.py", "--sensors", "2", "--hours", "0.05", "--learn")
    assert too_short.returncode == 1 and "nothing scored" in too_short.stderr
