"""Embedded mode's work list: ranges in flight that an idle connection can split.

Without it, one slow connection holds its whole range to the end while the
others sit idle (the "straggler"): one connection at 100 kB/s made a 40 MB
download take 17.8x as long.  ``Scheduler`` hands out the planned ranges in
order; once none is left, a connection that comes back for work takes the tail
of the range that will take longest to finish, as aria2c and axel do with a
freed connection.  How much it takes follows the two speeds: the range in
flight keeps what it would fetch in the time the newcomer needs for the rest,
so a stalled range gives up everything left and a range as fast as the
newcomer gives up half.  A steal only happens when it saves more than
``MIN_STEAL_SECONDS`` (about what a new request costs, with a margin), so
where all connections run at one speed only ranges with more than twice that
left are split, and a normal download's last wave costs a few extra requests
at most.  Nor is anything split while the download's rate limit is what holds
it back (``held_back``): another connection would bring no byte more, and the
bytes the victim's socket holds past its new end would be sent for nothing.

A ``Segment`` is a range whose end only ever moves down: ``fetch.fetch_range``
rereads it between chunks and stops at it, and a segment with nothing left is
cancelled when it is not in the middle of a write.  The bytes a segment has
handed to the writer (``done``, and the chunk being written) are never given
away, so no byte is written twice and none is missed.

Everything here is plain bookkeeping on one event loop; the clock is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable

from .plan import Range

__all__ = ["MIN_STEAL_SECONDS", "Scheduler", "Segment"]

MIN_STEAL_SECONDS = 0.25  # a steal must save more than this: a request and its round trip, with a margin
RECHECK = 0.25  # seconds between an idle connection's looks for a range to split
MIN_AGE = 0.25  # seconds a fetch runs before its speed is trusted over the typical one
MIN_STALL = 1.0  # seconds without a byte before a range counts as stalled...
STALL_BYTES = 256 * 1024  # ...and at least as long as a typical connection takes for this much
_RECENT = 8  # finished fetches whose speeds make the "typical" speed


class Segment:
    """A range being fetched, whose end a steal can pull in."""

    __slots__ = ("done", "end", "fetched", "last", "scope", "since", "start", "writing")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end  # inclusive; only ever lowered, by Scheduler.steal
        self.done = 0  # bytes from start that are with the writer
        self.writing = 0  # bytes of the chunk being handed to the writer now
        self.since: float | None = None  # when this run of the fetch began
        self.fetched = 0  # bytes this run fetched, for its speed
        self.last = 0.0  # when its last bytes came
        self.scope: asyncio.Timeout | None = None  # cancels the fetch when all of it was taken

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def claimed(self) -> int:
        """First byte no one holds: everything before it is written or being written."""
        return self.start + self.done + self.writing

    def range(self) -> Range:
        return Range(self.start, self.end)

    def __repr__(self) -> str:
        return f"Segment({self.start}-{self.end}, done={self.done})"


class Scheduler:
    """Hands out ranges to fetch, then splits the slowest one for each idle connection."""

    def __init__(
        self,
        todo: Iterable[Range],
        *,
        clock: Callable[[], float] = time.monotonic,
        held_back: Callable[[], bool] | None = None,
    ) -> None:
        self._queue = deque(Segment(r.start, r.end) for r in todo)
        self._clock = clock
        self._held_back = held_back  # whether a rate limit holds the download back now (ratelimit.LocalThrottle)
        self.active: list[Segment] = []
        self.finished: list[Range] = []  # whole, written (not yet known to be on disk)
        self._speeds: deque[float] = deque(maxlen=_RECENT)
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set when one finishes
        self.steals = 0

    async def next(self) -> Segment | None:
        """The next segment to fetch, waiting while none can be had yet; ``None`` once all are done.

        An idle connection looks again whenever a segment finishes and every
        ``RECHECK`` seconds, as speeds change (a range that stalls later
        becomes worth splitting).
        """
        while (seg := self.take()) is None:
            if not self.active:
                return None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK):
                    await asyncio.shield(changed)
        return seg

    def take(self) -> Segment | None:
        """The next segment to fetch: a planned one, else a stolen tail; ``None`` when nothing is left to share."""
        seg = self._queue.popleft() if self._queue else self._steal()
        if seg is not None:
            self._begin(seg)
        return seg

    def progress(self, seg: Segment, n: int) -> None:
        """``n`` more bytes of ``seg`` are with the writer."""
        seg.done += n
        seg.fetched += n
        seg.last = self._clock()

    def finish(self, seg: Segment) -> None:
        """``seg`` is fetched to its (possibly lowered) end."""
        self.active.remove(seg)
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()
        if seg.done:
            self.finished.append(Range(seg.start, seg.start + seg.done - 1))
        if seg.since is not None and seg.fetched:
            elapsed = self._clock() - seg.since
            if elapsed > 0:
                self._speeds.append(seg.fetched / elapsed)

    def written(self) -> list[Range]:
        """Every byte range handed to the writer so far: finished segments and the fetched heads of active ones."""
        heads = [Range(s.start, s.start + s.done - 1) for s in self.active if s.done]
        return self.finished + heads

    def _begin(self, seg: Segment) -> None:
        seg.since = seg.last = self._clock()
        seg.fetched = 0
        self.active.append(seg)

    def _speed(self, seg: Segment, typical: float) -> float:
        """``seg``'s speed in bytes/s: ``typical`` while it is too young to tell, 0 once it stalls.

        Stalled means nothing came for as long as a typical connection takes
        for ``STALL_BYTES`` (at least ``MIN_STALL`` seconds): a range that
        was fast and then stopped gives up all it has left, not a share
        sized by its old speed.
        """
        if seg.since is None:
            return typical
        now = self._clock()
        if now - seg.last > max(MIN_STALL, STALL_BYTES / typical):
            return 0.0
        age = now - seg.since
        if age < MIN_AGE:
            return typical
        return seg.fetched / age

    def _typical(self) -> float | None:
        """What a fresh fetch can expect: the median speed of recent fetches."""
        if self._speeds:
            return statistics.median(self._speeds)
        now = self._clock()
        running = [s.fetched / (now - s.since) for s in self.active if s.since is not None and now - s.since >= MIN_AGE]
        return statistics.median(running) if running else None

    def _steal(self) -> Segment | None:
        typical = self._typical()
        if not typical or (self._held_back is not None and self._held_back()):
            return None
        best: tuple[float, Segment, float, int] | None = None
        for seg in self.active:
            left = seg.end + 1 - seg.claimed
            if left <= 0:
                continue
            speed = self._speed(seg, typical)
            eta = left / speed if speed > 0 else float("inf")
            if best is None or eta > best[0]:
                best = (eta, seg, speed, left)
        if best is None:
            return None
        eta, victim, speed, left = best
        # Split so both finish together: the victim keeps left * speed / (speed + typical).
        together = left / (speed + typical)
        if eta - together < MIN_STEAL_SECONDS:
            return None  # the request would cost about what it saves
        take = max(1, int(left * typical / (speed + typical)))
        start = victim.end + 1 - take
        tail = Segment(start, victim.end)
        victim.end = start - 1
        self.steals += 1
        if victim.end + 1 <= victim.claimed and not victim.writing and victim.scope is not None:
            # Everything it had left is taken: stop it now (it may be stalled)
            # rather than at its next chunk.
            victim.scope.reschedule(asyncio.get_running_loop().time())
        return tail
