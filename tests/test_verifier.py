"""The early verifier (worker/verifier.py), CRC-32 range digests and state/done pub/sub, against fakeredis.

Range jobs are called the way arq calls them (``test_worker_unit.fetch``);
the verifier runs as a task of the runtime, as in a worker process.  Every
test waits for outcomes with timeouts (``wait_for``, ``finished``), and the
``make`` fixture stops every verifier and closes every client at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from distributed_helpers import wait_for
from test_worker_unit import (
    CHUNK,
    DATA,
    Origin,
    crc,
    ctx,
    fetch,
    make_runtime,
    part_bytes,
    ranges,
    record,
    sha,
)

import rangefetch.worker.finalize
import rangefetch.worker.jobs
import rangefetch.worker.verifier
from rangefetch.distributed import keys
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.plan import Range
from rangefetch.producer.monitor import follow
from rangefetch.worker.files import RangeDigest, hash_file, hash_prefix, hash_range
from rangefetch.worker.finalize import finalize_job
from rangefetch.worker.runtime import Runtime
from rangefetch.worker.verifier import start_verifier

ID = "dl1"  # the id ``record`` gives its download
LEASE = keys.download_key(ID, "verifier")


class MakeRuntime(Protocol):
    def __call__(self, worker_id: str = "w1", *, verify_early: bool = True, **overrides: Any) -> Runtime: ...


@pytest.fixture
def origin() -> Origin:
    return Origin()


@pytest.fixture
async def make(redis: ArqRedis, tmp_path: Path, origin: Origin) -> AsyncIterator[MakeRuntime]:
    """Runtimes ("workers") sharing one Redis and one download directory; verifiers stopped, clients closed."""
    made: list[Runtime] = []

    def factory(worker_id: str = "w1", *, verify_early: bool = True, **overrides: Any) -> Runtime:
        jobs = {"verify_early": verify_early, **overrides.pop("jobs", {})}
        runtime = make_runtime(redis, tmp_path, origin, jobs=jobs, **overrides)
        runtime.worker_id = worker_id
        made.append(runtime)
        return runtime

    yield factory
    for runtime in made:
        await runtime.stop_verifiers()
        await runtime.client.aclose()


@pytest.fixture
def rt(make: MakeRuntime) -> Runtime:
    """A worker whose range jobs start the early verifier."""
    return make()


@pytest.fixture
def full_passes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the finalizer hashed itself, in full (``worker.finalize.hash_file``)."""
    calls: list[Path] = []
    real = hash_file

    async def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return await real(path, *args, **kwargs)

    monkeypatch.setattr(rangefetch.worker.finalize, "hash_file", counting)
    return calls


