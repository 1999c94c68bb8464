"""The base of ``Store``'s parts: the Redis client, and the call that turns its failures into ``QueueError``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import QueueError

__all__ = ["RedisAccess"]


class RedisAccess:
    """What every part of ``Store`` (``store.py``) shares: ``redis``, and ``_call`` around its commands.

    Each part registers its own Lua scripts in ``__init__`` and passes
    ``redis`` on (``super().__init__``), so ``Store`` builds them all.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise QueueError(f"Redis error: {exc}") from exc
