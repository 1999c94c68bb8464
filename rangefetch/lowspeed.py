"""The low-speed rule over a whole download: when every connection trickles, give up.

The rule on one connection (``fetch._SpeedWatch``) closes a slow connection
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

from collections.abc import Callable

from .display import format_bytes
from .errors import RetriesExhaustedError, TooSlowError, TransientError
from .settings import LowSpeed

__all__ = ["AllSlow"]

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