@pytest.fixture
def quick_wake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier looks at its download every 50 ms when no range finishes (not 1 s), so stops are seen soon."""
    monkeypatch.setattr(rangefetch.worker.verifier, "WAKE", 0.05)


async def finished(task: asyncio.Task[None], timeout: float = 2.0) -> None:
    done, _ = await asyncio.wait([task], timeout=timeout)
    assert done, "the verifier is still running"


async def run_finalizer(rt: Runtime, download_id: str = ID) -> None:
    await finalize_job(await ctx(rt, keys.finalize_job_id(download_id)), download_id)


async def verified(rt: Runtime) -> int:
    status = await rt.store.status(ID)
    assert status is not None
    return int(status["verifiedLength"])


async def lease_value(redis: ArqRedis) -> bytes | None:
    """The raw value of the verifier lease of ``ID``."""
    return await cast("Awaitable[bytes | None]", redis.get(LEASE))


async def redos(rt: Runtime, rng: Range) -> int:
    """How often ``rng`` was sent back to be fetched again."""
    return int(await cast("Awaitable[bytes | None]", rt.redis.hget(keys.download_key(ID, "redo"), str(rng))) or 0)


async def job_exists(rt: Runtime, job_id: str) -> bool:
    return bool(await rt.redis.exists(job_key_prefix + job_id))


def range_job_id(rng: Range) -> str:
    return keys.range_job_id(ID, rng.start, rng.end)


def corrupt(rt: Runtime, rng: Range) -> None:
    """Flip bytes of ``rng`` in the ``.part`` file: a bad disk, or a stray writer."""
    with open(rt.download_dir / "f.bin.part", "r+b") as f:
        f.seek(rng.start + 5)
        f.write(bytes(b ^ 0xFF for b in DATA[rng.start + 5 : rng.start + 15]))


async def assert_complete(rt: Runtime) -> None:
    data = await rt.store.get(ID)
    assert data is not None and data["state"] == "complete", data
    assert data["sha256"] == sha(DATA)
    final = rt.download_dir / "f.bin"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha(DATA)
    assert not (rt.download_dir / "f.bin.part").exists()


async def fetch_with(fetcher: Runtime, rngs: Sequence[Range]) -> None:
    for rng in rngs:
        await fetch(fetcher, rng)


# -- the verifier finishes the download -----------------------------------------


async def test_verifier_completes_the_download_without_the_finalizer(rt: Runtime, full_passes: list[Path]) -> None:
    spec = await record(rt)
    first, *rest = ranges()
    await fetch(rt, first)
    task = rt.verifiers[spec.id]  # the first finished range started it, in this worker
    assert await rt.store.verifier(spec.id) == rt.worker_id
    await fetch_with(rt, rest)
    await finished(task)
    assert not task.cancelled()
    await assert_complete(rt)
    assert full_passes == []  # the finalizer's steps ran with the verifier's digests
    assert await verified(rt) == len(DATA)
    assert spec.id not in rt.verifiers
    assert not await rt.redis.exists(LEASE)  # given back
    assert not await rt.redis.exists(keys.download_key(spec.id, "finalize"))  # guard released
    # The last range enqueued the finalizer as usual; when it runs, it finds the download complete.
    assert await job_exists(rt, keys.finalize_job_id(spec.id))
    await run_finalizer(rt)
    await assert_complete(rt)
    assert full_passes == []


async def test_verifier_follows_ranges_in_file_order(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = await record(rt)
    r0, r1, r2, *rest = ranges()
    looks: list[list[str | None]] = []
    real = rt.store.digests_of

    async def spy(download_id: str, rngs: Sequence[Range]) -> list[str | None]:
        found = await real(download_id, rngs)
        if rngs and rngs[0] == r1:
            looks.append(found)
        return found

    monkeypatch.setattr(rt.store, "digests_of", spy)
    await fetch(rt, r0)
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _eq(verified(rt), CHUNK), timeout=2)
    await fetch(rt, r2)
    # The verifier has seen r2 finished while r1 is not: it must not move past r1.
    await wait_for(lambda: _true(bool(looks and looks[-1][0] is None and looks[-1][1])), timeout=2)
    assert await verified(rt) == CHUNK
    assert not task.done()
    await fetch(rt, r1)
    await wait_for(lambda: _eq(verified(rt), 3 * CHUNK), timeout=2)
    await fetch_with(rt, rest)
    await finished(task)
    await assert_complete(rt)


async def test_verifier_hears_of_each_finished_range(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished range wakes the waiting verifier at once (``keys.done_channel``), not at its next look."""
    monkeypatch.setattr(rangefetch.worker.verifier, "WAKE", 30.0)
    spec = await record(rt)
    r0, r1, *rest = ranges()
    await fetch(rt, r0)
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _eq(verified(rt), CHUNK), timeout=2)
    await fetch(rt, r1)
    await wait_for(lambda: _eq(verified(rt), 2 * CHUNK), timeout=2)
    await fetch_with(rt, rest)
    await finished(task)
    await assert_complete(rt)


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value


async def test_finalizer_leaves_the_download_to_a_live_verifier(
    rt: Runtime, redis: ArqRedis, full_passes: list[Path]
) -> None:
    spec = await record(rt)
    assert await rt.store.claim_verifier(spec.id, "other-worker", ttl=30)
    await fetch_with(rt, ranges())
    assert rt.verifiers == {}  # the lease is someone else's: no verifier here
    await run_finalizer(rt)
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert (rt.download_dir / "f.bin.part").exists() and not (rt.download_dir / "f.bin").exists()
    assert full_passes == []
    # That verifier gave up: its lease says "stopped", which no longer holds the finalizer back.
    await rt.store.stop_verifier(spec.id, "other-worker", ttl=30)
    assert await lease_value(redis) == b"stopped"
    await run_finalizer(rt)
    await assert_complete(rt)
    assert len(full_passes) == 1  # the finalizer read the file itself


# -- ranges that fail verification ----------------------------------------------


