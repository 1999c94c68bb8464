"""Distributed state in Redis: downloads, range progress, connection slots, workers.

The producer, the workers and the monitoring commands all go through this
one class, so the layout of the keys (``keys.py``) has one reader and writer.
Multi-key updates that must be atomic run as Lua scripts (``scripts.py``);
the status record is assembled in ``status.py``.

``Store`` is composed of one part per thing it holds, each in its module:
``downloads.py`` (the download's record: spec, headers, CA certificates,
state), ``ranges.py`` (per-range progress, digests, failures, redos),
``leases.py`` (finalizer and verifier guards, connection slots, rate
tokens and throttles), ``workers.py`` (the worker registry).  ``status``,
which reads across them, is here.
"""

from __future__ import annotations

from typing import Any

from . import keys
from .downloads import DownloadRecords, DownloadSpec
from .leases import VERIFIER_STOPPED, Leases
from .ranges import RangeProgress
from .status import build_status
from .workers import WorkerInfo, WorkerRegistry

__all__ = ["VERIFIER_STOPPED", "DownloadSpec", "Store", "WorkerInfo"]


class Store(DownloadRecords, RangeProgress, Leases, WorkerRegistry):
    """Typed access to rangefetch's Redis state.

    Every method translates Redis failures into ``QueueError``.
    """

    # -- status --------------------------------------------------------------

    async def status(self, download_id: str, *, now: float | None = None) -> dict[str, Any] | None:
        """What ``rangefetch status`` shows, with aria2 ``tellStatus`` names where they fit."""
        data = await self.get(download_id)
        if data is None:
            return None
        k = keys.download_key
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(k(download_id, "done"))
            pipe.hvals(k(download_id, "progress"))
            pipe.hlen(k(download_id, "inflight"))
            pipe.hgetall(k(download_id, "failed"))
            pipe.smembers(k(download_id, "workers"))
            done, progress, inflight, failed, workers = await self._call(pipe.execute())
        return build_status(data, done, [int(p) for p in progress], inflight, failed, workers, now=now)
