"""Learning on the device: fits sensors' own models in the background and keeps them on disk.

The engine hands over a ``LearnRequest`` (never waiting for it); one thread here
has the model fitted (by the agent's niced fit worker process, see ``fit_worker``, or
in this thread), writes it under the state directory (with the same
sha256 manifest as shipped models), then swaps it into the engine. A restarted
agent loads what was learned, checking each file's hash first.

No name on disk comes from a sensor id: a sensor's folder is the sha256 of its id
(64 hex characters: never ``.``, ``..``, too long or a reserved name), and the id is
kept inside the manifest (``sensor_id``). See docs/security.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from edge_agent.adaptation import LearnRequest
from edge_agent.domain import clip
from edge_agent.durable import fsync_dir
from edge_agent.engine import ScoringEngine
from edge_agent.model import ModelError, SensorModel, load_model, save_model
from edge_agent.training import TrainingError, fit_request

log = logging.getLogger(__name__)

LEARNED_DIR = "learned"
_HASHED = re.compile(r"[0-9a-f]{64}")
_STAGING = ".new"  # a save in progress: <hash>.new, complete only once renamed to <hash>
_REPLACED = ".old"  # the model a save replaces, until the new one is in place


def shown(sensor_id: str) -> str:
    """A sensor id as logs show it: repr'd (no control characters) and cut to a bounded length."""
    return repr(clip(sensor_id))


def folder_name(sensor_id: str) -> str:
    return hashlib.sha256(sensor_id.encode("utf-8", "surrogatepass")).hexdigest()


def model_dir(state_dir: Path, sensor_id: str) -> Path:
    """The folder of a sensor's learned model: named by the sha256 of its id, whatever the id holds."""
    return state_dir / LEARNED_DIR / folder_name(sensor_id)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _settle_leftovers(root: Path) -> None:
    """Finish or undo what a kill interrupted: a save is complete only once <hash> exists.

    <hash>.new (a save in progress) is removed; <hash>.old is the previous model, put
    back when the kill came between the two renames of a save. (Temporary files a kill
    leaves inside a folder are never read: loads open only the files the manifest names.)
    """
    for entry in sorted(root.iterdir()):
        name = entry.name
        try:
            if name.endswith(_REPLACED) and _HASHED.fullmatch(name[: -len(_REPLACED)]):
                final = root / name[: -len(_REPLACED)]
                if final.exists():
                    _remove(entry)
                else:
                    entry.rename(final)
                    log.info("put back the learned model %s that an interrupted save had set aside", final.name)
            elif name.endswith(_STAGING) and _HASHED.fullmatch(name[: -len(_STAGING)]):
                _remove(entry)
                log.debug("removed %s, left by an interrupted save", name)
        except OSError as e:  # a read-only state dir: the leftover is still never loaded as a sensor
            log.warning("could not settle %s, left by an interrupted save: %s", name, e)


def _migrate(root: Path, folder: Path) -> tuple[str, SensorModel] | None:
    """A model saved before folders were hashed (named by quote(id)): moved to its hashed folder.

    Folders ending in .new/.old were the old learner's leftovers and are removed; a folder
    whose manifest does not name the id its name spells is left alone and logged.
    """
    if folder.name.endswith((_STAGING, _REPLACED)):
        _remove(folder)
        return None
    sensor_id = unquote(folder.name)
    if model_dir(root.parent, sensor_id).is_dir():  # already migrated (a kill came before the old folder went)
        _remove(folder)
        return None
    model = load_model(folder)
    if model.name != f"learned:{sensor_id}":
        log.warning("ignoring %s in %s: it holds model %s, not a model learned by a sensor of that name",
                    shown(folder.name), root, shown(model.name))
        return None
    saved = save_learned(root.parent, sensor_id, model)
    _remove(folder)
    log.info("moved the learned model of %s to its hashed folder %s", shown(sensor_id), folder_name(sensor_id))
    return sensor_id, saved


