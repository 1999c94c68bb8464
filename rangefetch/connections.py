"""Connecting to Redis from the one ``redis_url`` setting.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs are accepted, with a
password in the URL.  Commands retry with backoff on connection errors, so a
worker rides out a Redis restart instead of dying with it.
"""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import QueueError, UsageError
from .redact import redact_url
from .settings import Settings

__all__ = ["open_redis", "redis_settings"]

# About a minute of retries (backoff capped at 2 s) before a command gives up.
COMMAND_RETRIES = 40


def redis_settings(settings: Settings, *, patient: bool = True) -> RedisSettings:
    """arq ``RedisSettings`` for ``settings.redis_url``.

    ``patient`` settings ride out a Redis restart (workers); impatient ones
    fail within a few seconds (commands a person is waiting on).

    Raises:
        UsageError: no Redis URL is configured, or it is malformed.
    """
    url = settings.redis_url
    if not url:
        raise UsageError("no Redis configured: set RANGEFETCH_REDIS_URL or pass --redis URL")
    try:
        rs = RedisSettings.from_dsn(url)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"invalid Redis URL {redact_url(url)}: use redis://[:password@]host:port/db") from exc
    rs.conn_retries = 10 if patient else 1
    rs.conn_timeout = 5 if patient else 2
    rs.retry_on_timeout = True
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError, OSError]
    rs.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), COMMAND_RETRIES if patient else 2)
    return rs


async def open_redis(settings: Settings, *, patient: bool = False) -> ArqRedis:
    """An arq Redis pool for ``settings.redis_url`` (impatient unless asked: see ``redis_settings``).

    Raises:
        UsageError: no or malformed Redis URL.
        QueueError: Redis cannot be reached.
    """
    rs = redis_settings(settings, patient=patient)
    try:
        return await create_pool(rs, default_queue_name=settings.queue_name)
    except (RedisError, OSError) as exc:
        raise QueueError(f"cannot connect to Redis at {redact_url(settings.redis_url or '')}: {exc}") from exc
