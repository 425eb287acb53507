"""Learned state on disk: no sensor id names a path, saves survive kills, and every part of a model is checked."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from edge_agent.core.domain import Reading
from edge_agent.core.engine import LearningPlan, ScoringEngine
from edge_agent.core.model import ModelError
from edge_agent.learning import LEARNED_DIR, Learner, load_learned, model_dir
from edge_agent.model_files import MANIFEST, MANIFEST_DIGEST, load_model, save_model

SHIPPED = Path(__file__).resolve().parents[1] / "models"
HOSTILE_IDS = [
    ".",
    "..",
    "%2F..",
    "...new",
    "pump-a.old",
    "a" * 253,
    "温度传感器" * 7,  # 35 CJK characters: 105 bytes of UTF-8, 315 once quote()d
    "CON",
    "nul",
    "tab\there\x01\x7f",
    "line\nbreak",
    ".tmp-x",
]


def _readings(sensor: str, n: int, start: int = 0) -> list[Reading]:
    return [Reading(sensor, {"value": 1.0 + 0.01 * (i % 7)}, float(start + i), ts=float(start + i), ts_raw=start + i)
            for i in range(n)]


def _learn(state: Path, sensors: list[str], rows: int = 60, learned: dict | None = None) -> ScoringEngine:
    learner = Learner(state)
    engine = ScoringEngine({}, learning=LearningPlan(rows=rows), learned=learned)
    learner.attach(engine)
    for s in sensors:
        for request in engine.score(_readings(s, rows)).learn_requests:  # as the pipeline hands them over
            learner(request)
    deadline = time.monotonic() + 30
    while not all(s in engine.learned for s in sensors):
        assert time.monotonic() < deadline, f"not learned: {[s for s in sensors if s not in engine.learned]}"
        time.sleep(0.02)
    learner.stop()
    return engine


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=lambda s: repr(s[:12]))
def test_a_hostile_sensor_id_learns_reloads_and_leaves_other_models_untouched(tmp_path: Path, hostile: str) -> None:
    _learn(tmp_path, ["pump-a", "pump-b"])
    before = {s: _snapshot(model_dir(tmp_path, s)) for s in ("pump-a", "pump-b")}

    _learn(tmp_path, [hostile])

    assert {s: _snapshot(model_dir(tmp_path, s)) for s in ("pump-a", "pump-b")} == before
    restored = load_learned(tmp_path)
    assert sorted(restored) == sorted(["pump-a", "pump-b", hostile])
    assert restored[hostile].manifest["sensor_id"] == hostile
    # Every name under the state dir is a sha256 folder of three plain files: nothing else was made.
    names = {p.name for p in (tmp_path / LEARNED_DIR).iterdir()}
    assert names == {hashlib.sha256(s.encode()).hexdigest() for s in ("pump-a", "pump-b", hostile)}
    engine = _learn(tmp_path, [], learned=restored)
    [v] = engine.score(_readings(hostile, 1, start=100)).results
    assert not v.learning and v.model == f"learned:{hostile}"  # type: ignore[union-attr]


def test_leftovers_of_a_kill_are_settled_quietly_and_never_become_sensors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _learn(tmp_path, ["pump-a", "pump-b", "pump-c"])
    a, b, c = (model_dir(tmp_path, s) for s in ("pump-a", "pump-b", "pump-c"))
    a_files = _snapshot(a)
    # A kill while writing pump-a's next model: half a staging folder.
    staging = a.with_name(a.name + ".new")
    staging.mkdir()
    (staging / "forest.npz").write_bytes(b"half")
    # A kill between the two renames of pump-b's save: only <hash>.old and <hash>.new exist.
    b.rename(b.with_name(b.name + ".old"))
    b_new = b.with_name(b.name + ".new")
    save_model(load_model(c), b_new)
    # A kill inside save_model: a temporary file in pump-c's folder.
    (c / ".manifest.json.123.abc.tmp").write_text("{")

    with caplog.at_level(logging.WARNING):
        restored = load_learned(tmp_path)
    assert sorted(restored) == ["pump-a", "pump-b", "pump-c"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert _snapshot(a) == a_files and restored["pump-b"].manifest["sensor_id"] == "pump-b"
    assert sorted(p.name for p in (tmp_path / LEARNED_DIR).iterdir()) == sorted(p.name for p in (a, b, c))


def test_a_failed_save_keeps_the_fitted_model_scoring(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / LEARNED_DIR).write_text("not a folder")  # every save fails with an OSError
    with caplog.at_level(logging.ERROR):
        engine = _learn(state, ["boiler"])
    [v] = engine.score(_readings("boiler", 1, start=100)).results
    assert not v.learning and v.model == "learned:boiler"  # type: ignore[union-attr]
    assert "could not save" in caplog.text


def test_models_saved_under_the_old_quoted_names_are_migrated(tmp_path: Path) -> None:
    engine = _learn(tmp_path, ["pump/1", "pump-2"])
    for s in ("pump/1", "pump-2"):
        legacy = tmp_path / LEARNED_DIR / quote(s, safe="-_")
        model_dir(tmp_path, s).rename(legacy)
        (legacy / MANIFEST_DIGEST).unlink()  # the old layout had no digest file
    # The old learner's leftovers and the debris of the "." attack are not sensors.
    (tmp_path / LEARNED_DIR / "pump-3.new").mkdir()
    (tmp_path / LEARNED_DIR / "forest.npz").write_bytes(b"x")

    restored = load_learned(tmp_path)
    assert sorted(restored) == ["pump-2", "pump/1"]
    assert restored["pump/1"].sha256 == engine.learned["pump/1"].sha256
    assert model_dir(tmp_path, "pump/1").is_dir() and not (tmp_path / LEARNED_DIR / "pump%2F1").exists()
    assert not (tmp_path / LEARNED_DIR / "pump-3.new").exists()
    assert sorted(load_learned(tmp_path)) == ["pump-2", "pump/1"]  # and again, from the new layout


def test_a_folder_whose_manifest_names_another_sensor_is_refused(tmp_path: Path) -> None:
    _learn(tmp_path, ["pump-a", "pump-b"])
    a, b = model_dir(tmp_path, "pump-a"), model_dir(tmp_path, "pump-b")
    for name in os.listdir(a):
        (b / name).write_bytes((a / name).read_bytes())  # pump-a's model copied over pump-b's
    assert sorted(load_learned(tmp_path)) == ["pump-a"]


def _edits() -> dict[str, object]:
    def forest(d: Path) -> None:
        p = d / "forest.npz"
        p.write_bytes(p.read_bytes()[:-10] + b"0123456789")

    def manifest(change):
        def edit(d: Path) -> None:
            m = json.loads((d / MANIFEST).read_text())
            change(m)
            (d / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
        return edit

    return {
        "forest": forest,
        "calibration": manifest(lambda m: m["calibration"].update(score=[0.0] * len(m["calibration"]["score"]))),
        "ranges": manifest(lambda m: m["range"].update(margin=[None] * len(m["range"]["margin"]))),
        "features": manifest(lambda m: m["features"]["transforms"].reverse()),
        "impute": manifest(lambda m: m.update(impute=[1e9] * len(m["impute"]))),
        "threshold": manifest(lambda m: m["threshold"].update(raw=1.0)),
    }


@pytest.mark.parametrize("part", list(_edits()))
def test_editing_any_part_of_a_learned_model_refuses_its_load(tmp_path: Path, part: str) -> None:
    _learn(tmp_path, ["pump-a"])
    _edits()[part](model_dir(tmp_path, "pump-a"))  # type: ignore[operator]
    assert load_learned(tmp_path) == {}


@pytest.mark.parametrize("part", list(_edits()))
def test_editing_any_part_of_a_pinned_shipped_model_refuses_its_load(tmp_path: Path, part: str) -> None:
    shipped = tmp_path / "vibration"
    shipped.mkdir()
    for p in (SHIPPED / "vibration").iterdir():
        (shipped / p.name).write_bytes(p.read_bytes())
    pin = hashlib.sha256((shipped / MANIFEST).read_bytes()).hexdigest()
    load_model(shipped, pinned_manifest_sha256=pin)
    _edits()[part](shipped)  # type: ignore[operator]
    with pytest.raises(ModelError, match="sha256"):
        load_model(shipped, pinned_manifest_sha256=pin)


def test_a_manifest_edited_along_with_its_forest_hash_is_refused_by_its_digest(tmp_path: Path, models_dir: Path) -> None:
    d = tmp_path / "m"
    save_model(load_model(models_dir / "default"), d)
    m = json.loads((d / MANIFEST).read_text())
    m["calibration"]["score"] = [0.0] * len(m["calibration"]["score"])
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ModelError, match=MANIFEST_DIGEST):
        load_model(d)


def test_the_agent_refuses_a_shipped_model_whose_manifest_misses_its_pin(models_dir: Path) -> None:
    from edge_agent.agent import load_models
    from edge_agent.config import load_config

    cfg = load_config(None, [f"models.dir={models_dir}", f"models.pinned_manifest_sha256.default={'0' * 64}"])
    with pytest.raises(ModelError, match="pinned_manifest_sha256"):
        load_models(cfg)
    good = hashlib.sha256((models_dir / "default" / MANIFEST).read_bytes()).hexdigest()
    cfg = load_config(None, [f"models.dir={models_dir}", f"models.pinned_manifest_sha256.default={good}"])
    assert "default" in load_models(cfg)
