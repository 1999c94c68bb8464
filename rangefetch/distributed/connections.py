"""Connecting to Redis from the one ``redis_url`` setting, and riding out its outages.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs are accepted, with a
password in the URL.  How a process treats its Redis depends on whether it
has reached it yet; a ``RedisLink`` keeps that fact for one process:

* **First contact fails fast.**  Until a first PING has been answered
  (``RedisLink.open``), nothing is retried: a refused connection, an
  unknown host, a wrong or missing password is a configuration error far
  more often than an outage, and whoever started the command (or the
  worker) gets one line within seconds, ``QueueError`` naming the redacted
  URL and the cause.  arq's own connection loop (``create_pool``, which
  logs a warning per attempt) is told not to retry at all.
* **Once reached, outages are ridden out.**  Every command, pipeline and
  subscription retries connection errors with backoff as long as Redis
  has been away for less than the link's ``outage`` budget:
  ``PATIENT_OUTAGE`` for workers, ``wait``, ``get --redis`` and
  ``status --watch``, ``IMPATIENT_OUTAGE`` for commands that answer at
  once.  The budget is time, not a count of attempts: redis-py retries the
  TCP connect inside every retry of a command, so counts multiply (40
  command retries of 40 connect retries each were ~14 minutes, not the
  minute they were meant to be).
* **Said once.**  However many connections and attempts see it, the link
  logs one line when Redis is lost and one when it is back.  A single
  failure is not reported: it is usually one stale connection, which the
  retry's reconnect repairs.
* **Authentication errors are final**, at first contact or later:
  retrying a wrong password cannot help.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import QueueError, UsageError, causes
from ..redact import redact_url
from ..settings import Settings

__all__ = ["IMPATIENT_OUTAGE", "PATIENT_OUTAGE", "RedisLink", "open_redis", "redis_settings"]

log = logging.getLogger(__name__)

PATIENT_OUTAGE = 60.0  # seconds a reached Redis may be away before commands give up (workers, wait, get)
IMPATIENT_OUTAGE = 2.0  # the same for commands that answer at once (enqueue, status, cancel, workers)
CONNECT_TIMEOUT = 3  # seconds for one TCP (and TLS) connect
FIRST_CONTACT_TIMEOUT = 6.0  # connect, AUTH and PING at first contact, against a server that accepts and never answers
BACKOFF_BASE, BACKOFF_CAP = 0.1, 2.0  # seconds: 0.2, 0.4, 0.8, 1.6, then every 2 s

# What a reached link retries.  OSError covers what redis-py raises before it
# wraps errors (a refused connect inside its connect loop) and TimeoutError.
RETRIED: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# Connection errors to redis-py, but no retry can mend them.
FINAL: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError)

T = TypeVar("T")
_ERRNO = re.compile(r"Error (-?\d+) connecting to ")


class RedisLink:
    """One process's view of its Redis: reached yet, away since when; says each change once.

    Args:
        url: the Redis URL, shown redacted in messages.
        outage: seconds Redis may be away, once reached, before commands give up.
        clock: a monotonic clock (tests inject their own).
    """

    def __init__(self, url: str, *, outage: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = redact_url(url)
        self.outage = outage
        self.clock = clock
        self.reached = False  # a first PING was answered
        self.has_password = bool(_password(url))
        self.away_since: float | None = None
        self.last_error: BaseException | None = None
        self._said_lost = False

    def __repr__(self) -> str:
        state = "unreached" if not self.reached else "up" if self.away_since is None else "away"
        return f"RedisLink({self.where}, {state}, outage={self.outage})"

    def ok(self) -> None:
        """A call succeeded (a command, or a connect that had failed)."""
        if self.away_since is None:
            return
        self.away_since = None
        self.last_error = None
        if self._said_lost:
            self._said_lost = False
            # As loud as the line that said it was lost, so whoever saw that one sees this one.
            log.warning("Redis at %s is back", self.where)

    def failed(self, error: BaseException, *, in_a_row: int = 2) -> None:
        """A call failed with ``error``, the ``in_a_row``-th failure of one call.

        From the second failure of one call on, a reached link logs that Redis
        is lost, once until it is back.  Redis loading its data, or refusing
        our credentials, is not lost: the first is retried quietly, the second
        is final and reported by whoever called.
        """
        if self.away_since is None:
            self.away_since = self.clock()
        self.last_error = error
        if (
            self.reached
            and not self._said_lost
            and in_a_row >= 2
            and not isinstance(error, (BusyLoadingError, *FINAL))
        ):
            self._said_lost = True
            log.warning("lost Redis at %s (%s); retrying until it answers", self.where, self.cause(error))

    def gives_up(self, error: BaseException) -> bool:
        """Whether a call that just failed with ``error`` should raise it rather than retry."""
        if isinstance(error, FINAL):
            return True
        if not self.reached and not isinstance(error, BusyLoadingError):
            return True  # first contact: fail fast (a loading Redis is there, just busy)
        return self.away() >= self.outage

    def away(self) -> float:
        """Seconds since Redis went away; 0 while it answers."""
        return 0.0 if self.away_since is None else self.clock() - self.away_since

    def cause(self, error: BaseException) -> str:
        """Why ``error`` happened, in a few words: refused, authentication failed, no password given..."""
        if isinstance(error, AuthenticationError):
            text = str(error)
            if "without any password configured" in text or "no password is set" in text:
                return "a password was given, but this Redis has none set"
            if not self.has_password:
                return "no password given, and this Redis requires one (redis://:PASSWORD@host:port/db)"
            return "authentication failed: wrong password (or user name)"
        if isinstance(error, AuthorizationError):
            return f"not authorized: {_one_line(error)}"
        if isinstance(error, BusyLoadingError):
            return "Redis is still loading its data"
        for exc in causes(error):
            # Not only ConnectionRefusedError: asyncio raises a plain OSError when it tried several addresses.
            if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
                return "connection refused"
            if isinstance(exc, socket.gaierror):
                return f"unknown host ({_one_line(exc)})"
            if isinstance(exc, (TimeoutError, RedisTimeoutError)):
                return "timed out"
        # The OSError may be gone from the chain (re-raised while handling another
        # exception), but redis-py names its errno: "Error 111 connecting to host:port."
        found = _ERRNO.match(str(error))
        if found and int(found[1]) == errno.ECONNREFUSED:
            return "connection refused"
        return _one_line(error)

    async def open(self, rs: RedisSettings, *, queue_name: str) -> ArqRedis:
        """An arq pool on ``rs``, its first PING answered; the link is reached from then on.

        Before the link is reached this takes at most ``FIRST_CONTACT_TIMEOUT``
        seconds and retries nothing; afterwards (a worker starting again) it
        retries within the outage budget.

        Raises:
            QueueError: Redis cannot be reached or refuses us (one line: URL, cause).
        """
        limit = FIRST_CONTACT_TIMEOUT + (self.outage if self.reached else 0.0)
        try:
            async with asyncio.timeout(limit):
                pool = await create_pool(rs, default_queue_name=queue_name)
        except TimeoutError as exc:
            why = self.cause(self.last_error) if self.last_error is not None else f"no answer within {limit:.0f} s"
            self.failed(exc)
            raise QueueError(f"cannot connect to Redis at {self.where}: {why}") from exc
        except (RedisError, OSError) as exc:
            self.failed(exc)
            raise QueueError(f"cannot connect to Redis at {self.where}: {self.cause(exc)}") from exc
        self.reached = True
        self.ok()
        return pool


class _LinkRetry(Retry):
    """redis-py's ``Retry``, asking a ``RedisLink`` whether to go on instead of counting.

    redis-py gives each connection a deep copy of its retry; the copies share
    the link, so every connection of a process tells the same story.
    """

    __slots__ = ("link",)

    def __init__(self, link: RedisLink) -> None:
        super().__init__(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), -1, RETRIED)  # type: ignore[arg-type]
        self.link = link

    def __deepcopy__(self, memo: dict[int, Any]) -> _LinkRetry:
        copy = _LinkRetry(self.link)
        copy._supported_errors = self._supported_errors
        return copy

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        failures = 0  # ExponentialBackoff keeps no state, so unlike redis-py's loop nothing to reset
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                failures += 1
                self.link.failed(error, in_a_row=failures)
                try:
                    await fail(error)
                except self._supported_errors as again:
                    # The callback reconnects (pub/sub does) and Redis is still
                    # away: one more failure of the same call, not the end of it.
                    error = again
                if self.link.gives_up(error):
                    raise error
                await asyncio.sleep(self._backoff.compute(failures))
            else:
                self.link.ok()
                return result


def redis_settings(settings: Settings, *, patient: bool = True, link: RedisLink | None = None) -> RedisSettings:
    """arq ``RedisSettings`` for ``settings.redis_url``, retrying as ``link`` decides.

    Pools made from them report to ``link`` (by default a new one, with the
    patient or impatient outage budget), which fails every call until it has
    been reached through ``RedisLink.open``.

    Raises:
        UsageError: no Redis URL is configured, or it is malformed.
    """
    url = _url(settings)
    try:
        rs = RedisSettings.from_dsn(url)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"invalid Redis URL {redact_url(url)}: use redis://[:password@]host:port/db") from exc
    if link is None:
        link = RedisLink(url, outage=PATIENT_OUTAGE if patient else IMPATIENT_OUTAGE)
    rs.conn_retries = 0  # arq's loop would log a warning per attempt; the link decides instead
    rs.conn_timeout = CONNECT_TIMEOUT
    # Not retry_on_timeout: redis-py appends to retry_on_error for it, on every new connection.
    rs.retry_on_timeout = False
    rs.retry_on_error = list(RETRIED)
    rs.retry = _LinkRetry(link)
    return rs


async def open_redis(settings: Settings, *, patient: bool = False) -> ArqRedis:
    """An arq Redis pool for ``settings.redis_url``: first contact fails fast, then outages are ridden out.

    ``patient`` pools ride out ``PATIENT_OUTAGE`` seconds of outage (commands
    that follow a download for long), others ``IMPATIENT_OUTAGE``.

    Raises:
        UsageError: no or malformed Redis URL.
        QueueError: Redis cannot be reached, or refuses our credentials.
    """
    link = RedisLink(_url(settings), outage=PATIENT_OUTAGE if patient else IMPATIENT_OUTAGE)
    return await link.open(redis_settings(settings, link=link), queue_name=settings.distributed.queue_name)


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise UsageError("no Redis configured: set RANGEFETCH_REDIS_URL or pass --redis URL")
    return settings.redis_url


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
