"""The connections of one download: the fetchers behind ``download()`` and ``Downloader``.

``Pool.ranges`` runs up to ``settings.connections`` fetchers in one task
group; each takes the next segment off a ``segments.Scheduler`` (so fast
connections take more ranges, and once none is left an idle one splits the
slowest range in flight) and fetches it with ``fetch_range``.  ``Pool.stream``
is the one plain GET for a server without ranges.  Both apply the
download's rate limit (``throttle``), its low-speed rule over all
connections (``lowspeed.AllSlow``) and, when downloads share one, a
connection ``budget``: each request holds one of its slots.

Where the bytes go is the caller's: one ``Writer`` for the file
(``download()``), or one per segment (``Downloader``'s pieces).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping

import httpx

from .errors import TransientError, collapse
from .fetch import Writer, fetch_range, fetch_stream
from .lowspeed import AllSlow
from .plan import Range
from .probe import RemoteFile
from .progress import Tracker
from .ratelimit import throttle_for
from .retry import Backoff
from .segments import RECHECK, Scheduler, Segment
from .settings import Settings
from .transport import read_size_for

__all__ = ["Pool", "RetryNote", "slot"]


def slot(budget: asyncio.Semaphore | None) -> contextlib.AbstractAsyncContextManager[object]:
    """One of ``budget``'s connection slots for the block, or nothing to wait for without a budget."""
    return budget if budget is not None else contextlib.nullcontext()


class RetryNote:
    """``Backoff``'s ``on_retry`` hook for embedded mode: the wait goes on the tracker for the display.

    With ``slow`` (a pool's), a low-speed trip also counts toward giving
    up on a server that trickles to every connection.
    """

    def __init__(self, tracker: Tracker, slow: AllSlow | None = None) -> None:
        self.tracker = tracker
        self.slow = slow

    async def __call__(self, delay: float, exc: TransientError) -> None:
        if self.slow is not None:
            self.slow.failed(exc)
        self.tracker.retrying(delay, exc.reason)


class Pool:
    """The fetchers of one download of ``remote``, counted on ``tracker``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        remote: RemoteFile,
        settings: Settings,
        *,
        headers: Mapping[str, str] | None = None,
        tracker: Tracker | None = None,
        budget: asyncio.Semaphore | None = None,
    ) -> None:
        self.client = client
        self.remote = remote
        self.settings = settings
        self.headers = dict(headers or {})
        self.tracker = tracker or Tracker()
        self.budget = budget  # connection slots shared with other downloads
        # --limit-rate, shared by the connections; each pays for about one read ahead.
        ahead = read_size_for(settings.read_size, settings.connections, settings.limit_rate)
        self.throttle = throttle_for(settings.limit_rate, ahead=ahead)
        self.connections = 0  # the most fetches running at once
        self.running = 0  # fetches running now
        self.slow = AllSlow(settings.low_speed, lambda: self.running, url=remote.url)
        self.scheduler: Scheduler | None = None
        self._planned = 0  # ranges in the plan

    def backoff(self) -> Backoff:
        """A fresh retry count for one request, whose waits show on the tracker."""
        return Backoff(self.settings.retry, on_retry=RetryNote(self.tracker, self.slow))

    def advance(self, n: int) -> None:
        self.tracker.advance(n)
        self.slow.arrived(n)

    async def stream(self, writer: Writer) -> int:
        """Fetch the whole file with one plain GET into ``writer``; return its size."""
        self.connections = self.tracker.connections = 1
        try:
            async with slot(self.budget):
                return await fetch_stream(
                    self.client,
                    self.remote,
                    writer,
                    headers=self.headers,
                    backoff=self.backoff(),
                    on_progress=self.advance,
                    low_speed=self.settings.low_speed,
                    throttle=self.throttle,
                )
        finally:
            self.tracker.connections = 0

    def plan(self, todo: list[Range]) -> Scheduler:
        """The scheduler for ``todo`` (read it for what is written, e.g. for a checkpoint)."""
        throttle = self.throttle
        self.scheduler = Scheduler(todo, held_back=throttle.held_back if throttle is not None else None)
        self._planned = len(todo)
        return self.scheduler

    async def ranges(
        self,
        writer_for: Callable[[Segment], Writer],
        finished: Callable[[Writer], Awaitable[None]] | None = None,
    ) -> None:
        """Fetch every segment of the scheduler (``plan``) over up to ``settings.connections`` connections.

        ``writer_for(segment)`` gives where a segment's bytes go; ``finished``
        is awaited with that writer once the segment's fetch ended.

        Raises:
            The first error of a fetch (not a group), as ``fetch_range``.
        """
        scheduler = self.scheduler
        assert scheduler is not None, "plan() first"
        budget = self.budget

        def advance(seg: Segment, n: int) -> None:
            scheduler.progress(seg, n)
            self.advance(n)

        async def claim() -> Segment | None:
            """The next segment, with a slot of the budget taken first (a segment
            waiting for a slot would look stalled to the scheduler and be split)."""
            if budget is None:
                return await scheduler.next()
            while True:
                await budget.acquire()
                if (seg := scheduler.take()) is not None:
                    return seg
                budget.release()
                if not scheduler.active:
                    return None
                await asyncio.sleep(RECHECK)  # a range in flight may become worth splitting

        async def fetcher() -> None:
            while (seg := await claim()) is not None:
                self.running += 1
                self.connections = max(self.connections, self.running)
                self.tracker.connections = self.running  # for the display
                writer = writer_for(seg)
                try:
                    async with asyncio.timeout(None) as scope:
                        seg.scope = scope
                        await fetch_range(
                            self.client,
                            self.remote,
                            seg.range(),
                            writer,
                            headers=self.headers,
                            backoff=self.backoff(),
                            on_progress=functools.partial(advance, seg),
                            segment=seg,
                            low_speed=self.settings.low_speed,
                            throttle=self.throttle,
                        )
                except TimeoutError:
                    if not scope.expired():
                        raise
                    # Stopped by a steal that took everything it had left.
                finally:
                    seg.scope = None
                    self.running -= 1
                    self.tracker.connections = self.running
                    if budget is not None:
                        budget.release()
                if finished is not None:
                    await finished(writer)
                scheduler.finish(seg)

        try:
            async with asyncio.TaskGroup() as fetchers:
                for _ in range(min(self.settings.connections, self._planned)):
                    fetchers.create_task(fetcher())
        except BaseExceptionGroup as group:
            raise collapse(group) from group