def load_learned(state_dir: Path) -> dict[str, SensorModel]:
    """Every model learned before a restart; one that fails its check is dropped and relearned.

    Only folders named by a sha256 are sensors: leftovers of an interrupted save are put
    back or removed quietly, and folders of the older quote()-named layout are migrated.
    """
    root = state_dir / LEARNED_DIR
    out: dict[str, SensorModel] = {}
    if not root.is_dir():
        return out
    _settle_leftovers(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        try:
            if not _HASHED.fullmatch(folder.name):
                migrated = _migrate(root, folder)
                if migrated is not None:
                    out[migrated[0]] = migrated[1]
                continue
            model = load_model(folder, require_digest=True)
            sensor_id = model.manifest.get("sensor_id")
            if not isinstance(sensor_id, str) or folder_name(sensor_id) != folder.name:
                raise ModelError(f"model {folder}: its manifest's sensor_id does not hash to its folder's name")
            out[sensor_id] = model
        except (ModelError, OSError) as e:
            log.error("ignoring a learned model that fails its check (the sensor learns again): %s", e)
    return out


def save_learned(state_dir: Path, sensor_id: str, model: SensorModel) -> SensorModel:
    """Save a sensor's model atomically and durably, replacing the one it had.

    Written to <hash>.new (each file fsynced), the old folder renamed to <hash>.old, the
    new one to <hash>, the parent fsynced, then <hash>.old removed. A kill at any point
    leaves either the old or the new model under <hash>, or <hash>.old for
    load_learned to put back.
    """
    model = dataclasses.replace(model, manifest={**model.manifest, "sensor_id": sensor_id})
    final = model_dir(state_dir, sensor_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(final.name + _STAGING)
    _remove(staging)
    saved = save_model(model, staging)
    old = final.with_name(final.name + _REPLACED)
    _remove(old)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    fsync_dir(final.parent)
    _remove(old)
    return saved


class Learner:
    """One background thread that fits, saves and installs learned models, in order."""

    def __init__(
        self,
        state_dir: Path,
        on_learned: Callable[[str, SensorModel], None] | None = None,
        max_pending: int = 1000,
        fit: Callable[[LearnRequest, str], SensorModel] = fit_request,
    ) -> None:
        """``fit``: fits a request (default: in this thread; the agent passes a ``FitWorker``'s)."""
        self.state_dir = state_dir
        self.on_learned = on_learned
        self._fit = fit
        self.engine: ScoringEngine | None = None
        self._queue: queue.Queue[LearnRequest | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)

    def attach(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self._thread.start()

    def __call__(self, request: LearnRequest) -> None:
        """Called with the fits a batch made due: enqueue and return at once."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            log.warning("learner busy: %s learns again later", shown(request.sensor_id))
            if self.engine is not None:
                self.engine.learning_failed(request.sensor_id)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            assert self.engine is not None
            try:
                model = self._fit(request, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            except (TrainingError, ValueError, OSError) as e:  # OSError: FitWorkerError too
                log.error("could not learn a model for %s: %s", shown(request.sensor_id), e)
                self.engine.learning_failed(request.sensor_id)
                continue
            try:
                model = save_learned(self.state_dir, request.sensor_id, model)
            except OSError as e:
                # The model is good: it scores from now on, and is only lost on a restart
                # (the next refit tries to save again). Going back to learning would throw
                # away a fit over a full disk or a read-only state dir.
                log.error("learned a model for %s but could not save it (it scores, but is relearned after a restart): %s",
                          shown(request.sensor_id), e)
            self.engine.install(request.sensor_id, model, learned_flagged=request.keep is None)
            if self.on_learned is not None:
                self.on_learned(request.sensor_id, model)
            log.info("%s %s on %d readings", "refitted" if request.refit else "learned", shown(model.name), len(request.values))

    def fit(self, request: LearnRequest) -> SensorModel:
        """Fit and save (replay and tests); the new files replace the old ones only once complete."""
        model = fit_request(request, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        return save_learned(self.state_dir, request.sensor_id, model)
