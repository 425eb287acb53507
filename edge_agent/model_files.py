"""A sensor model on disk: its directory, its files and their integrity.

A model directory holds ``manifest.json`` (what the model expects and how to
read its scores) and ``forest.npz`` (the Isolation Forest as plain arrays, read
without pickle); ``train`` also leaves the scikit-learn estimator as
``model.joblib``. Every file is checked against the sha256 the manifest (or the
operator's pin) names before it is read, and the manifest itself against
``manifest.sha256`` (written beside it) and, when the operator pins it, against
``models.pinned_manifest_sha256``: the manifest holds the calibration, ranges,
features and imputes, so an unchecked manifest could silence every alarm.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.features import FeatureSpec
from edge_agent.core.forest import Forest
from edge_agent.core.model import FORMAT, Calibration, ModelError, RangeGuard, SensorModel
from edge_agent.durable import fsync_dir, write_durably

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
FOREST_FILE = "forest.npz"
ESTIMATOR_FILE = "model.joblib"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_forest(forest: Forest, path: str | os.PathLike[str]) -> None:
    """Write the forest as a compressed .npz (no pickle), atomically: readers never see half a file."""
    # ~5x smaller than .npy files: hourly refits wear an SD card less.
    # Typed as Any: numpy's stub reads any ** key as its allow_pickle flag.
    arrays: dict[str, Any] = forest.to_arrays()
    write_durably(Path(path), lambda handle: np.savez_compressed(handle, **arrays))

def load_forest(path: str | os.PathLike[str], *, wide: bool = False) -> Forest:
    """Read a forest written by ``save_forest``; ValueError (naming the file) if it is corrupt.

    ``wide``: held for speed rather than memory (``Forest``), for a forest many sensors share.
    """
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt forest file: {exc}") from exc
    try:
        return Forest.from_arrays(arrays, wide=wide)
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt forest file: {exc}") from exc



def save_model(model: SensorModel, directory: Path, estimator: Any = None) -> SensorModel:
    """Write the model directory durably; returns the model with its file's sha256 filled in.

    Each file is written under a temporary name, fsynced and renamed; the manifest's own
    sha256 goes to ``manifest.sha256``, and the directory is fsynced last.
    """
    directory.mkdir(parents=True, exist_ok=True)
    forest_path = directory / FOREST_FILE
    save_forest(model.forest, forest_path)
    manifest = dict(model.manifest)
    manifest["forest"] = {"file": FOREST_FILE, "sha256": sha256_file(forest_path)}
    if estimator is not None:
        import joblib  # training-side only

        joblib.dump(estimator, directory / ESTIMATOR_FILE)
        with open(directory / ESTIMATOR_FILE, "rb+") as handle:
            os.fsync(handle.fileno())
        manifest["estimator"] = {"file": ESTIMATOR_FILE, "sha256": sha256_file(directory / ESTIMATOR_FILE)}
    text = (json.dumps(manifest, indent=2) + "\n").encode()
    write_durably(directory / MANIFEST, lambda handle: handle.write(text))
    digest = f"{hashlib.sha256(text).hexdigest()}  {MANIFEST}\n".encode()
    write_durably(directory / MANIFEST_DIGEST, lambda handle: handle.write(digest))
    fsync_dir(directory)
    return SensorModel(
        model.name, model.version, manifest["forest"]["sha256"], model.spec, model.forest,
        model.impute, model.calibration, model.range_guard, manifest,
    )


def _read_manifest(directory: Path, pinned: str | None = None, require_digest: bool = False) -> dict[str, Any]:
    """The manifest, read only after its bytes match the pinned sha256 and ``manifest.sha256``."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelError(f"model {directory}: no {MANIFEST} (is this a model directory made by 'edge-agent train'?)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(f"model {directory}: cannot read {MANIFEST}: {e}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if pinned is not None and actual != pinned.lower():
        raise ModelError(
            f"model {directory}: {MANIFEST} has sha256 {actual}, but the pinned value in the config "
            f"(models.pinned_manifest_sha256) says {pinned.lower()}; refusing a manifest that may have been tampered with"
        )
    digest_path = directory / MANIFEST_DIGEST
    if digest_path.is_file():
        try:
            recorded = digest_path.read_text(errors="replace").split()[0].lower() if digest_path.stat().st_size < 4096 else ""
        except (OSError, IndexError):
            recorded = ""
        if recorded != actual:
            raise ModelError(
                f"model {directory}: {MANIFEST} has sha256 {actual}, but {MANIFEST_DIGEST} says {recorded[:64]!r}; "
                "refusing a manifest that was edited or half-written after it was saved"
            )
    elif require_digest:
        raise ModelError(f"model {directory}: no {MANIFEST_DIGEST} beside {MANIFEST}, so the manifest cannot be checked")
    try:
        manifest = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model {directory}: cannot read {MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"model {directory}: {MANIFEST} is not of format {FORMAT!r}")
    return manifest


def _verified(directory: Path, entry: Any, pinned: str | None, what: str) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise ModelError(f"model {directory}: manifest has no valid '{what}' entry with file and sha256")
    path = directory / Path(entry["file"]).name
    if not path.is_file():
        raise ModelError(f"model {directory}: {what} file {path.name} is missing")
    expected = (pinned or entry["sha256"]).lower()
    actual = sha256_file(path)
    if actual != expected:
        source = "the pinned value in the config" if pinned else MANIFEST
        raise ModelError(
            f"model {directory}: {path.name} has sha256 {actual}, but {source} says {expected}; "
            "refusing to load a file that may have been tampered with"
        )
    return path


def load_model(
    directory: Path | str, pinned_sha256: str | None = None, forests: dict[str, Forest] | None = None,
    pinned_manifest_sha256: str | None = None, require_digest: bool = False, wide: bool = False,
) -> SensorModel:
    """Load a model directory, checking the manifest's and the forest file's sha256 before reading them.

    ``pinned_manifest_sha256`` (the operator's pin) and ``manifest.sha256`` cover the
    manifest; ``require_digest`` refuses a manifest without the latter (learned models
    always have one).

    ``forests`` (sha256 -> Forest) lets models whose forest files are identical share
    one copy in memory (the shipped ``default`` is the ``vibration`` forest). ``wide``
    holds the forest for speed rather than memory: for a model many sensors share, not
    for one sensor's learned model.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory, pinned_manifest_sha256, require_digest)
    forest_path = _verified(directory, manifest.get("forest"), pinned_sha256, "forest")
    sha = manifest["forest"]["sha256"]
    try:
        forest = forests[sha] if forests is not None and sha in forests else load_forest(forest_path, wide=wide)
    except ValueError as e:
        raise ModelError(f"model {directory}: malformed manifest or forest: {e}") from None
    if forests is not None:
        forests[sha] = forest
    return assemble_model(manifest, forest, sha, str(directory))


def assemble_model(manifest: Mapping[str, Any], forest: Forest, sha256: str, where: str) -> SensorModel:
    """A model from its manifest and forest (read from a directory, or sent by the fit worker);
    ModelError naming ``where`` when they are malformed or do not fit together."""
    try:
        spec = FeatureSpec.from_dict(manifest["features"])
        impute = np.asarray(manifest["impute"], dtype=np.float64)
        calibration = Calibration.from_dict(manifest["calibration"])
        guard = RangeGuard.from_dict(manifest["range"])
        name, version = str(manifest["name"]), str(manifest["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"model {where}: malformed manifest or forest: {e}") from None
    n_forest = len(spec.forest_columns)
    if impute.shape != (len(spec.names),) or forest.n_features != n_forest or guard.low.shape != impute.shape:
        raise ModelError(
            f"model {where}: the forest takes {forest.n_features} features, the manifest gives it "
            f"{n_forest} of the {len(spec.names)} it names and imputes {impute.shape[0] if impute.ndim else 0}"
        )
    return SensorModel(name, version, sha256, spec, forest, impute, calibration, guard, manifest)


def load_estimator(directory: Path | str, pinned_sha256: str | None = None) -> Any:
    """The scikit-learn estimator behind a model, unpickled only after its sha256 matches."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    path = _verified(directory, manifest.get("estimator"), pinned_sha256, "estimator")
    import joblib

    return joblib.load(path)
