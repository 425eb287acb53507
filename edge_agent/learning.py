"""Learning on the device: fits sensors' own models in the background and keeps them on disk.

The engine hands over a ``LearnRequest`` (never waiting for it); one thread here
fits the model with numpy, writes it under the state directory (with the same
sha256 manifest as shipped models), then swaps it into the engine. A restarted
agent loads what was learned, checking each file's hash first.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

from edge_agent.adaptation import LearnRequest
from edge_agent.engine import ScoringEngine
from edge_agent.model import ModelError, SensorModel, load_model, save_model
from edge_agent.training import TrainingError, learn_model

log = logging.getLogger(__name__)

LEARNED_DIR = "learned"


def model_dir(state_dir: Path, sensor_id: str) -> Path:
    """A folder name for any sensor id (a topic level may hold '/'-free text of any kind)."""
    return state_dir / LEARNED_DIR / quote(sensor_id, safe="-_")


def load_learned(state_dir: Path) -> dict[str, SensorModel]:
    """Every model learned before a restart; one that fails its check is dropped and relearned."""
    root = state_dir / LEARNED_DIR
    out: dict[str, SensorModel] = {}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out[unquote(folder.name)] = load_model(folder)
        except ModelError as e:
            log.error("ignoring a learned model that fails its check (the sensor learns again): %s", e)
    return out


def fit_request(request: LearnRequest, version: str) -> SensorModel:
    """The model a learn request asks for (not saved): the live learner, replay and tests share it."""
    return learn_model(request.spec, request.values, name=f"learned:{request.sensor_id}", version=version, keep=request.keep,
                       leave_out_outliers=request.leave_out_outliers, times=request.times)


class Learner:
    """One background thread that fits, saves and installs learned models, in order."""

    def __init__(
        self,
        state_dir: Path,
        on_learned: Callable[[str, SensorModel], None] | None = None,
        max_pending: int = 1000,
    ) -> None:
        self.state_dir = state_dir
        self.on_learned = on_learned
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
            log.warning("learner busy: %s learns again later", request.sensor_id)
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
                model = self.fit(request)
            except (TrainingError, ValueError, OSError) as e:
                log.error("could not learn a model for %s: %s", request.sensor_id, e)
                self.engine.learning_failed(request.sensor_id)
                continue
            self.engine.install(request.sensor_id, model, learned_flagged=request.keep is None)
            if self.on_learned is not None:
                self.on_learned(request.sensor_id, model)
            log.info("%s %s on %d readings", "refitted" if request.refit else "learned", model.name, len(request.values))

    def fit(self, request: LearnRequest) -> SensorModel:
        """Fit and save; the new files replace the old ones only once complete."""
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        model = fit_request(request, version)
        final = model_dir(self.state_dir, request.sensor_id)
        staging = final.with_name(final.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        saved = save_model(model, staging)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return saved