async def test_verifier_redoes_a_corrupt_range(make: MakeRuntime, origin: Origin) -> None:
    fetcher = make("fetcher", verify_early=False)
    rt = make()
    spec = await record(rt)
    await fetch_with(fetcher, ranges())
    bad = ranges()[1]
    corrupt(rt, bad)
    await start_verifier(rt, spec)
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _not_done(rt, bad), timeout=2)
    assert await redos(rt, bad) == 1
    assert await job_exists(rt, range_job_id(bad))  # enqueued again
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert await verified(rt) == CHUNK  # range 0 only
    assert not task.done() and await rt.store.verifier(spec.id) == rt.worker_id  # waits for the redo
    requests = len(origin.ranges)
    await fetch(rt, bad)  # the re-enqueued job
    assert origin.ranges[requests:] == [f"bytes={bad.start}-{bad.end}"]  # fetched again from its start
    await finished(task)
    await assert_complete(rt)
    assert await redos(rt, bad) == 1
    assert await verified(rt) == len(DATA)


async def _not_done(rt: Runtime, rng: Range) -> bool:
    return rng not in await rt.store.done_ranges(ID)


async def test_verifier_redoes_a_range_corrupted_before_it_reads_it(rt: Runtime, full_passes: list[Path]) -> None:
    """The range jobs start the verifier themselves; a finished range goes bad before the verifier reaches it."""
    spec = await record(rt)
    r0, r1, r2, *rest = ranges()
    await fetch(rt, r2)  # starts the verifier, which waits for range 0
    task = rt.verifiers[spec.id]
    corrupt(rt, r2)  # after its job recorded its digest
    await fetch_with(rt, [r0, r1])
    await wait_for(lambda: _not_done(rt, r2), timeout=2)
    assert await redos(rt, r2) == 1
    assert await job_exists(rt, range_job_id(r2))
    assert await verified(rt) == 2 * CHUNK
    await fetch(rt, r2)
    await fetch_with(rt, rest)
    await finished(task)
    await assert_complete(rt)
    assert full_passes == []


async def test_verifier_redos_are_bounded(make: MakeRuntime) -> None:
    fetcher = make("fetcher", verify_early=False)
    rt = make(max_verify_retries=0)
    spec = await record(rt)
    await fetch_with(fetcher, ranges())
    bad = ranges()[2]
    corrupt(rt, bad)
    await start_verifier(rt, spec)
    await finished(rt.verifiers[spec.id])
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed"
    assert "failed verification" in data["error"] and str(bad) in data["error"]
    assert not (rt.download_dir / "f.bin").exists()
    assert not await job_exists(rt, range_job_id(bad))  # not fetched again
    # It gave up after an error: the lease says so for one lease, and holds nobody back.
    assert await lease_value(rt.redis) == b"stopped"
    assert await rt.store.verifier(spec.id) is None
    await run_finalizer(rt)  # a finalizer that still runs does nothing
    assert await rt.store.state(spec.id) is DownloadState.FAILED
    assert not (rt.download_dir / "f.bin").exists()


# -- checksums -------------------------------------------------------------------


async def test_verifier_checks_the_checksum(rt: Runtime, full_passes: list[Path]) -> None:
    spec = await record(rt, checksum=f"md5={hashlib.md5(DATA).hexdigest()}")
    await fetch_with(rt, ranges())
    await finished(rt.verifiers[spec.id])
    await assert_complete(rt)
    assert full_passes == []  # the verifier computed the md5 as well


async def test_verifier_fails_a_wrong_checksum_and_keeps_the_part_file(rt: Runtime, full_passes: list[Path]) -> None:
    spec = await record(rt, checksum="md5=" + "0" * 32)
    await fetch_with(rt, ranges())
    await finished(rt.verifiers[spec.id])
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed" and "md5 mismatch" in data["error"]
    assert "kept the downloaded f.bin.part" in data["error"]
    assert sha(part_bytes(rt)) == sha(DATA) and not (rt.download_dir / "f.bin").exists()
    assert await rt.store.done_count(spec.id) == spec.ranges
    assert full_passes == []
    assert await lease_value(rt.redis) == b"stopped"


# -- stopping early ----------------------------------------------------------------


