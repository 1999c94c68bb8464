"""Progress counting, kept apart from progress display.

The hot path only adds to an integer; whoever shows progress (the CLI's
rich bar, plain log lines, Redis in distributed mode) reads the tracker on
its own schedule.  A failed try leaves a note (``retrying``) that the
display shows instead of a frozen speed until bytes flow again.  The
connections open now (``connections``) and the file's name (``name``, once
known) are set by whoever knows them: the pool of fetchers, ``download()``,
or the producer reading a worker's status.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["RetryNote", "Tracker"]


class RetryNote(NamedTuple):
    """A try failed: the next one starts in ``seconds`` (0 once it is under way) because of ``reason``."""

    seconds: float
    reason: str

    def __str__(self) -> str:
        if self.seconds > 0:
            return f"retrying in {math.ceil(self.seconds)} s ({self.reason})"
        return f"retrying now ({self.reason})"


class Tracker:
    """Bytes done of a download, with a speed estimate over a sliding window."""

    def __init__(self, *, clock: Callable[[], float] | None = None, window: float = 5.0) -> None:
        self._clock = clock or time.monotonic
        self.total: int | None = None
        self.done = 0
        self.resumed = 0
        self.started = self._clock()
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()
        self.retries = 0  # notes taken so far: a display can tell a new one
        self.connections = 0  # requests running now
        self.name: str | None = None  # the file's name, once known
        self._note: tuple[float, str, int] | None = None  # (until, reason, done when noted)

    def start(self, total: int | None, done: int = 0) -> None:
        """Begin counting toward ``total`` bytes with ``done`` already on disk."""
        self.total = total
        self.done = self.resumed = done
        self.started = self._clock()
        self._samples.clear()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes (negative when a restart throws bytes away)."""
        self.done += n

    def retrying(self, delay: float, reason: str) -> None:
        """Note that a try failed because of ``reason`` (a few words) and the next starts in ``delay`` seconds."""
        self._note = (self._clock() + delay, reason, self.done)
        self.retries += 1

    def retry(self) -> RetryNote | None:
        """The last retry noted, while no byte has arrived since it; else ``None``."""
        note = self._note
        if note is None:
            return None
        until, reason, done = note
        if self.done > done:
            self._note = None  # bytes flow again
            return None
        return RetryNote(max(0.0, until - self._clock()), reason)

    def speed(self) -> float:
        """Bytes per second over the last few seconds."""
        now = self._clock()
        samples = self._samples
        samples.append((now, self.done))
        while len(samples) > 2 and now - samples[0][0] > self._window:
            samples.popleft()
        first_time, first_done = samples[0]
        elapsed = now - first_time
        if elapsed <= 0:
            return 0.0
        return max(0.0, (self.done - first_done) / elapsed)

    def eta(self, speed: float) -> float | None:
        """Seconds left at ``speed``, or ``None`` when unknown."""
        if self.total is None or speed <= 0:
            return None
        return max(0.0, (self.total - self.done) / speed)
