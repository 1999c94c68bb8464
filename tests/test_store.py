"""``Store`` methods and the Lua scripts behind them (rangefetch/distributed/store.py and
scripts.py), against fakeredis.

These pin what the leases and the download records promise whoever reads
them concurrently; the real worker processes exercise them in
test_worker_integration.py.
"""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis

from rangefetch.distributed import keys
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.plan import Range

SPEC = DownloadSpec(
    id="d1", url="http://h/f", final_url="http://h/f", size=4000, path="f", chunk_size=1000, ranges=4,
    connections=4, etag='"e"', headers={"Authorization": "Bearer x"}, ca_pem="-----BEGIN CERTIFICATE-----",
)  # fmt: skip
RNG = Range(0, 999)


# -- Store.create ---------------------------------------------------------------------


async def test_create_records_everything_at_once(redis: ArqRedis) -> None:
    store = Store(redis)
    seen: list[DownloadSpec | None] = []
    done = asyncio.Event()

    async def read() -> None:  # another client, reading while the record is made
        while not done.is_set():
            seen.append(await store.spec(SPEC.id))

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    assert await store.create(SPEC)
    done.set()
    await asyncio.wait_for(reader, timeout=5)  # a half record would have raised in store.spec (no "url")
    assert all(s is None or s == SPEC for s in seen)
    assert await store.spec(SPEC.id) == SPEC
    assert await store.state(SPEC.id) is DownloadState.QUEUED
    assert await store.list_ids() == [SPEC.id]


async def test_create_of_a_known_id_touches_nothing(redis: ArqRedis) -> None:
    store = Store(redis)
    assert await store.create(SPEC)
    await store.set_state(SPEC.id, DownloadState.RUNNING)
    fields = {f: getattr(SPEC, f) for f in DownloadSpec.__dataclass_fields__}
    other = DownloadSpec(**{**fields, "size": 1, "headers": {}})
    assert not await store.create(other)
    assert await store.spec(SPEC.id) == SPEC
    assert await store.state(SPEC.id) is DownloadState.RUNNING


# -- range progress ------------------------------------------------------------------------


async def test_progress_never_goes_backwards(redis: ArqRedis) -> None:
    store = Store(redis)
    await store.set_progress("d1", RNG, 600)
    await store.set_progress("d1", RNG, 200)  # a run that lost its lease, reporting late
    assert await store.progress("d1", RNG) == 600
    await store.set_progress("d1", RNG, 800)
    assert await store.progress("d1", RNG) == 800
    await store.mark_done("d1", RNG, "0badcafe")
    await store.set_progress("d1", RNG, 900)
    assert await store.progress("d1", RNG) == RNG.length
    await store.redo("d1", RNG)  # a redo starts it over: only then does it go down
    await store.set_progress("d1", RNG, 100)
    assert await store.progress("d1", RNG) == 100


async def test_stop_range_leaves_a_range_another_worker_took_over(redis: ArqRedis) -> None:
    store = Store(redis)
    inflight = keys.download_key("d1", "inflight")
    await store.start_range("d1", RNG, "w1")
    await store.start_range("d1", RNG, "w2")  # w1's lease lapsed; w2 fetches it now
    await store.stop_range("d1", RNG, "w1")
    assert await redis.hget(inflight, str(RNG)) == b"w2"
    await store.stop_range("d1", RNG, "w2")
    assert not await redis.exists(inflight)


# -- leases ----------------------------------------------------------------------------------


async def test_renewing_a_slot_checks_it_is_still_held(redis: ArqRedis) -> None:
    store = Store(redis)
    limits = {"host": 1, "dl": 4}
    assert await store.acquire_fair("d1:0-9#a", "d1", limits, waiters="w", ttl=0.2, wait_ttl=5)
    assert await store.renew_slots("d1:0-9#a", list(limits), ttl=0.2)
    await asyncio.sleep(0.3)
    # Lapsed: nobody has taken it yet (its member lingers), but renewing must not revive it.
    assert not await store.renew_slots("d1:0-9#a", list(limits), ttl=30)
    assert await store.acquire_fair("d1:0-9#b", "d1", limits, waiters="w", ttl=30, wait_ttl=5)
    assert not await store.renew_slots("d1:0-9#a", list(limits), ttl=30)  # and now it is another run's
    assert await store.renew_slots("d1:0-9#b", list(limits), ttl=30)
    await store.release_slots("d1:0-9#b", ["dl"])
    assert not await store.renew_slots("d1:0-9#b", list(limits), ttl=30)  # all of them, or it is lost
    assert await redis.zscore("host", "d1:0-9#b") is not None  # ... and nothing was extended


async def test_the_finalizer_guard_belongs_to_its_owner(redis: ArqRedis) -> None:
    store = Store(redis)
    guard = keys.download_key("d1", "finalize")
    assert await store.claim_finalizer("d1", "run-a", ttl=0.2)
    assert not await store.claim_finalizer("d1", "run-b", ttl=5)
    assert await store.renew_finalizer("d1", "run-a", ttl=0.2)
    await asyncio.sleep(0.3)  # run-a stalled past its lease; run-b takes over
    assert await store.claim_finalizer("d1", "run-b", ttl=5)
    assert not await store.renew_finalizer("d1", "run-a", ttl=5)
    await store.release_finalizer("d1", "run-a")  # not run-a's to give back any more
    assert await redis.get(guard) == b"run-b"
    await store.release_finalizer("d1", "run-b")
    assert not await redis.exists(guard)
