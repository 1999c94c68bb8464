"""A download's ranges in Redis: progress, the ranges in flight, done, failed, their digests and redos.

Also the progress facts ``status`` shows beside them: the latest retry
wait and how much of the file is verified.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from ..plan import Range
from . import keys, scripts
from .access import RedisAccess
from .state import DownloadState
from .status import as_str as _s

__all__ = ["RangeProgress"]


class RangeProgress(RedisAccess):
    """``Store``'s part for each range's progress, digest and bookkeeping."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self._mark_done = redis.register_script(scripts.MARK_DONE)
        self._mark_done_many = redis.register_script(scripts.MARK_DONE_MANY)
        self._set_progress = redis.register_script(scripts.SET_PROGRESS)
        self._owned_hdel = redis.register_script(scripts.OWNED_HDEL)
        self._owned_hdel_many = redis.register_script(scripts.OWNED_HDEL_MANY)

    async def done_ranges(self, download_id: str) -> set[Range]:
        """Ranges finished and fsynced."""
        members = await self._call(self.redis.smembers(keys.download_key(download_id, "done")))
        return {Range.parse(_s(m)) for m in members}

    async def done_count(self, download_id: str) -> int:
        """How many ranges are finished and fsynced."""
        return int(await self._call(self.redis.scard(keys.download_key(download_id, "done"))))

    async def progress(self, download_id: str, rng: Range) -> int:
        """Bytes of ``rng`` known to be on disk (fsynced)."""
        value = await self._call(self.redis.hget(keys.download_key(download_id, "progress"), str(rng)))
        return int(value) if value else 0

    async def progress_of(self, download_id: str, ranges: Sequence[Range]) -> list[int | None]:
        """Bytes of each of ``ranges`` known to be on disk; ``None`` for a range that is done.

        Two commands however many ranges (a multi-range job reads its own at its start).
        """
        if not ranges:
            return []
        members = [str(r) for r in ranges]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.download_key(download_id, "progress"), members)
            pipe.smismember(keys.download_key(download_id, "done"), members)
            values, done = await self._call(pipe.execute())
        return [None if d else (int(v) if v else 0) for v, d in zip(values, done, strict=True)]

    async def set_progress(self, download_id: str, rng: Range, done: int) -> None:
        """Record that the first ``done`` bytes of ``rng`` are fsynced (an absolute count, never added).

        Progress never goes backwards: a range already done keeps its full
        length, and a count below the recorded one is ignored, so a worker
        that lost its lease cannot make the range's progress read low
        (``scripts.SET_PROGRESS``).  ``redo`` and ``forget_ranges`` start a range over.
        """
        k = keys.download_key
        await self._call(
            self._set_progress(keys=[k(download_id, "done"), k(download_id, "progress")], args=[str(rng), str(done)])
        )

    async def start_range(self, download_id: str, rng: Range, worker_id: str) -> None:
        """Note that ``worker_id`` is fetching ``rng``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.download_key(download_id, "inflight"), str(rng), worker_id)
            pipe.sadd(keys.download_key(download_id, "workers"), worker_id)
            await self._call(pipe.execute())

    async def start_ranges(self, download_id: str, ranges: Sequence[Range], worker_id: str) -> None:
        """Note that ``worker_id`` is fetching ``ranges`` (a multi-range job's run: its ranges not done)."""
        if not ranges:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.download_key(download_id, "inflight"), mapping={str(r): worker_id for r in ranges})
            pipe.sadd(keys.download_key(download_id, "workers"), worker_id)
            await self._call(pipe.execute())

    async def stop_ranges(self, download_id: str, ranges: Sequence[Range], worker_id: str) -> None:
        """``stop_range`` for several ranges, in one call."""
        if not ranges:
            return
        key = keys.download_key(download_id, "inflight")
        await self._call(self._owned_hdel_many(keys=[key], args=[worker_id, *(str(r) for r in ranges)]))

    async def stop_range(self, download_id: str, rng: Range, worker_id: str) -> None:
        """Note that ``worker_id`` is no longer fetching ``rng`` (unless another worker has taken it since)."""
        key = keys.download_key(download_id, "inflight")
        await self._call(self._owned_hdel(keys=[key], args=[str(rng), worker_id]))

    async def mark_done(self, download_id: str, rng: Range, digest: str) -> int:
        """Record ``rng`` as finished with its digest; returns how many ranges are done (and tells ``done_channel``)."""
        k = keys.download_key
        parts = ("done", "progress", "digest", "inflight", "failed")
        args = [str(rng), str(rng.length), digest, keys.done_channel(download_id)]
        count = await self._call(self._mark_done(keys=[k(download_id, p) for p in parts], args=args))
        return int(count)

    async def mark_done_many(
        self, download_id: str, done: Sequence[tuple[Range, str]]
    ) -> tuple[int, DownloadState | None]:
        """``mark_done`` for several ranges (range, digest) at once; returns how many are done and the state."""
        k = keys.download_key
        parts = ("done", "progress", "digest", "inflight", "failed")
        args = [keys.done_channel(download_id)]
        for rng, digest in done:
            args += [str(rng), str(rng.length), digest]
        script_keys = [*(k(download_id, p) for p in parts), k(download_id)]
        count, state = await self._call(self._mark_done_many(keys=script_keys, args=args))
        return int(count), (DownloadState(_s(state)) if state else None)

    async def fail_range(self, download_id: str, rng: Range, reason: str) -> None:
        """Record why ``rng`` failed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.download_key(download_id, "failed"), str(rng), reason)
            pipe.hdel(keys.download_key(download_id, "inflight"), str(rng))
            await self._call(pipe.execute())

    async def count_attempt(self, download_id: str, rng: Range, *, progressed: bool) -> int:
        """Count a run of ``rng``'s job: returns the runs in a row without progress (0 after progress)."""
        key = keys.download_key(download_id, "attempts")
        if progressed:
            await self._call(self.redis.hdel(key, str(rng)))
            return 0
        return int(await self._call(self.redis.hincrby(key, str(rng), 1)))

    async def count_handoff(self, download_id: str, rng: Range) -> int:
        """Count a run of ``rng`` asking to hand the range to a fresh connection; returns how often it was asked.

        The count starts over when the download is enqueued again (``reset_for_resume``).
        """
        key = keys.download_key(download_id, "handoffs")
        return int(await self._call(self.redis.hincrby(key, str(rng), 1)))

    async def digests(self, download_id: str) -> dict[Range, str]:
        """The recorded digest of every finished range."""
        data = await self._call(self.redis.hgetall(keys.download_key(download_id, "digest")))
        return {Range.parse(_s(k)): _s(v) for k, v in data.items()}

    async def digests_of(self, download_id: str, ranges: Sequence[Range]) -> list[str | None]:
        """The recorded digest of each of ``ranges``; ``None`` where a range is not done."""
        if not ranges:
            return []
        values = await self._call(self.redis.hmget(keys.download_key(download_id, "digest"), [str(r) for r in ranges]))
        return [_s(v) if v is not None else None for v in values]

    async def redo(self, download_id: str, rng: Range) -> int:
        """Forget that ``rng`` was done so it is fetched again; returns how often that happened."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.download_key(download_id, "done"), str(rng))
            pipe.hdel(keys.download_key(download_id, "progress"), str(rng))
            pipe.hdel(keys.download_key(download_id, "digest"), str(rng))
            pipe.hincrby(keys.download_key(download_id, "redo"), str(rng), 1)
            result = await self._call(pipe.execute())
        return int(result[-1])

    async def forget_ranges(self, download_id: str) -> None:
        """Forget every finished range, its progress and digest: the file starts over."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for part in ("done", "progress", "digest", "redo"):
                pipe.delete(keys.download_key(download_id, part))
            pipe.hdel(keys.download_key(download_id), "verified")
            await self._call(pipe.execute())

    async def note_retry(self, download_id: str, reason: str, at: float) -> None:
        """Record the download's latest retry wait: why, and when (unix time) it ends (shown by ``status``)."""
        fields = {"retry_reason": reason, "retry_at": str(at)}
        await self._call(self.redis.hset(keys.download_key(download_id), mapping=fields))

    async def set_verified(self, download_id: str, nbytes: int) -> None:
        """Record that the first ``nbytes`` of the file are verified (shown by ``status``)."""
        await self._call(self.redis.hset(keys.download_key(download_id), "verified", str(nbytes)))
