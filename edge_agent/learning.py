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

from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.domain import clip
from edge_agent.core.engine import ScoringEngine
from edge_agent.core.model import ModelError, SensorModel
from edge_agent.durable import fsync_dir
from edge_agent.model_files import load_model, save_model
from edge_agent.pipeline import RateLimitedLog
from edge_agent.tools.training import TrainingError, fit_request

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


def probe_writable(state_dir: Path) -> None:
    """Raise OSError unless a learned model could be saved under ``state_dir`` now."""
    root = state_dir / LEARNED_DIR
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".probe-{threading.get_ident()}"
    probe.write_bytes(b"")
    probe.unlink()


class Learner:
    """One background thread that fits, saves and installs learned models, in order.

    A model that could not be saved (a read-only or full state dir) still scores: it is kept
    in ``unsaved`` and saved again after a back-off (RETRY_MIN doubling to RETRY_MAX), with
    ``save_error`` saying why until a save gets through.
    """

    RETRY_MIN = 5.0
    RETRY_MAX = 300.0
    LOG_EVERY = 10.0  # seconds between two "learner busy" or "could not save" lines; the ones between are counted

    def __init__(
        self,
        state_dir: Path,
        on_learned: Callable[[str, SensorModel], None] | None = None,
        max_pending: int = 100,
        fit: Callable[[LearnRequest, str], SensorModel] = fit_request,
    ) -> None:
        """``max_pending``: fits waiting at most. Each holds a copy of its sensor's readings
        (~58 KB at the default 3,600 rows), and one takes a fraction of a second: a sensor
        refused asks again 50 readings later, instead of its readings piling up here.
        ``fit``: fits a request (default: in this thread; the agent passes a ``FitWorker``'s)."""
        self.state_dir = state_dir
        self.on_learned = on_learned
        self._fit = fit
        self.engine: ScoringEngine | None = None
        self._queue: queue.Queue[LearnRequest | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self.unsaved: dict[str, SensorModel] = {}  # fitted and scoring, not on disk yet
        self.save_error: str | None = None
        self._retry_in = self.RETRY_MIN
        self._retry_at: float | None = None
        self._log = RateLimitedLog(self.LOG_EVERY)
        self.refused = 0  # fits refused because the queue was full

    def attach(self, engine: ScoringEngine) -> None:
        self.engine = engine
        try:
            probe_writable(self.state_dir)
        except OSError as e:
            self._save_failed(e)
            log.error("learned models cannot be saved under %s (they score, but are relearned after a restart): %s",
                      self.state_dir, e)
        self._thread.start()

    def __call__(self, request: LearnRequest) -> None:
        """Called with the fits a batch made due: enqueue and return at once."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            # 1,500 sensors due together would log a line each, on every batch, until the queue drains.
            self.refused += 1
            suppressed = self._log.allow("busy", time.monotonic())
            if suppressed is not None:
                log.warning("learner busy (%d fits waiting): %s learns again later%s", self._queue.maxsize,
                            shown(request.sensor_id), RateLimitedLog.more(suppressed))
            if self.engine is not None:
                self.engine.learning_failed(request.sensor_id)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                request = self._queue.get(timeout=self._retry_wait())
            except queue.Empty:
                self._retry_saves()
                continue
            if request is None:
                return
            assert self.engine is not None
            try:
                model = self._fit(request, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            except (TrainingError, ValueError, OSError) as e:  # OSError: FitWorkerError too
                log.error("could not learn a model for %s: %s", shown(request.sensor_id), e)
                self.engine.learning_failed(request.sensor_id)
                continue
            model = self._save(request.sensor_id, model)
            self.engine.install(request.sensor_id, model, learned_flagged=request.keep is None)
            if self.on_learned is not None:
                self.on_learned(request.sensor_id, model)
            log.info("%s %s on %d readings", "refitted" if request.refit else "learned", shown(model.name), len(request.values))

    def _save(self, sensor_id: str, model: SensorModel) -> SensorModel:
        """The model as saved, or as fitted when the save failed: it scores either way.

        Going back to learning would throw away a good fit over a full disk or a read-only
        state dir, and start the same fit again at the next reading.
        """
        try:
            saved = save_learned(self.state_dir, sensor_id, model)
        except OSError as e:
            self.unsaved[sensor_id] = model
            self._save_failed(e)
            # 1,500 sensors learning on a read-only disk would log a line each.
            suppressed = self._log.allow("save", time.monotonic())
            if suppressed is not None:
                log.error("learned a model for %s but could not save it (it scores; saving again in %.0f s)%s: %s",
                          shown(sensor_id), self._retry_wait(), RateLimitedLog.more(suppressed), e)
            return model
        self.unsaved.pop(sensor_id, None)
        self._save_worked()
        return saved

    def _retry_saves(self) -> None:
        """Save again what could not be saved (or probe the state dir when nothing waits)."""
        self._retry_at = None
        try:
            if not self.unsaved:
                probe_writable(self.state_dir)
            for sensor_id, model in list(self.unsaved.items()):
                saved = save_learned(self.state_dir, sensor_id, model)
                if self.on_learned is not None:  # the saved files' digest, for the metrics
                    self.on_learned(sensor_id, saved)
                del self.unsaved[sensor_id]
        except OSError as e:
            self._save_failed(e)
            log.warning("state dir %s still cannot be written (%d learned model(s) unsaved; next try in %.0f s): %s",
                        self.state_dir, len(self.unsaved), self._retry_wait(), e)
            return
        log.info("state dir %s writable again: every learned model is saved", self.state_dir)
        self._save_worked()

    def _retry_wait(self) -> float | None:
        """Seconds until the next retry of a save (None: nothing to retry)."""
        return None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())

    def _save_failed(self, error: OSError) -> None:
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._retry_in
            self._retry_in = min(2 * self._retry_in, self.RETRY_MAX)
        self.save_error = f"{type(error).__name__}: {error}"

    def _save_worked(self) -> None:
        if not self.unsaved:
            self.save_error, self._retry_at, self._retry_in = None, None, self.RETRY_MIN

    def fit(self, request: LearnRequest) -> SensorModel:
        """Fit and save (replay and tests); the new files replace the old ones only once complete."""
        model = fit_request(request, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        return save_learned(self.state_dir, request.sensor_id, model)
