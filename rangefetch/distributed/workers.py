"""The worker registry in Redis: ``WorkerInfo``, heartbeats, the live workers."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from . import keys
from .access import RedisAccess
from .status import as_str as _s

__all__ = ["HEARTBEAT_TTL", "WorkerInfo", "WorkerRegistry"]

HEARTBEAT_TTL = 30  # seconds a worker counts as alive after its last heartbeat


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as its heartbeat describes it."""

    id: str
    host: str
    pid: int
    jobs: int
    heartbeat: float
    interface: str | None = None  # the local address it connects from (``--interface``), if set


class WorkerRegistry(RedisAccess):
    """``Store``'s part for the workers: who is alive, announced by heartbeat."""

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Announce that a worker is alive."""
        key = keys.worker_key(info.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in asdict(info).items() if v is not None})
            pipe.expire(key, HEARTBEAT_TTL)
            pipe.zadd(keys.WORKERS, {info.id: info.heartbeat})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", time.time() - HEARTBEAT_TTL)
            await self._call(pipe.execute())

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a worker that is shutting down."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker_key(worker_id))
            pipe.zrem(keys.WORKERS, worker_id)
            await self._call(pipe.execute())

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent, by id."""
        ids = await self._call(self.redis.zrangebyscore(keys.WORKERS, time.time() - HEARTBEAT_TTL, "+inf"))
        found = []
        for worker_id in sorted(_s(i) for i in ids):
            data = await self._call(self.redis.hgetall(keys.worker_key(worker_id)))
            if data:
                d = {_s(k): _s(v) for k, v in data.items()}
                found.append(
                    WorkerInfo(
                        d["id"], d["host"], int(d["pid"]), int(d["jobs"]), float(d["heartbeat"]), d.get("interface")
                    )
                )
        return found
