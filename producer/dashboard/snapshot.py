"""One picture of the cluster, read from Redis: what the dashboard and its metrics show.

``read_snapshot`` takes the downloads' status records from
``producer.monitor.statuses`` (the records ``rangefetch status --json``
prints, URLs redacted and error text scrubbed), the live workers from
``Store.workers``, and adds what the command line does not show: each
download's piece map and the connection slots in use per server host.

A piece map has one letter per range, in file order (``PIECE_STATES``):
queued, in flight, done, verified (done and inside the prefix the early
verifier or the finalizer has checked), failed.  Which worker holds a
range in flight comes from the download's ``inflight`` hash.  Request
headers are never read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from rangefetch import QueueError, plan_ranges
from rangefetch.distributed.keys import download_key, sem_host
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.status import as_str
from rangefetch.distributed.store import Store

from ..monitor import statuses, worker_record

__all__ = ["PIECE_STATES", "Pieces", "piece_map", "read_snapshot"]

# One letter per range state, as the page and the metrics name them.
PIECE_STATES = {"q": "queued", "i": "in_flight", "d": "done", "v": "verified", "f": "failed"}


@dataclass(frozen=True, slots=True)
class Pieces:
    """What Redis holds about a download's ranges (range text ``"start-end"`` -> value)."""

    done: frozenset[str]
    progress: dict[str, int]
    inflight: dict[str, str]
    failed: frozenset[str]


def piece_map(record: dict[str, Any], pieces: Pieces) -> dict[str, Any]:
    """The piece map of one download (pure): ``cells`` (one letter a range), holders and progress.

    ``holders`` maps a cell's index to the worker fetching it; ``partial``
    maps a cell's index to the fraction of an unfinished range already on disk.
    """
    size, chunk = record["totalLength"], record["pieceLength"]
    ranges = plan_ranges(size, chunk) if size and chunk else []
    verified = record["verifiedLength"]
    complete = record["state"] == DownloadState.COMPLETE.value
    cells: list[str] = []
    holders: dict[str, str] = {}
    partial: dict[str, float] = {}
    for i, rng in enumerate(ranges):
        name = str(rng)
        if name in pieces.done:
            cells.append("v" if complete or rng.end < verified else "d")
        elif name in pieces.inflight:
            cells.append("i")
            holders[str(i)] = pieces.inflight[name]
        elif name in pieces.failed:
            cells.append("f")
        else:
            cells.append("q")
        got = pieces.progress.get(name, 0)
        if cells[-1] in "iqf" and got:
            partial[str(i)] = round(min(1.0, got / rng.length), 3)
    counts = {state: 0 for state in PIECE_STATES.values()}
    for cell in cells:
        counts[PIECE_STATES[cell]] += 1
    return {"cells": "".join(cells), "holders": holders, "partial": partial, "counts": counts}


async def read_pieces(store: Store, download_id: str) -> Pieces:
    """Read a download's done, progress, in-flight and failed ranges in one round trip."""
    k = download_key
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.smembers(k(download_id, "done"))
        pipe.hgetall(k(download_id, "progress"))
        pipe.hgetall(k(download_id, "inflight"))
        pipe.hkeys(k(download_id, "failed"))
        done, progress, inflight, failed = await _execute(pipe)
    return Pieces(
        done=frozenset(as_str(m) for m in done),
        progress={as_str(r): int(v) for r, v in progress.items()},
        inflight={as_str(r): as_str(w) for r, w in inflight.items()},
        failed=frozenset(as_str(r) for r in failed),
    )


async def host_slots(store: Store, *, limit: int, now: float | None = None) -> list[dict[str, Any]]:
    """The cluster-wide connection slots in use per server host (live leases in ``keys.sem_host``)."""
    now = time.time() if now is None else now
    prefix = sem_host("")
    try:
        names = sorted({as_str(k) async for k in store.redis.scan_iter(match=sem_host("*"), count=500)})
    except RedisError as exc:
        raise QueueError(f"Redis error: {exc}") from exc
    if not names:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcount(name, now, "+inf")  # a slot's score is when its lease lapses
        used = await _execute(pipe)
    return [{"host": n[len(prefix) :], "inUse": int(u), "limit": limit} for n, u in zip(names, used, strict=True)]


async def read_snapshot(store: Store, *, slot_limit: int, now: float | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as one JSON-ready dict.

    ``downloads``: the status records (oldest first), each with its ``pieces``;
    ``workers``: ``worker_record``s; ``slots``: per host in use and limit.

    Raises:
        QueueError: Redis failed.
    """
    now = time.time() if now is None else now
    downloads = []
    for record in await statuses(store, now=now):
        record["pieces"] = piece_map(record, await read_pieces(store, record["gid"]))
        downloads.append(record)
    workers = [worker_record(w, now=now) for w in await store.workers()]
    return {
        "time": now,
        "downloads": downloads,
        "workers": workers,
        "slots": await host_slots(store, limit=slot_limit, now=now),
    }


async def _execute(pipe: Any) -> Any:
    try:
        return await pipe.execute()
    except RedisError as exc:
        raise QueueError(f"Redis error: {exc}") from exc
