"""Retry timing: exponential backoff with jitter, honouring Retry-After.

The sleep function and the random source are injected so that tests can run
a whole retry sequence without really waiting.  An ``on_retry`` hook hears
of each wait before it begins (how long, and the failure), so a display can
say "retrying in 4 s (HTTP 503)" instead of showing a frozen speed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from .errors import RetriesExhaustedError, TooSlowError, TransientError
from .redact import redact_url
from .settings import DEFAULT_RETRY, RetryPolicy

__all__ = ["Backoff", "OnRetry", "Sleep"]

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[float, TransientError], Awaitable[None]]
"""Called with the delay in seconds and the failure, before each wait."""


class Backoff:
    """Counts consecutive failed tries and waits between them.

    ``reset()`` after a try that made progress: the budget is for failures in
    a row, so a long range on a flaky link is not abandoned while it advances.
    ``on_retry`` is awaited with the delay and the failure before each wait.
    """

    def __init__(
        self,
        policy: RetryPolicy = DEFAULT_RETRY,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.policy = policy
        self.tries = 0
        self._sleep = sleep
        self._rand = rand
        self._on_retry = on_retry

    def reset(self) -> None:
        """Forget earlier failures."""
        self.tries = 0

    def delay(self, exc: TransientError) -> float:
        """Seconds to wait after the current failure (``tries`` failures so far)."""
        policy = self.policy
        if exc.retry_after is not None:
            return min(exc.retry_after, policy.retry_after_max)
        base: float = min(policy.backoff_max, policy.backoff * 2.0 ** max(self.tries - 1, 0))
        return base * (1 - policy.jitter * self._rand())

    async def wait(self, exc: TransientError) -> None:
        """Record the failure ``exc`` and sleep before the next try.

        Raises:
            RetriesExhaustedError: ``max_tries`` tries in a row have failed.
        """
        self.tries += 1
        if self.tries >= self.policy.max_tries:
            hint = "; --speed-limit sets the low-speed rule, 0 turns it off" if isinstance(exc, TooSlowError) else ""
            raise RetriesExhaustedError(
                f"gave up after {self.tries} tries: {exc}{hint}", url=exc.url, range=exc.range
            ) from exc
        delay = self.delay(exc)
        log.info(
            "retrying %s in %.1fs (try %d of %d): %s",
            redact_url(exc.url or "") or "request",
            delay,
            self.tries + 1,
            self.policy.max_tries,
            exc,
        )
        if self._on_retry is not None:
            await self._on_retry(delay, exc)
        await self._sleep(delay)
