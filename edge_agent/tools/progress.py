"""Progress and time left on a terminal for long train/replay/evaluate runs; silent elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done)`` redraws one status line at most a few times a second."""

    def __init__(self, total: int, label: str, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(total, 1)
        self.label = label
        self.enabled = not quiet and self.stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.2 and done < self.total:
            return
        self._drawn = now
        self.stream.write("\r" + self.line(done, now - self._started) + "\x1b[K")
        self.stream.flush()

    def line(self, done: int, elapsed: float) -> str:
        share = min(done / self.total, 1.0)
        left = elapsed * (1 - share) / share if share > 0 else float("nan")
        eta = f"{left:.0f} s left" if left == left else "estimating"
        return f"{self.label}: {done:,}/{self.total:,} ({share:.0%}), {eta}"

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
