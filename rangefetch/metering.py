"""Paying for reads under a rate limit: a response's account (``Meter``) and its read size (``reads_of``).

How the rate itself is kept, and why a read is paid for before it is made,
is in ``ratelimit.py``; ``fetch.py`` meters each response it reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from .lowspeed import SpeedWatch
from .ratelimit import Throttle

__all__ = ["Meter", "reads_of"]


class Meter:
    """One response's account with the rate limit: each read is paid for before it is made.

    ``top_up`` pays for the next read: as much as the last read brought (the
    first: ``throttle.ahead``), no more than is left of the response.  So a
    fast server's full reads are paid for before they are made, and a slow
    one's small reads pay little up front and are not held back below the
    rate.  ``paid`` counts a chunk read (a read larger than paid for is paid
    at the next top-up) and tops up again; ``close`` gives back what was paid
    and not read.  The waits stop the low-speed rule's clock: they are ours,
    not the server's, and a rate below ``speed_limit`` times the connections
    must not make a healthy connection look too slow.
    """

    __slots__ = ("_credit", "_next", "_throttle")

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle
        self._credit = 0  # bytes paid for and not read yet; below 0: read and not paid for
        self._next = throttle.ahead  # what the next read is expected to bring

    async def top_up(self, watch: SpeedWatch | None, left: int | None) -> None:
        """Pay for the next read (``watch``: the request's low-speed rule, ``None`` before the request)."""
        want = self._next if left is None else min(self._next, left)
        if want > self._credit:
            n, self._credit = want - self._credit, want
            if watch is not None:
                watch.pause()
            try:
                await self._throttle.take(n)
            finally:
                if watch is not None:
                    watch.resume()

    async def paid(self, n: int, watch: SpeedWatch, left: int | None) -> None:
        self._credit -= n
        self._next = n
        await self.top_up(watch, left)

    def close(self) -> None:
        if self._credit:
            self._throttle.refund(self._credit)


@contextlib.asynccontextmanager
async def reads_of(response: httpx.Response, throttle: Throttle | None) -> AsyncIterator[None]:
    """Under a rate limit, the connection's reads for this response are no larger than a read's payment.

    Each read is paid for before it is made (``Meter``); a socket read
    larger than that runs ahead of the rate (16 connections of 256 KiB reads
    hold 4 MiB, four seconds at 1 MiB/s).  Only our own network streams
    (the fast path) can be told; the size goes back when the response ends,
    as the connection may serve an unlimited download next.
    """
    stream = response.extensions.get("network_stream")
    limit = getattr(stream, "limit_reads", None)
    if throttle is None or limit is None:
        yield
        return
    before = limit(throttle.ahead)
    try:
        yield
    finally:
        limit(before)