async def test_a_cancelled_download_stops_its_verifier(rt: Runtime, quick_wake: None) -> None:
    spec = await record(rt)
    await fetch(rt, ranges()[0])
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _eq(verified(rt), CHUNK), timeout=2)  # now it waits for range 1
    await rt.store.set_state(spec.id, DownloadState.CANCELLED)
    await finished(task)
    assert not task.cancelled()  # it noticed by itself
    assert not await rt.redis.exists(LEASE)
    assert not await job_exists(rt, keys.finalize_job_id(spec.id))
    assert not (rt.download_dir / "f.bin").exists()
    assert await rt.store.state(spec.id) is DownloadState.CANCELLED


async def test_a_verifier_that_lost_its_lease_stops_and_leaves_it(
    make: MakeRuntime, redis: ArqRedis, quick_wake: None
) -> None:
    rt = make(jobs={"lease": 0.4})  # renewed every 0.1 s
    spec = await record(rt)
    await fetch(rt, ranges()[0])
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _eq(verified(rt), CHUNK), timeout=2)
    await redis.set(LEASE, "other-worker", px=30_000)  # it lapsed, and another worker took it
    await finished(task)
    assert await lease_value(redis) == b"other-worker"  # not released: it is not ours
    await fetch_with(rt, ranges()[1:])
    assert rt.verifiers == {}  # nor taken again here
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert not (rt.download_dir / "f.bin").exists()


