"""The low-speed rule: on one request (``watch_speed``), and over a whole download (``AllSlow``).

The rule on one connection (``SpeedWatch``, in ``fetch``'s requests) closes a slow connection
and re-opens its range on a fresh one, which saves a download from one bad
connection or one slow path.  When the server is slow to everyone, the
fresh connections trickle too, and each range would spend its whole retry
budget (``max_tries`` trips of ``speed_time`` each) before the download
failed: minutes.  ``AllSlow`` ends it sooner: once every live connection
has tripped the rule twice, on average, since the download last brought a
window's worth of bytes (``speed_limit x speed_time``, all connections
together), the download fails with one line, about ``2 x speed_time``
after the trickle began.  curl and aria2c give up at the first trip; the
second is the fresh connection's chance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from .display import format_bytes
from .errors import RetriesExhaustedError, TooSlowError, TransientError
from .plan import Range
from .settings import LowSpeed

__all__ = ["AllSlow", "SpeedWatch", "moved_on", "watch_speed"]

TRIPS_PER_CONNECTION = 2


class AllSlow:
    """Counts the download's low-speed trips against the bytes it brings; too many trips in a row end it."""

    __slots__ = ("_live", "_rule", "_since", "_trips", "_url")

    def __init__(self, rule: LowSpeed, live: Callable[[], int], *, url: str) -> None:
        self._rule, self._live, self._url = rule, live, url
        self._since = 0  # bytes since the trips were last forgiven
        self._trips = 0

    def arrived(self, n: int) -> None:
        """Count ``n`` bytes of the download; a window's worth forgives the trips so far."""
        if n > 0:
            self._since += n
            if self._since >= self._rule.window:
                self._since = self._trips = 0

    def failed(self, exc: TransientError) -> None:
        """Note a failed try; raise when the trips show that no connection gets anywhere.

        Raises:
            RetriesExhaustedError: every live connection tripped the rule twice
                without the download bringing a window's worth in between.
        """
        if not isinstance(exc, TooSlowError) or not self._rule.limit:
            return
        self._trips += 1
        if self._trips >= TRIPS_PER_CONNECTION * max(1, self._live()):
            rule = self._rule
            raise RetriesExhaustedError(
                f"gave up: every connection stayed below {format_bytes(rule.limit)}/s for {rule.time:g} s,"
                f" fresh ones too; --speed-limit sets the low-speed rule, 0 turns it off",
                url=self._url,
            ) from exc


def moved_on(exc: TransientError, gained: int, rule: LowSpeed) -> bool:
    """Whether a try that failed with ``exc`` after ``gained`` bytes made progress (the retry count starts over).

    Any byte counts, except on a try the low-speed rule ended: that one must
    have brought a whole window's worth first, or a trickle that sends a few
    bytes per try would start the count over forever and never give up.
    """
    return gained >= (rule.window if isinstance(exc, TooSlowError) else 1)


class SpeedWatch:
    """The low-speed rule on one request: a deadline ``rule.time`` seconds ahead, moved on per window's worth.

    Timer-based, since a trickle brings almost no chunks to check the speed
    on: ``scope`` (an ``asyncio.timeout``) cancels the request when fewer than
    ``rule.window`` bytes arrived within ``rule.time`` seconds of the request
    or of the last full window.  The hot path only adds and compares.
    """

    __slots__ = ("_got", "_left", "_loop", "_need", "_scope", "_time")

    def __init__(self, rule: LowSpeed, scope: asyncio.Timeout) -> None:
        self._loop = asyncio.get_running_loop()
        self._scope, self._time, self._got, self._left = scope, rule.time, 0, 0.0
        self._need = rule.window if rule.limit else -1  # -1: the rule is off
        if self._need >= 0:
            scope.reschedule(self._loop.time() + rule.time)

    def arrived(self, n: int) -> None:
        """Count ``n`` bytes off the wire; a full window moves the deadline on."""
        self._got += n
        if self._got >= self._need >= 0:
            self._got = 0
            self._scope.reschedule(self._loop.time() + self._time)

    def pause(self) -> None:
        """Stop the clock: the time until ``resume`` is ours (the rate limit), not the server's."""
        when = self._scope.when()
        if self._need >= 0 and when is not None:
            self._left = when - self._loop.time()
            self._scope.reschedule(None)

    def resume(self) -> None:
        """Start the clock again where ``pause`` stopped it."""
        if self._need >= 0 and self._scope.when() is None:
            self._scope.reschedule(self._loop.time() + self._left)


@contextlib.asynccontextmanager
async def watch_speed(rule: LowSpeed, *, url: str, rng: Range | None) -> AsyncIterator[SpeedWatch]:
    """Apply ``rule`` to the block (a request): too slow, it is cancelled and ``TooSlowError`` raised.

    Put it outside the response's own ``async with``: the response is closed
    first, which drops its connection (httpcore keeps a connection only
    after a complete response), so the retry opens a fresh one.
    """
    try:
        async with asyncio.timeout(None) as scope:
            yield SpeedWatch(rule, scope)
    except TimeoutError as exc:
        if not scope.expired():
            raise
        where = f" (range {rng})" if rng is not None else ""
        raise TooSlowError(
            f"below {format_bytes(rule.limit)}/s for {rule.time:g} s{where}", url=url, range=rng
        ) from exc
