"""The hand-over between the transport and the scoring core, and the worker that drains it.

The transport's callback only parses and calls ``submit`` with an :class:`Envelope`: the
parsed reading and the transport's token for settling it. The scoring core sees only the
reading; the token stays in the envelope. One worker thread takes whatever is waiting as
one batch (a single reading when idle, so nothing waits for a batch to fill), scores it,
and hands the verdicts to the sink, which publishes them and settles each reading once
its verdict is out. The hand-over is bounded: when it is full ``submit`` blocks the
transport, which stops acknowledging, so the broker holds the readings instead of the
agent dropping them.

A message the parser already rejected never enters the hand-over: ``submit`` counts,
reports and settles it on the caller's thread, so a flood of junk costs no
queue slot and no thread switch, and good readings behind it are not kept waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.core.domain import InvalidReading, Reading, Verdict, clip
from edge_agent.core.engine import LearnRequest, Scored, ScoringEngine
from edge_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One parsed message on its way to the core: a reading (or why there is none) and the transport's token.

    ``token`` is opaque here: the sink settles it once the reading is answered (None:
    nothing to settle, e.g. all but the last reading of a message that carries several).
    """

    item: Reading | InvalidReading
    token: object = None


class VerdictSink(Protocol):
    """Where verdicts and rejections go (the MQTT adapter, or a list in tests)."""

    def publish_verdict(self, verdict: Verdict, envelope: Envelope) -> None:
        """Publish the verdict of ``envelope``'s reading and settle its token once the verdict is out."""

    def publish_error(self, invalid: InvalidReading) -> None:
        """Report a rejected message (on the errors topic)."""

    def settle(self, token: object) -> None:
        """Acknowledge the message behind ``token`` now: nothing will answer it (a rejection)."""


class RateLimitedLog:
    """Logs at most one line per reason per interval, with the count it swallowed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, reason: str, now: float) -> int | None:
        """None to stay quiet; else how many were suppressed since the last line."""
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return self._suppressed.pop(reason, 0)

    @staticmethod
    def more(suppressed: int) -> str:
        """What to add to a line to say how many it stands for."""
        return f" (and {suppressed} more since the last line)" if suppressed else ""


class TokenBucket:
    """At most ``rate`` events a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Pipeline:
    """Bounded hand-over plus one scoring worker."""

    def __init__(
        self,
        engine: ScoringEngine,
        sink: VerdictSink,
        metrics: AgentMetrics,
        queue_size: int = 10_000,
        max_batch: int = 512,
        error_log_interval: float = 1.0,
        error_report_rate: float = 100.0,
        learner: Callable[[LearnRequest], None] | None = None,
    ) -> None:
        """``learner`` takes the fits scoring makes due (without waiting for them); None: no sensor learns."""
        self.engine = engine
        self.learner = learner
        self.sink = sink
        self.metrics = metrics
        self.max_batch = max_batch
        self.queue_size = queue_size
        self._queue: queue.Queue[object] = queue.Queue()  # bounded by submit
        self._room = threading.Condition()  # notified when the worker takes a batch
        self._errors_log = RateLimitedLog(error_log_interval)
        self._error_reports = TokenBucket(error_report_rate, burst=max(1.0, error_report_rate))
        self._reject_lock = threading.Lock()  # rejections come from the worker and the transport's thread
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="scoring-worker", daemon=True)
        self._worker.start()

    def submit(self, envelope: Envelope) -> None:
        """Hand over one parsed message; blocks (backpressure) while the hand-over is full."""
        if isinstance(envelope.item, InvalidReading):
            self._reject(envelope.item, envelope.token)
            return
        with self._room:
            while self._queue.qsize() >= self.queue_size:
                if self._closing.is_set():
                    # Not acknowledged: the broker redelivers it to the next session.
                    log.warning("shutting down with a full hand-over; leaving a reading to the broker")
                    return
                self._room.wait(0.05)
        self._queue.put(envelope)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def drain_and_stop(self, timeout: float) -> bool:
        """Finish what was handed over, then stop the worker. True if it finished in time."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
            return not self._worker.is_alive()
        return True

    def _take_batch(self) -> tuple[list[Envelope], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch: list[Envelope] = [first]  # type: ignore[list-item]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            with self._room:
                self._room.notify_all()
            if batch:
                try:
                    self.process(batch)
                except Exception:  # a bug must not silently stop every reading behind it
                    log.exception("scoring a batch of %d readings failed", len(batch))
            self.metrics.queue_depth.set(self._queue.qsize())

    def process(self, batch: Sequence[Envelope]) -> None:
        """Score one batch in order and hand every result to the sink."""
        readings = [e.item for e in batch if isinstance(e.item, Reading)]
        started = time.perf_counter()
        scored = self.engine.score(readings) if readings else Scored([], [])
        results = scored.results
        if self.learner is not None:
            for request in scored.learn_requests:
                self.learner(request)
        if readings:
            self.metrics.latency.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(readings))
        by_reading = iter(results)
        verdicts: list[Verdict] = []
        for envelope in batch:
            if isinstance(envelope.item, InvalidReading):
                self._reject(envelope.item, envelope.token)
                continue
            result = next(by_reading)
            if isinstance(result, InvalidReading):
                self._reject(result, envelope.token)
            else:
                verdicts.append(result)
                self.sink.publish_verdict(result, envelope)
        self.metrics.record_verdicts(verdicts, self.engine.is_tracked if scored.evicted else None)
        if scored.evicted:
            self.metrics.record_evicted(scored.evicted, tracked=self.engine.is_tracked)

    def _reject(self, invalid: InvalidReading, token: object) -> None:
        """Count, log (rate-limited), report (rate-limited) and settle a message nothing will answer."""
        self.metrics.record_invalid(invalid)
        now = time.monotonic()
        with self._reject_lock:
            suppressed = self._errors_log.allow(invalid.reason, now)
            report = self._error_reports.take(now)
        if suppressed is not None:
            more = f" (and {suppressed} more of this kind since the last line)" if suppressed else ""
            log.warning("invalid message on %s: %s: %s%s", clip(invalid.topic), invalid.reason, clip(invalid.detail, 200), more)
        if report:
            self.sink.publish_error(invalid)
        self.sink.settle(token)
