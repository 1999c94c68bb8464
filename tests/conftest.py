"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
from arq.connections import ArqRedis
from fakeredis import FakeAsyncRedisConnection
from rangeserver import RangeServer
from redis.asyncio import ConnectionPool

# --- range server fixtures (tests/rangeserver.py) ---------------------------


@pytest.fixture(scope="session")
def range_server() -> Iterator[RangeServer]:
    """One live range server for the whole session, stopped at the end."""
    with RangeServer() as srv:
        yield srv


@pytest.fixture
def server(range_server: RangeServer) -> RangeServer:
    """The session range server, with request log and fault counters cleared."""
    range_server.reset()
    return range_server


# --- end of range server fixtures --------------------------------------------


# --- redis fixtures (tests/redisserver.py) -----------------------------------

from redisserver import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session Redis, emptied first (and started again if a test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


# --- end of redis fixtures ----------------------------------------------------


# --- fakeredis -------------------------------------------------------------------


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    """An arq client on a fresh in-memory fakeredis server (modules may define their own ``redis``)."""
    pool = ConnectionPool(connection_class=FakeAsyncRedisConnection, server=fakeredis.FakeServer())
    r = ArqRedis(connection_pool=pool)
    yield r
    await r.aclose()
