"""Leases in Redis: the finalizer and verifier guards, connection slots, and rate-limit tokens.

Rate limits (``ratelimit.py``) are GCRA schedules in Redis
(``scripts.GCRA``): a download's ``limit_rate`` and a server host's cap
(``Settings.distributed.per_host_rate``).  ``Store.throttle`` gives a range job its
share: one ``BatchedThrottle`` per download and caps in each process,
shared by its jobs, taking tokens from Redis a batch at a time.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from redis.asyncio import Redis

from ..ratelimit import AHEAD, TOLERANCE, BatchedThrottle, TimedThrottle, batch_for
from ..transport import read_size_for
from . import keys, scripts
from .access import RedisAccess
from .downloads import DownloadSpec
from .status import as_str as _s

__all__ = ["VERIFIER_STOPPED", "Leases"]

VERIFIER_STOPPED = "stopped"  # the verifier lease's value once its holder gave up


class Leases(RedisAccess):
    """``Store``'s part for what is held for a while: guards, slots and rate tokens."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._acquire_fair = redis.register_script(scripts.ACQUIRE_FAIR)
        self._renew = redis.register_script(scripts.RENEW)
        self._owned_set = redis.register_script(scripts.OWNED_SET)
        self._owned_delete = redis.register_script(scripts.OWNED_DELETE)
        self._gcra = redis.register_script(scripts.GCRA)
        # One throttle per download and caps, shared by this process's jobs while any holds it.
        self._throttles: weakref.WeakValueDictionary[tuple[tuple[str, int], ...], BatchedThrottle] = (
            weakref.WeakValueDictionary()
        )

    # -- finalizer and verifier ----------------------------------------------

    async def claim_finalizer(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Take the guard that lets exactly one finalizer run, for ``owner``; ``False`` if it is taken.

        The guard is a lease like the verifier's: it holds its owner's token
        and lapses ``ttl`` seconds after it was last renewed.
        """
        key = keys.download_key(download_id, "finalize")
        return bool(await self._call(self.redis.set(key, owner, nx=True, px=_ms(ttl))))

    async def renew_finalizer(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Extend ``owner``'s finalizer guard; ``False`` if ``owner`` no longer holds it."""
        key = keys.download_key(download_id, "finalize")
        return bool(await self._call(self._owned_set(keys=[key], args=[owner, owner, str(_ms(ttl))])))

    async def release_finalizer(self, download_id: str, owner: str) -> None:
        """Give ``owner``'s finalizer guard back (after re-enqueuing ranges, or at the end)."""
        await self._call(self._owned_delete(keys=[keys.download_key(download_id, "finalize")], args=[owner]))

    async def claim_verifier(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Take the lease of the download's early verifier for ``owner``; ``False`` if it is held (or stopped)."""
        key = keys.download_key(download_id, "verifier")
        return bool(await self._call(self.redis.set(key, owner, nx=True, px=_ms(ttl))))

    async def renew_verifier(self, download_id: str, owner: str, *, ttl: float) -> bool:
        """Extend ``owner``'s verifier lease; ``False`` if ``owner`` no longer holds it."""
        key = keys.download_key(download_id, "verifier")
        return bool(await self._call(self._owned_set(keys=[key], args=[owner, owner, str(_ms(ttl))])))

    async def stop_verifier(self, download_id: str, owner: str, *, ttl: float) -> None:
        """Mark ``owner``'s verifier as given up: for ``ttl`` no new one starts and the finalizer does not wait."""
        key = keys.download_key(download_id, "verifier")
        await self._call(self._owned_set(keys=[key], args=[owner, VERIFIER_STOPPED, str(_ms(ttl))]))

    async def release_verifier(self, download_id: str, owner: str) -> None:
        """Give ``owner``'s verifier lease back."""
        await self._call(self._owned_delete(keys=[keys.download_key(download_id, "verifier")], args=[owner]))

    async def verifier(self, download_id: str) -> str | None:
        """The owner of the download's live early verifier, or ``None``."""
        value = await self._call(self.redis.get(keys.download_key(download_id, "verifier")))
        owner = _s(value) if value is not None else None
        return None if owner == VERIFIER_STOPPED else owner

    # -- connection slots ----------------------------------------------------

    async def acquire_slots(self, token: str, limits: Mapping[str, int], *, ttl: float) -> bool:
        """Take one slot in each semaphore key of ``limits`` (key -> limit), all or none."""
        names = list(limits)
        args = [token, str(ttl), *(str(limits[n]) for n in names)]
        return bool(await self._call(self._acquire(keys=names, args=args)))

    async def acquire_fair(
        self, token: str, owner: str, limits: Mapping[str, int], *, waiters: str, ttl: float, wait_ttl: float
    ) -> bool:
        """Like ``acquire_slots``, with the first key of ``limits`` shared fairly among owners.

        ``token`` must read ``OWNER:...``; ``waiters`` is the zset of owners
        waiting for the first key, forgotten ``wait_ttl`` seconds after they
        last asked (see ``scripts.ACQUIRE_FAIR``).
        """
        names = list(limits)
        if not names:
            raise ValueError("acquire_fair needs at least one semaphore")
        args = [token, str(ttl), owner, str(wait_ttl), *(str(limits[n]) for n in names)]
        script_keys = [names[0], waiters, *names[1:]]
        return bool(await self._call(self._acquire_fair(keys=script_keys, args=args)))

    async def renew_slots(self, token: str, names: list[str], *, ttl: float) -> bool:
        """Extend the lease of ``token`` in each semaphore; ``False`` if one had lapsed (then none is extended)."""
        return bool(await self._call(self._renew(keys=names, args=[token, str(ttl)])))

    async def release_slots(self, token: str, names: list[str]) -> None:
        """Give the slots of ``token`` back."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(name, token)
            await self._call(pipe.execute())

    # -- rate limits ---------------------------------------------------------

    async def take_rate(self, limits: Mapping[str, int], n: int, *, tolerance: float = TOLERANCE) -> float:
        """Take ``n`` bytes from each GCRA schedule in ``limits`` (key -> bytes/s); returns the seconds to wait."""
        names = list(limits)
        args = [str(n), str(tolerance), *(str(limits[k]) for k in names)]
        return float(_s(await self._call(self._gcra(keys=names, args=args))))

    def throttle(self, spec: DownloadSpec, host: str, *, host_rate: int) -> TimedThrottle | None:
        """A range job's share of the rate limits on ``spec`` (its ``limit_rate``, and ``host_rate`` for ``host``).

        ``None`` when neither is set.  The tokens come from one
        ``BatchedThrottle`` per download and limits in this process, shared
        by its jobs; the ``TimedThrottle`` around it tells the job how long
        it waited for them.
        """
        limits = {}
        if spec.limit_rate:
            limits[keys.download_key(spec.id, "rate")] = spec.limit_rate
        if host_rate:
            limits[keys.rate_host(host)] = host_rate
        if not limits:
            return None
        key = tuple(sorted(limits.items()))
        shared = self._throttles.get(key)
        if shared is None:
            rate = min(limits.values())
            # Each read is paid for first: reads sized to the rate, as in embedded mode.
            ahead = read_size_for(AHEAD, spec.connections, rate)
            shared = BatchedThrottle(lambda n: self.take_rate(limits, n), batch=batch_for(rate), ahead=ahead)
            self._throttles[key] = shared
        return TimedThrottle(shared)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
