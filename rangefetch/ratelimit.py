"""Rate limits: one budget of bytes per second shared by every connection of a download.

How it throttles
----------------
A connection pays for its reads before it makes them (``metering.Meter``):
before each read it takes as many tokens as its last read brought (the
first read: ``Throttle.ahead``, about the read size), no more than is left
of the response, and it gives back what was paid and not read when the
response ends (``refund``).  So a download's connections, however many,
cannot together run ahead of the rate by a read each (which, paid after the
read, would put 16 reads of 256 KiB, 4 MiB, ahead of a 1 MiB/s rate), while
a slow server's small reads pay little up front and are not held below the
rate.  Nothing is held here: while a
connection waits, its bytes wait in the kernel's socket buffers, and once
those are full TCP's flow control slows the server down.  Taking tokens per
chunk (up to the read size, 64 KiB to 1 MiB) keeps the cost off the bytes.

The algorithm is GCRA, the generic cell rate algorithm (ITU-T I.371, as in
redis-cell's ``CL.THROTTLE`` and go-redis's redis_rate): a token bucket
kept as one number, the *theoretical arrival time* (TAT), the moment at
which the bytes taken so far would have arrived at exactly the rate.  Each
take moves the TAT on by ``n / rate`` from ``max(TAT, now)`` (time spent
idle is not saved up beyond the tolerance), and the taker waits until
``TAT - tolerance``: bytes may run ahead of the rate by ``tolerance``
seconds' worth (``TOLERANCE``, 100 ms), no more.  Concurrent takers each
move the TAT on, so they are served in turn and share the rate, and no
connection waits for a timer of its own.  Over ``T`` seconds a download
takes at most ``rate * (T + tolerance)`` bytes.

In distributed mode the TAT lives in Redis (``scripts.GCRA``, one key per
limit: the download's, and the server host's cap), advanced by Redis's own
clock (``TIME``) so workers on different hosts agree.  Workers take their
tokens in batches (``BatchedThrottle``, ``batch_for``: about 100 ms
worth), so Redis sees a few calls a second per worker, not one per chunk.

The low-speed rule (``settings.LowSpeed``) must not mistake our own waiting
for a slow server: ``metering.Meter`` stops its clock while ``take`` waits.  Nor
may the straggler rules (embedded mode's range splitting in ``segments.py``,
the workers' hand-offs in ``worker/handoff.py``): while the rate limit is
what holds a download back (``held_back``), another connection brings no byte
more, and the bytes the old connection's socket holds would be sent for
nothing, so neither acts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = [
    "AHEAD",
    "HELD_GRACE",
    "MAX_BATCH",
    "MIN_BATCH",
    "TOLERANCE",
    "BatchedThrottle",
    "Gcra",
    "LocalThrottle",
    "Throttle",
    "TimedThrottle",
    "batch_for",
    "throttle_for",
]

TOLERANCE = 0.1  # seconds' worth of bytes a download may run ahead of its rate (GCRA's tau)
BATCH_SECONDS = 0.1  # a worker takes about this many seconds' worth of tokens from Redis at a time
HELD_GRACE = 1.0  # seconds after the cluster's limiter last asked for a wait that it still counts as holding back
AHEAD = 256 * 1024  # bytes a connection pays before its first read: the read size at 16 connections
MIN_BATCH = 64 * 1024
MAX_BATCH = 1024 * 1024

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Throttle(Protocol):
    """Where a fetch takes tokens: ``take(n)`` returns once ``n`` more bytes are within the rate.

    ``ahead`` is what a connection pays before its first read; what it paid
    and did not read it gives back with ``refund``.
    """

    @property
    def ahead(self) -> int: ...

    async def take(self, n: int) -> None: ...

    def refund(self, n: int) -> None: ...


class Gcra:
    """The schedule of one rate (GCRA, see the module docstring); pure, the caller tells the time.

    Args:
        rate: bytes per second, at least 1.
        tolerance: seconds' worth of bytes that may run ahead of the rate.
    """

    __slots__ = ("interval", "tat", "tolerance")

    def __init__(self, rate: float, *, tolerance: float = TOLERANCE) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.interval = 1.0 / rate  # seconds per byte
        self.tolerance = tolerance
        self.tat = 0.0

    def charge(self, n: int, now: float) -> float:
        """Count ``n`` bytes taken at ``now``; the seconds to wait before taking more (0: none)."""
        self.tat = max(self.tat, now) + n * self.interval
        return max(0.0, self.tat - self.tolerance - now)

    def refund(self, n: int) -> None:
        """Give back ``n`` bytes taken and not used: the schedule moves back by their time."""
        self.tat -= n * self.interval


class LocalThrottle:
    """A rate shared by the connections of one process (embedded mode).

    Args:
        rate: bytes per second.
        ahead: bytes a connection pays before its first read (about the read size).
    """

    def __init__(
        self, rate: float, *, ahead: int = AHEAD, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._gcra = Gcra(rate)
        self.ahead = ahead
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"LocalThrottle(rate={1 / self._gcra.interval:g})"

    def held_back(self) -> bool:
        """Whether the rate holds the takers back now: bytes ran ahead of it (a taker waits)."""
        return self._gcra.tat - self._gcra.tolerance > self._clock()

    async def take(self, n: int) -> None:
        delay = self._gcra.charge(n, self._clock())
        if delay > 0:
            await self._sleep(delay)

    def refund(self, n: int) -> None:
        self._gcra.refund(n)


class BatchedThrottle:
    """Tokens from a shared limiter, taken ``batch`` bytes at a time (distributed mode: Redis).

    ``reserve(n)`` takes ``n`` tokens from the shared limiter and returns how
    many seconds to wait before using them.  Bytes are taken from the batch
    in hand; a taker that finds it short reserves what it lacks, at least a
    batch, and waits as told, by itself: takers are not queued behind one
    another's waits (a queue would make the takers of one worker move in
    convoys, their reads lumped into bursts seconds apart).  What is left of
    a batch is in hand at once, so a process runs ahead of the shared
    schedule by at most about a batch; what is left when nobody takes any
    more is lost, at most one batch.

    Args:
        reserve: takes tokens from the shared limiter (``Store.take_rate``).
        batch: bytes to reserve at a time (``batch_for``).
        ahead: bytes a connection pays before its first read (about the read size).
    """

    def __init__(
        self,
        reserve: Callable[[int], Awaitable[float]],
        *,
        batch: int,
        ahead: int = AHEAD,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._reserve = reserve
        self._batch = batch
        self.ahead = ahead
        self._clock = clock
        self._sleep = sleep
        self._balance = 0  # tokens in hand
        self._waits_until = -math.inf  # when the limiter's last wait ends

    def held_back(self) -> bool:
        """Whether the limiter holds the takers back: it asked for a wait that ended ``HELD_GRACE`` s ago or less."""
        return self._clock() < self._waits_until + HELD_GRACE

    async def take(self, n: int) -> None:
        if self._balance >= n:
            self._balance -= n
            return
        lacking = n - self._balance
        need = max(self._batch, lacking)
        self._balance = need - lacking  # the rest of the batch is in hand for the next takes
        try:
            delay = await self._reserve(need)
        except BaseException:
            self._balance -= need - lacking  # not reserved: the tokens were never had
            self._balance += n - lacking
            raise
        if delay > 0:
            self._waits_until = max(self._waits_until, self._clock() + delay)
            await self._sleep(delay)

    def refund(self, n: int) -> None:
        self._balance += n  # back in hand, for this process's next takes


class TimedThrottle:
    """A ``Throttle`` that adds up how long its takes waited (``waited``, seconds): one range job's share."""

    def __init__(self, inner: LocalThrottle | BatchedThrottle, *, clock: Clock = time.monotonic) -> None:
        self.inner = inner
        self.waited = 0.0
        self._clock = clock

    @property
    def ahead(self) -> int:
        return self.inner.ahead

    def held_back(self) -> bool:
        """Whether the rate limit holds the download back now (the inner throttle's ``held_back``)."""
        return self.inner.held_back()

    def refund(self, n: int) -> None:
        self.inner.refund(n)

    async def take(self, n: int) -> None:
        began = self._clock()
        try:
            await self.inner.take(n)
        finally:
            self.waited += self._clock() - began


def batch_for(rate: float) -> int:
    """Bytes a worker takes from the cluster's limiter at a time: ``BATCH_SECONDS`` worth, within bounds."""
    return max(MIN_BATCH, min(MAX_BATCH, int(rate * BATCH_SECONDS)))


def throttle_for(rate: int, *, ahead: int = AHEAD) -> LocalThrottle | None:
    """The throttle of an embedded download limited to ``rate`` bytes/s (0: none)."""
    return LocalThrottle(rate, ahead=ahead) if rate > 0 else None
