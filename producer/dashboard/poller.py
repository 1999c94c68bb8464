"""One poll of Redis for every viewer: the dashboard's latest snapshot and its throughput history.

``Poller.run`` reads a snapshot every ``interval`` seconds (``read_snapshot``)
while the dashboard runs, however many pages are open: each Server-Sent
Events stream and each ``/metrics`` scrape reads the latest snapshot, never
Redis.  A failed poll is kept as ``error`` (the page shows it) and the
next poll tries again.

The throughput chart of a download covers the time this dashboard has
watched it: one sample of its completed bytes a second at most, and when
``MAX_SAMPLES`` are kept, every other old sample goes, so the chart spans
the whole watch at a coarser grain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rangefetch.errors import RangefetchError

__all__ = ["MAX_SAMPLES", "POLL_INTERVAL", "Poller"]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between polls of Redis, for all viewers together
SAMPLE_EVERY = 1.0  # seconds between throughput samples of one download
MAX_SAMPLES = 240  # samples kept per download before the history is thinned


class Poller:
    """The shared poll: ``latest`` (a JSON-ready dict), ``version`` (bumped per poll), ``changed()``."""

    def __init__(
        self,
        read: Callable[[], Awaitable[dict[str, Any]]],
        *,
        interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self.interval = interval
        self._clock = clock
        self.latest: dict[str, Any] = {"time": None, "downloads": [], "workers": [], "slots": [], "error": None}
        self.latest_json = json.dumps(self.latest)
        self.version = 0
        self.polled_at: float | None = None  # unix time of the last poll that succeeded
        self._history: dict[str, list[tuple[float, int]]] = {}
        self._cond = asyncio.Condition()
        self.closed = False

    async def poll_once(self) -> None:
        """Read one snapshot and publish it (a failure is published as ``error``)."""
        try:
            snap = await self._read()
        except RangefetchError as exc:
            log.warning("cannot read the cluster state: %s", exc)
            snap = {**self.latest, "error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:  # a record this version cannot read: keep serving
            log.warning("cannot read the cluster state: %s: %s", type(exc).__name__, exc)
            snap = {**self.latest, "error": f"unreadable state in Redis ({type(exc).__name__})"}
        else:
            snap["error"] = None
            self.polled_at = snap["time"]
            for record in snap["downloads"]:
                record["history"] = self._sample(record)
        self.latest = snap
        self.latest_json = json.dumps(snap, separators=(",", ":"))
        async with self._cond:
            self.version += 1
            self._cond.notify_all()

    async def run(self) -> None:
        """Poll until cancelled."""
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(self.interval)
        finally:
            async with self._cond:
                self.closed = True
                self._cond.notify_all()

    async def changed(self, seen: int, *, timeout: float) -> int:
        """Wait until a poll newer than ``seen`` is published (or ``timeout`` passes); returns the version."""
        async with self._cond:
            if self.version == seen and not self.closed:
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout)
                except TimeoutError:
                    pass
            return self.version

    def _sample(self, record: dict[str, Any]) -> list[list[float]]:
        """Add a throughput sample for ``record``; its history as ``[unix time, bytes/s]`` pairs."""
        now, done = self._clock(), int(record["completedLength"])
        points = self._history.setdefault(record["gid"], [])
        if points and done < points[-1][1]:  # started over: a new life
            points.clear()
        if not points or now - points[-1][0] >= SAMPLE_EVERY:
            points.append((now, done))
            if len(points) > MAX_SAMPLES:
                points[:] = points[:1] + points[1:-1:2] + points[-1:]
        return [
            [round(b[0], 2), round(max(0, b[1] - a[1]) / (b[0] - a[0]))]
            for a, b in zip(points, points[1:], strict=False)
            if b[0] > a[0]
        ]