async def test_stopping_the_worker_gives_the_lease_back(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch(rt, ranges()[0])
    task = rt.verifiers[spec.id]
    await wait_for(lambda: _eq(verified(rt), CHUNK), timeout=2)  # waits for range 1
    await asyncio.wait_for(rt.stop_verifiers(), timeout=2)
    assert task.cancelled()
    assert rt.verifiers == {}
    assert not await rt.redis.exists(LEASE)
    assert not await job_exists(rt, keys.finalize_job_id(spec.id))  # ranges are missing: no finalizer yet
    assert await rt.store.state(spec.id) is DownloadState.RUNNING


async def test_stopping_the_worker_with_all_ranges_done_hands_over_to_the_finalizer(
    make: MakeRuntime, full_passes: list[Path]
) -> None:
    rt = make(jobs={"lease": 30.0})  # so the verifier waits for the guard until the worker stops (FINISH_WAIT leases)
    spec = await record(rt)
    assert await rt.store.claim_finalizer(spec.id, "elsewhere", ttl=30)  # a finalizer elsewhere holds the guard
    await fetch_with(rt, ranges())
    task = rt.verifiers[spec.id]
    await run_finalizer(rt)  # arq ran the finalizer the last range enqueued: it left the download to the verifier
    await rt.redis.delete(job_key_prefix + keys.finalize_job_id(spec.id))  # as arq does when a job ends
    assert full_passes == []
    await wait_for(lambda: _eq(verified(rt), len(DATA)), timeout=2)  # now it waits for the guard
    assert not task.done()
    await asyncio.wait_for(rt.stop_verifiers(), timeout=2)
    assert task.cancelled()
    assert not await rt.redis.exists(LEASE)
    assert await job_exists(rt, keys.finalize_job_id(spec.id))  # handed over
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    await rt.store.release_finalizer(spec.id, "elsewhere")
    await run_finalizer(rt)
    await assert_complete(rt)
    assert len(full_passes) == 1


async def test_a_verifier_waits_for_another_finalizers_guard_only_so_long(
    make: MakeRuntime, full_passes: list[Path]
) -> None:
    rt = make(jobs={"lease": 0.4})  # it waits FINISH_WAIT leases: 0.8 s
    spec = await record(rt)
    assert await rt.store.claim_finalizer(spec.id, "elsewhere", ttl=600)  # a finalizer that keeps its guard
    await fetch_with(rt, ranges())
    task = rt.verifiers[spec.id]
    await run_finalizer(rt)  # the finalizer the last range enqueued left the download to the verifier
    await rt.redis.delete(job_key_prefix + keys.finalize_job_id(spec.id))  # as arq does when a job ends
    await finished(task, timeout=10)  # it gave up waiting, by itself
    assert not task.cancelled()
    assert not await rt.redis.exists(LEASE)  # given back: the finalizer no longer leaves the download to it
    assert await job_exists(rt, keys.finalize_job_id(spec.id))  # handed over
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    await rt.store.release_finalizer(spec.id, "elsewhere")
    await run_finalizer(rt)
    await assert_complete(rt)
    assert len(full_passes) == 1


# -- two workers -----------------------------------------------------------------------


async def test_one_verifier_per_download_across_workers(make: MakeRuntime, full_passes: list[Path]) -> None:
    w1, w2 = make("w1"), make("w2")
    spec = await record(w1)
    first, *rest = ranges()
    await fetch(w1, first)
    task = w1.verifiers[spec.id]
    assert not await w2.store.claim_verifier(spec.id, "w2", ttl=2)
    await start_verifier(w2, spec)
    assert w2.verifiers == {}
    for n, rng in enumerate(rest):
        await fetch(w2 if n % 2 == 0 else w1, rng)
        assert w2.verifiers == {} and list(w1.verifiers) == [spec.id]
        assert await w1.store.verifier(spec.id) == "w1"
    await run_finalizer(w2)  # w2 runs the finalizer job: w1's verifier is live, so it leaves it
    await finished(task)
    await assert_complete(w1)
    assert full_passes == []
    assert not await w1.redis.exists(LEASE)


# -- range digests ------------------------------------------------------------------------


def test_range_digest_is_crc32_hex() -> None:
    digest = RangeDigest()
    assert digest.hexdigest() == "00000000"
    for i in range(0, len(DATA), 777):
        digest.update(memoryview(DATA)[i : i + 777])
    assert digest.hexdigest() == f"{zlib.crc32(DATA):08x}" == crc(DATA)
    assert len(RangeDigest(1).hexdigest()) == 8


async def test_hash_prefix_digests_the_start_of_a_range(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(DATA)
    rng = ranges()[2]
    assert (await hash_prefix(path, rng, 1234)).hexdigest() == crc(DATA[rng.start : rng.start + 1234])
    assert (await hash_prefix(path, rng, 0)).hexdigest() == crc(b"")


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> list[Range]:
    """Ranges whose digest a range job read back from the file (``worker.jobs.hash_range``)."""
    calls: list[Range] = []
    real = hash_range

    async def counting(path: Path, rng: Range) -> str:
        calls.append(rng)
        return await real(path, rng)

    monkeypatch.setattr(rangefetch.worker.jobs, "hash_range", counting)
    return calls


async def test_range_jobs_record_the_crc_of_what_they_wrote(make: MakeRuntime, read_backs: list[Range]) -> None:
    rt = make(verify_early=False)
    spec = await record(rt)
    await fetch_with(rt, ranges())
    assert await rt.store.digests(spec.id) == {r: crc(DATA[r.start : r.end + 1]) for r in ranges()}
    assert read_backs == []  # taken from the bytes as written


async def test_a_range_continued_after_its_budget_records_the_crc_of_the_whole_range(
    make: MakeRuntime, origin: Origin, read_backs: list[Range]
) -> None:
    rt = make(verify_early=False, jobs={"budget": 0.3})
    spec = await record(rt)
    rng = ranges()[1]
    origin.delay = 0.1  # 1000 bytes every 100 ms: the range takes 1 s
    with pytest.raises(Retry):
        await fetch(rt, rng)
    saved = await rt.store.progress(spec.id, rng)
    assert 0 < saved < rng.length
    origin.delay = 0
    await fetch(rt, rng)
    assert origin.ranges[-1] == f"bytes={rng.start + saved}-{rng.end}"  # the second run wrote only the rest
    assert (await rt.store.digests(spec.id))[rng] == crc(DATA[rng.start : rng.end + 1])
    assert part_bytes(rt)[rng.start : rng.end + 1] == DATA[rng.start : rng.end + 1]
    assert read_backs == []  # the first run's bytes seeded the digest (hash_prefix), no read-back of the range


async def test_a_range_found_written_is_read_back(make: MakeRuntime, origin: Origin, read_backs: list[Range]) -> None:
    rt = make(verify_early=False)
    spec = await record(rt)
    rng = ranges()[3]
    with open(rt.download_dir / "f.bin.part", "r+b") as f:  # its job wrote it all, then died before mark_done
        f.seek(rng.start)
        f.write(DATA[rng.start : rng.end + 1])
    await rt.store.set_progress(spec.id, rng, rng.length)
    await fetch(rt, rng)
    assert origin.ranges == []
    assert read_backs == [rng]
    assert (await rt.store.digests(spec.id))[rng] == crc(DATA[rng.start : rng.end + 1])


# -- the store: pub/sub and the verifier lease ------------------------------------------------


async def test_listen_wakes_on_a_state_change(rt: Runtime) -> None:
    spec = await record(rt)
    async with rt.store.listen(keys.state_channel(spec.id)) as wait:
        await wait(0.1)  # the subscription's confirmation, if it comes as a message
        began = time.monotonic()
        await wait(0.2)  # nothing to hear: it waits its timeout
        assert time.monotonic() - began >= 0.15
        waiter = asyncio.ensure_future(wait(5.0))
        began = time.monotonic()
        await rt.store.set_state(spec.id, DownloadState.RUNNING)
        await asyncio.wait_for(waiter, timeout=1.0)
        assert time.monotonic() - began < 0.5


async def test_set_state_and_mark_done_publish(rt: Runtime, redis: ArqRedis) -> None:
    spec = await record(rt)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.state_channel(spec.id), keys.done_channel(spec.id))
        await rt.store.set_state(spec.id, DownloadState.RUNNING)
        await rt.store.mark_done(spec.id, ranges()[0], "0badcafe")
        heard: list[tuple[bytes, bytes]] = []

        async def two_messages() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                heard.append((message["channel"], message["data"]))
            return len(heard) == 2

        await wait_for(two_messages, timeout=2, interval=0)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert heard == [
        (keys.state_channel(spec.id).encode(), b"running"),
        (keys.done_channel(spec.id).encode(), str(ranges()[0]).encode()),
    ]


async def test_verifier_lease_belongs_to_its_owner(rt: Runtime, redis: ArqRedis) -> None:
    store = rt.store
    assert await store.verifier(ID) is None
    assert await store.claim_verifier(ID, "a", ttl=5)
    assert not await store.claim_verifier(ID, "b", ttl=5)
    assert await store.verifier(ID) == "a"
    assert not await store.renew_verifier(ID, "b", ttl=5)
    assert await store.renew_verifier(ID, "a", ttl=30)
    assert 5_000 < await redis.pttl(LEASE) <= 30_000
    await store.release_verifier(ID, "b")  # not b's to give back
    assert await lease_value(redis) == b"a"
    await store.stop_verifier(ID, "b", ttl=5)  # nor to stop
    assert await lease_value(redis) == b"a"
    await store.stop_verifier(ID, "a", ttl=0.3)
    assert await lease_value(redis) == b"stopped"
    assert await store.verifier(ID) is None  # "stopped" is no live verifier
    assert not await store.renew_verifier(ID, "a", ttl=5)
    assert not await store.claim_verifier(ID, "b", ttl=5)  # ... but keeps a new one off for one lease
    await store.release_verifier(ID, "a")
    assert await lease_value(redis) == b"stopped"
    await wait_for(lambda: store.claim_verifier(ID, "b", ttl=5), timeout=2)
    assert await store.verifier(ID) == "b"
    await store.release_verifier(ID, "b")
    assert not await redis.exists(LEASE)


# -- wait / get --redis ------------------------------------------------------------------------


async def test_follow_returns_at_once_when_the_download_ends(redis: ArqRedis) -> None:
    store = Store(redis)
    spec = DownloadSpec(
        id="d1", url="http://h/f", final_url="http://h/f", size=4000, path="f", chunk_size=1000, ranges=4,
        connections=4, etag='"e"',
    )  # fmt: skip
    assert await store.create(spec)
    await store.set_state("d1", DownloadState.RUNNING)
    seen: list[str] = []
    follower = asyncio.create_task(follow(store, "d1", on_status=lambda r: seen.append(r["state"]), interval=30))
    try:
        await wait_for(lambda: _true(bool(seen)), timeout=2)
        await asyncio.sleep(0.2)  # let it settle into its wait
        assert not follower.done() and len(seen) <= 2  # with a 30 s interval it does not poll
        began = time.monotonic()
        await store.set_state("d1", DownloadState.VERIFYING)
        await store.set_state("d1", DownloadState.COMPLETE, sha256="ff")
        record_ = await asyncio.wait_for(follower, timeout=2)
    finally:
        follower.cancel()
    assert time.monotonic() - began < 0.5
    assert record_["state"] == "complete" and record_["sha256"] == "ff"
    assert seen[-1] == "complete"
