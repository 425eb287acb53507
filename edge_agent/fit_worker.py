"""Fits in a process of their own, at a lower priority, so that they never hold the scoring worker's GIL.

A fit is seconds of numpy and Python work, much of it holding the GIL: in a thread of the
agent, ten at once showed up as verdict latency. ``FitWorker`` hands each learn request to
a small long-lived child process (``python -m edge_agent.fit_worker``, niced) over its
stdin and gets the fitted model back on its stdout as plain arrays and a JSON manifest
(no pickle either way). The child imports numpy and the training code only (no MQTT, no
HTTP), and exits when it has been idle for ``idle_exit`` seconds, so a site whose sensors
have all learned does not keep paying its memory between refits.

If the child dies during a fit (killed, out of memory), the fit is retried once in a fresh
child; if that dies too, ``FitWorkerError`` (an ``OSError``) reaches the learner, which logs
it and tells the engine: the sensor keeps its model, or keeps learning, and asks again
later. If no child can be started at all, the fit runs in the calling thread, as it did
before there was a worker. Both are logged and counted (``on_event``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.features import FeatureSpec
from edge_agent.core.forest import Forest
from edge_agent.core.model import SensorModel
from edge_agent.model_files import assemble_model
from edge_agent.tools.training import TrainingError, fit_request

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # JSON header bytes, then .npz bytes
MAX_FRAME = 1 << 30

# What on_event is told: a fit ran in the child, the child died (and is restarted), or a
# fit ran in the calling thread because no child could be started.
FIT_IN_WORKER = "worker"
WORKER_DIED = "died"
FIT_IN_THREAD = "thread"


class FitWorkerError(OSError):
    """The fit worker died on this request twice: the fit is lost, the sensor asks again later."""


def _write(stream: IO[bytes], header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    body = io.BytesIO()
    np.savez(body, **arrays)  # type: ignore[arg-type]  # numpy's stubs take **kwds as allow_pickle
    head = json.dumps(header).encode()
    stream.write(_FRAME.pack(len(head), body.tell()) + head + body.getvalue())
    stream.flush()


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """One message, or None at end of stream (the other side closed or died)."""
    sizes = _read_exactly(stream, _FRAME.size)
    if sizes is None:
        return None
    n_head, n_body = _FRAME.unpack(sizes)
    if n_head > MAX_FRAME or n_body > MAX_FRAME:
        raise ValueError(f"fit worker message of {n_head} + {n_body} bytes: the stream is out of step")
    head, body = _read_exactly(stream, n_head), _read_exactly(stream, n_body)
    if head is None or body is None:
        return None
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(head), arrays


def _request_message(request: LearnRequest, version: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header = {"sensor_id": request.sensor_id, "spec": request.spec.to_dict(), "refit": request.refit,
              "leave_out_outliers": request.leave_out_outliers, "version": version}
    arrays = {"values": np.asarray(request.values, dtype=np.float64)}
    if request.times is not None:
        arrays["times"] = np.asarray(request.times, dtype=np.float64)
    if request.keep is not None:
        arrays["keep"] = np.asarray(request.keep, dtype=bool)
    return header, arrays


def _request_of(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[LearnRequest, str]:
    request = LearnRequest(
        str(header["sensor_id"]), FeatureSpec.from_dict(header["spec"]), arrays["values"], refit=bool(header["refit"]),
        times=arrays.get("times"), keep=arrays.get("keep"), leave_out_outliers=bool(header["leave_out_outliers"]),
    )
    return request, str(header["version"])


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The child's loop: a request in, its model (or why there is none) out, until stdin closes."""
    while True:
        message = _read(stdin)
        if message is None:
            return 0
        request, version = _request_of(*message)
        try:
            model = fit_request(request, version)
        except (TrainingError, ValueError) as e:
            _write(stdout, {"error": str(e), "training": isinstance(e, TrainingError)}, {})
            continue
        _write(stdout, {"manifest": model.manifest}, model.forest.to_arrays())


class FitWorker:
    """Fits learn requests in a niced child process, one at a time; ``fit`` blocks only its caller."""

    def __init__(
        self, nice: int = 10, idle_exit: float = 300.0, on_event: Callable[[str], None] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.nice = nice
        self.idle_exit = idle_exit
        self.on_event = on_event
        self.argv = argv or [sys.executable, "-m", "edge_agent.fit_worker", str(nice)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one fit at a time on the pipe; close() waits for it
        self._idle: threading.Timer | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def rss_bytes(self) -> int | None:
        """The child's resident memory now (None when it is not running or not on Linux)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def fit(self, request: LearnRequest, version: str) -> SensorModel:
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            try:
                return self._fit(request, version)
            finally:
                if self.idle_exit > 0:
                    self._idle = threading.Timer(self.idle_exit, self._close_idle)
                    self._idle.daemon = True
                    self._idle.start()

    def _fit(self, request: LearnRequest, version: str) -> SensorModel:
        message = _request_message(request, version)
        for attempt in (1, 2):
            if self._closed:
                raise FitWorkerError(f"the agent is stopping: the fit of {request.sensor_id!r} is left for its next start")
            proc = self._running()
            if proc is None:
                self._event(FIT_IN_THREAD)
                return fit_request(request, version)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write(proc.stdin, *message)
                reply = _read(proc.stdout)
            except (OSError, ValueError):  # a broken pipe, or a stream out of step: the child is gone or useless
                reply = None
            if reply is not None:
                self._event(FIT_IN_WORKER)
                return self._model_of(request, *reply)
            code = self._reap()
            self._event(WORKER_DIED)
            log.warning("the fit worker died (exit status %s) while fitting %r; %s", code, request.sensor_id,
                        "retrying in a new one" if attempt == 1 else "giving up on this fit, the sensor asks again later")
        raise FitWorkerError(f"the fit worker died twice while fitting {request.sensor_id!r}")

    @staticmethod
    def _model_of(request: LearnRequest, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> SensorModel:
        if "error" in header:
            error = TrainingError if header.get("training") else ValueError
            raise error(str(header["error"]))
        return assemble_model(header["manifest"], Forest.from_arrays(arrays), "", f"fitted for {request.sensor_id!r}")

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        try:
            # A session of its own: a Ctrl-C at the agent's terminal must not kill a fit half-way
            # (the agent's shutdown closes the child's stdin, and it exits between fits).
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                          start_new_session=True)
        except OSError as e:
            log.error("could not start the fit worker (%s): fitting in the agent's own process instead", e)
            self._proc = None
        return self._proc

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def _close_idle(self) -> None:
        if self._lock.acquire(blocking=False):  # a fit under way keeps the worker
            try:
                self._reap()
            finally:
                self._lock.release()

    def close(self, wait: float = 1.0) -> None:
        """Stop the child: it exits when its stdin closes. One still busy with a fit after
        ``wait`` seconds is killed, and no other is started: the agent is stopping."""
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
        if self._lock.acquire(timeout=wait):
            try:
                self._reap()
            finally:
                self._lock.release()
            return
        proc = self._proc
        if proc is not None:
            proc.kill()

    def _event(self, what: str) -> None:
        if self.on_event is not None:
            self.on_event(what)


def main(argv: list[str]) -> int:
    nice = int(argv[0]) if argv else 10
    if nice:
        os.nice(nice)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # only replies go to the parent's pipe
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s fit-worker: %(message)s")
    try:
        return serve(sys.stdin.buffer, out)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
