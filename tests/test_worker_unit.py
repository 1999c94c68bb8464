"""Worker job logic against fakeredis and ``httpx.MockTransport``: no processes, no sockets.

The jobs are called the way arq calls them (``ctx`` with ``job_id``), so
these tests pin the state transitions, the finalizer guard, verification
bounds, connection slots, budgets and retry counting; the real worker
processes are exercised in test_worker_integration.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from distributed_helpers import quick_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import rangefetch.worker.finalize
from rangefetch import JobLimits, PartFile, RemoteChangedError, RetriesExhaustedError, VerificationError, plan_ranges
from rangefetch.distributed import keys
from rangefetch.distributed.queue import (
    MAX_JOB_BYTES,
    enqueue_jobs,
    enqueue_ranges,
    job_cells,
    job_ids_of,
    now_ms,
    range_job,
    ranges_per_job,
)
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.plan import MAX_RANGES, Range, ranges_in
from rangefetch.producer.monitor import cancel
from rangefetch.worker.files import hash_file
from rangefetch.worker.finalize import QUEUED_GRACE, finalize_job, sweep_job
from rangefetch.worker.jobs import fetch_range_job
from rangefetch.worker.runtime import RUNTIME_KEY, Runtime
from rangefetch.worker.settings import MAX_TRIES, create_worker, queue_read_limit, worker_settings
from rangefetch.worker.transfer import host_key

URL = "http://files.test/f.bin"
HOST = host_key(URL)
CHUNK = 10_000
DATA = os.urandom(45_000)  # five ranges, the last one short
SECRET = "Bearer s3cr3t-token"


class Origin:
    """A MockTransport handler serving ``DATA`` in ranges, with a few faults."""

    def __init__(self, data: bytes = DATA, *, etag: str = '"v1"') -> None:
        self.data, self.etag = data, etag
        self.ranges: list[str] = []
        self.headers: list[httpx.Headers] = []
        self.status: int | None = None  # answer every request with this status
        self.delay = 0.0  # seconds between 1000-byte pieces of the body

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.ranges.append(request.headers["range"])
        self.headers.append(request.headers)
        if self.status is not None:
            return httpx.Response(self.status, headers={"etag": self.etag})
        first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        body = self.data[start : end + 1]
        headers = {
            "etag": self.etag,
            "content-range": f"bytes {start}-{end}/{len(self.data)}",
            "content-length": str(len(body)),
        }
        return httpx.Response(206, headers=headers, stream=_Slow(body, self.delay))


class _Slow(httpx.AsyncByteStream):
    def __init__(self, body: bytes, delay: float) -> None:
        self.body, self.delay = body, delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        step = 1000 if self.delay else len(self.body) or 1
        for i in range(0, len(self.body), step):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield self.body[i : i + step]


@pytest.fixture
def origin() -> Origin:
    return Origin()


@pytest.fixture
async def rt(redis: ArqRedis, tmp_path: Path, origin: Origin) -> AsyncIterator[Runtime]:
    runtime = make_runtime(redis, tmp_path, origin)
    yield runtime
    await runtime.client.aclose()


def make_runtime(redis: ArqRedis, tmp_path: Path, origin: Origin, **overrides: Any) -> Runtime:
    """A runtime whose range jobs start no early verifier unless ``jobs`` asks for one (test_verifier.py)."""
    jobs = {"lease": 2.0, "slot_wait": 0.2, "verify_early": False, **overrides.pop("jobs", {})}
    settings = quick_settings("redis://unused", tmp_path, jobs=jobs, **overrides)
    client = httpx.AsyncClient(transport=httpx.MockTransport(origin))
    return Runtime(settings, redis, Store(redis), client, "test-worker", tmp_path.resolve())


async def ctx(rt: Runtime, job_id: str) -> dict[str, Any]:
    """The ``ctx`` arq calls a job with, after taking the job as arq's ``start_jobs`` does (its in-progress key)."""
    await rt.redis.set(in_progress_key_prefix + job_id, b"1", px=round(rt.settings.distributed.jobs.lease * 1000))
    return {RUNTIME_KEY: rt, "job_id": job_id, "job_try": 1, "redis": rt.redis}


async def record(
    rt: Runtime,
    *,
    data: bytes = DATA,
    path: str = "f.bin",
    checksum: str | None = None,
    part: bool = True,
    headers: dict[str, str] | None = None,
    connections: int = 16,
) -> DownloadSpec:
    spec = DownloadSpec(
        id="dl1",
        url=URL,
        final_url=URL,
        size=len(data),
        path=path,
        chunk_size=CHUNK,
        ranges=len(plan_ranges(len(data), CHUNK)),
        connections=connections,
        etag='"v1"',
        checksum=checksum,
        headers=headers or {},
    )
    assert await rt.store.create(spec)
    if part:
        (rt.download_dir / (path + ".part")).write_bytes(bytes(len(data)))
    return spec


def ranges() -> list[Range]:
    return plan_ranges(len(DATA), CHUNK)


async def fetch(rt: Runtime, rng: Range, download_id: str = "dl1") -> None:
    job_id = keys.range_job_id(download_id, rng.start, rng.end)
    await fetch_range_job(await ctx(rt, job_id), download_id, rng.start, rng.end)


async def fetch_all(rt: Runtime) -> None:
    for rng in ranges():
        await fetch(rt, rng)


def part_bytes(rt: Runtime, path: str = "f.bin") -> bytes:
    return (rt.download_dir / (path + ".part")).read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crc(data: bytes) -> str:
    """A range digest as range jobs record it."""
    return f"{zlib.crc32(data):08x}"


# -- connection slots ---------------------------------------------------------


async def test_slots_cap_each_semaphore_all_or_none(redis: ArqRedis) -> None:
    store = Store(redis)
    limits = {"host": 2, "dl:a": 1}
    assert await store.acquire_fair("a:1", "a", limits, waiters="w", ttl=5, wait_ttl=5)
    # The download's own cap (1) is full: nothing is taken from the host either.
    assert not await store.acquire_fair("a:2", "a", limits, waiters="w", ttl=5, wait_ttl=5)
    assert await redis.zcard("host") == 1
    assert await store.acquire_fair("b:1", "b", {"host": 2, "dl:b": 5}, waiters="w", ttl=5, wait_ttl=5)
    assert not await store.acquire_fair("c:1", "c", {"host": 2, "dl:c": 5}, waiters="w", ttl=5, wait_ttl=5)
    # Taking a slot again with the same token (a job run again) does not count twice.
    assert await store.acquire_fair("a:1", "a", limits, waiters="w", ttl=5, wait_ttl=5)
    await store.release_slots("a:1", list(limits))
    assert await store.acquire_fair("c:1", "c", {"host": 2, "dl:c": 5}, waiters="w", ttl=5, wait_ttl=5)


async def test_slots_of_a_dead_worker_lapse(redis: ArqRedis) -> None:
    store = Store(redis)
    assert await store.acquire_fair("a:1", "a", {"host": 1}, waiters="w", ttl=0.2, wait_ttl=5)
    assert not await store.acquire_fair("b:1", "b", {"host": 1}, waiters="w", ttl=5, wait_ttl=5)
    await asyncio.sleep(0.3)
    assert await store.acquire_fair("b:1", "b", {"host": 1}, waiters="w", ttl=5, wait_ttl=5)


async def test_a_big_download_yields_slots_to_a_waiting_one(redis: ArqRedis) -> None:
    store = Store(redis)

    async def take(owner: str, n: int) -> bool:
        return await store.acquire_fair(f"{owner}:{n}", owner, {"host": 4}, waiters="w", ttl=30, wait_ttl=30)

    assert all([await take("big", n) for n in range(4)])
    assert not await take("small", 0)  # host full: "small" now waits
    await store.release_slots("big:0", ["host"])
    assert not await take("big", 4)  # "big" holds 3 of 4, more than its share of 2
    assert await take("small", 0)
    await store.release_slots("big:1", ["host"])
    assert await take("big", 5)  # nobody waits now: "big" may grow again


# -- range jobs ---------------------------------------------------------------


async def test_range_job_fetches_records_and_enqueues_finalizer(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt)
    first, *rest = ranges()
    await fetch(rt, first)
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert await rt.store.progress(spec.id, first) == first.length
    assert (await rt.store.digests(spec.id))[first] == crc(DATA[: first.length])
    assert not await rt.redis.exists(job_key_prefix + keys.finalize_job_id(spec.id))
    for rng in rest:
        await fetch(rt, rng)
    assert part_bytes(rt) == DATA
    assert await rt.store.done_count(spec.id) == spec.ranges
    assert await rt.redis.exists(job_key_prefix + keys.finalize_job_id(spec.id))
    assert await rt.redis.zcard(keys.sem_host(HOST)) == 0  # slots given back
    assert origin.ranges[0] == "bytes=0-9999"


async def test_range_job_that_finds_its_range_done_only_confirms_it(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt)
    rng = ranges()[0]
    await fetch(rt, rng)
    await fetch(rt, rng)  # arq ran it again (its worker died after mark_done)
    assert len(origin.ranges) == 1
    assert await rt.store.done_count(spec.id) == 1


async def test_range_job_continues_in_a_new_job_after_its_budget(
    redis: ArqRedis, tmp_path: Path, origin: Origin
) -> None:
    rt = make_runtime(redis, tmp_path, origin, jobs={"budget": 0.3, "lease": 2.0, "slot_wait": 0.2})
    spec = await record(rt)
    rng = ranges()[0]
    origin.delay = 0.1  # 1000 bytes every 100 ms: 10,000 bytes take 1 s
    with pytest.raises(Retry) as caught:
        await fetch(rt, rng)
    assert not caught.value.defer_score  # keeps its place in the queue
    saved = await rt.store.progress(spec.id, rng)
    assert 0 < saved < rng.length
    assert part_bytes(rt)[:saved] == DATA[:saved]
    origin.delay = 0
    await fetch(rt, rng)
    assert origin.ranges[-1] == f"bytes={saved}-{rng.end}"  # resumed from the recorded progress
    assert part_bytes(rt)[: rng.length] == DATA[: rng.length]
    assert await rt.store.done_count(spec.id) == 1
    await rt.client.aclose()


async def test_runs_without_progress_are_counted_until_the_range_fails(
    redis: ArqRedis, tmp_path: Path, origin: Origin
) -> None:
    rt = make_runtime(redis, tmp_path, origin, jobs={"budget": 0.2, "max_attempts": 2, "lease": 2.0})
    spec = await record(rt)
    origin.delay = 5.0  # not one byte within the budget
    rng = ranges()[0]
    with pytest.raises(Retry):
        await fetch(rt, rng)
    with pytest.raises(RetriesExhaustedError, match="made no progress in 2 runs"):
        await fetch(rt, rng)
    assert await rt.store.state(spec.id) is DownloadState.FAILED
    await rt.client.aclose()


async def test_range_job_without_a_free_slot_is_deferred(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt)
    for n in range(rt.settings.distributed.per_host_connections):
        assert await rt.store.acquire_slots(f"other:{n}", {keys.sem_host(HOST): 16}, ttl=30)
    with pytest.raises(Retry) as caught:
        await fetch(rt, ranges()[0])
    assert caught.value.defer_score and caught.value.defer_score > 0
    assert origin.ranges == []
    assert await rt.store.state(spec.id) is DownloadState.RUNNING


async def test_transient_failures_retry_with_backoff_then_fail(redis: ArqRedis, tmp_path: Path, origin: Origin) -> None:
    rt = make_runtime(
        redis,
        tmp_path,
        origin,
        retry={"max_tries": 2, "backoff": 0.01, "backoff_max": 0.02},
        jobs={"max_attempts": 3, "lease": 2.0},
    )
    spec = await record(rt)
    origin.status = 503
    rng = ranges()[0]
    for _ in range(2):
        with pytest.raises(Retry) as caught:
            await fetch(rt, rng)
        assert caught.value.defer_score is not None and caught.value.defer_score > 0
    with pytest.raises(RetriesExhaustedError):
        await fetch(rt, rng)
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed"
    assert "503" in data["error"] and "3 times" in data["error"]
    status = await rt.store.status(spec.id)
    assert status is not None and status["rangesFailed"] == 1
    await rt.client.aclose()


async def test_a_changed_remote_file_fails_the_download(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt)
    origin.etag = '"v2"'
    with pytest.raises(RemoteChangedError):
        await fetch(rt, ranges()[0])
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed"
    assert "changed" in data["error"]
    # Later jobs of the failed download do nothing.
    origin.etag = '"v1"'
    requests = len(origin.ranges)
    await fetch(rt, ranges()[1])
    assert len(origin.ranges) == requests


@pytest.mark.parametrize("state", [DownloadState.CANCELLED, DownloadState.FAILED])
async def test_jobs_of_a_stopped_download_just_return(rt: Runtime, origin: Origin, state: DownloadState) -> None:
    spec = await record(rt)
    await rt.store.set_state(spec.id, state)
    await fetch(rt, ranges()[0])
    await finalize_job(await ctx(rt, keys.finalize_job_id(spec.id)), spec.id)
    assert origin.ranges == []
    assert await rt.store.state(spec.id) is state


async def test_a_missing_download_is_no_error(rt: Runtime, origin: Origin) -> None:
    await fetch(rt, ranges()[0], download_id="nope")
    assert origin.ranges == []


async def test_a_missing_part_file_fails_the_download(rt: Runtime) -> None:
    spec = await record(rt, part=False)
    with pytest.raises(Exception, match="part file missing"):
        await fetch(rt, ranges()[0])
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed" and "part file missing" in data["error"]
    assert not (rt.download_dir / "f.bin.part").exists()  # never created by a worker


@pytest.mark.parametrize("path", ["../escape.bin", "/etc/escape.bin", "sub/../../escape.bin"])
async def test_paths_outside_the_download_dir_are_refused(rt: Runtime, origin: Origin, path: str) -> None:
    spec = await record(rt, path="f.bin")
    await rt.redis.hset(keys.download_key(spec.id), "path", path)  # a forged enqueue request
    with pytest.raises(Exception, match="outside the download directory"):
        await fetch(rt, ranges()[0])
    assert origin.ranges == []
    assert await rt.store.state(spec.id) is DownloadState.FAILED


async def test_a_cancelled_job_saves_exactly_what_is_on_disk(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt)
    rng = ranges()[0]
    origin.delay = 0.05  # the range takes 0.5 s
    task = asyncio.create_task(fetch(rt, rng))
    await asyncio.sleep(0.15)
    task.cancel()  # what arq does on SIGTERM
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = await rt.store.progress(spec.id, rng)
    assert 0 < saved < rng.length
    assert part_bytes(rt)[:saved] == DATA[:saved]
    assert await rt.redis.zcard(keys.sem_host(HOST)) == 0
    assert await rt.redis.hlen(keys.download_key(spec.id, "inflight")) == 0
    origin.delay = 0
    await fetch(rt, rng)
    assert origin.ranges[-1] == f"bytes={saved}-{rng.end}"
    assert await rt.store.progress(spec.id, rng) == rng.length


async def test_secret_headers_reach_the_server_but_not_logs_or_status(
    rt: Runtime, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    spec = await record(rt, headers={"Authorization": SECRET})
    origin.status = 403
    with pytest.raises(Exception, match="403"):
        await fetch(rt, ranges()[0])
    assert origin.headers[0]["authorization"] == SECRET
    status = await rt.store.status(spec.id)
    assert SECRET not in repr(status) and "s3cr3t" not in caplog.text


# -- finalizer ------------------------------------------------------------------


async def finalize(rt: Runtime, download_id: str = "dl1") -> None:
    await finalize_job(await ctx(rt, keys.finalize_job_id(download_id)), download_id)


async def test_finalizer_renames_and_completes(rt: Runtime) -> None:
    spec = await record(rt, checksum=f"md5={hashlib.md5(DATA).hexdigest()}")
    await fetch_all(rt)
    await finalize(rt)
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "complete" and data["sha256"] == sha(DATA)
    assert (rt.download_dir / "f.bin").read_bytes() == DATA
    assert not (rt.download_dir / "f.bin.part").exists()
    assert not await rt.redis.exists(keys.download_key(spec.id, "finalize"))  # guard released
    await finalize(rt)  # a second finalizer finds it complete and does nothing
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE


async def test_finalizer_guard_lets_one_run(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch_all(rt)
    assert await rt.store.claim_finalizer(spec.id, "another", ttl=30)  # another finalizer is running
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert (rt.download_dir / "f.bin.part").exists()
    assert await rt.redis.get(keys.download_key(spec.id, "finalize")) == b"another"  # not released: not its own
    await rt.store.release_finalizer(spec.id, "another")
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE


async def test_a_finalizer_whose_guard_went_to_another_changes_nothing(
    redis: ArqRedis, tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(redis, tmp_path, origin, jobs={"lease": 0.4, "slot_wait": 0.2})
    spec = await record(rt)
    await fetch_all(rt)
    guard = keys.download_key(spec.id, "finalize")
    real = rangefetch.worker.finalize.hash_file

    async def stalled_hash(*args: Any, **kwargs: Any) -> Any:
        # While it hashes, its guard lapses and another finalizer takes it (a stop of the
        # process past its lease would do the same); one lease later it cannot hold it.
        await rt.redis.set(guard, "another-finalizer", px=60_000)
        await asyncio.sleep(rt.settings.distributed.jobs.lease * 1.5)
        return await real(*args, **kwargs)

    monkeypatch.setattr(rangefetch.worker.finalize, "hash_file", stalled_hash)
    with pytest.raises(Retry):  # it gives up, to look again one lease later
        await finalize(rt)
    assert await rt.redis.get(guard) == b"another-finalizer"  # neither renewed nor released by it
    assert await rt.store.state(spec.id) is DownloadState.VERIFYING  # not completed, not failed
    assert (rt.download_dir / "f.bin.part").exists() and not (rt.download_dir / "f.bin").exists()  # not renamed
    await rt.client.aclose()


async def test_finalizer_redoes_a_corrupt_range(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch_all(rt)
    part = rt.download_dir / "f.bin.part"
    with open(part, "r+b") as f:  # a bad disk, or a stray writer
        f.seek(CHUNK + 5)
        f.write(b"\xff\x00\xff")
    await finalize(rt)
    bad = ranges()[1]
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert bad not in await rt.store.done_ranges(spec.id)
    assert await rt.redis.hget(keys.download_key(spec.id, "redo"), str(bad)) == b"1"
    assert await rt.redis.exists(job_key_prefix + keys.range_job_id(spec.id, bad.start, bad.end))
    assert not await rt.redis.exists(keys.download_key(spec.id, "finalize"))
    await fetch(rt, bad)  # the re-enqueued job; it enqueues the finalizer again
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE
    assert (rt.download_dir / "f.bin").read_bytes() == DATA


async def backlog(rt: Runtime, count: int = 100) -> float:
    """Another download's ``count`` range jobs, queued a minute ago (scores in the past); the lowest score."""
    jobs = [range_job("big", r) for r in plan_ranges(count * 10, 10)]
    queue = rt.settings.distributed.queue_name
    await enqueue_jobs(rt.redis, queue, jobs, done_key=keys.download_key("big", "done"), now=now_ms() - 60_000)
    (_, head), *_ = await rt.redis.zrange(queue, 0, 0, withscores=True)
    return float(head)


async def first_in_queue(rt: Runtime) -> str:
    return str((await rt.redis.zrange(rt.settings.distributed.queue_name, 0, 0))[0].decode())


async def test_finalizer_and_redone_ranges_jump_a_backlog(rt: Runtime) -> None:
    spec = await record(rt)
    await backlog(rt)
    await fetch_all(rt)
    assert await first_in_queue(rt) == keys.finalize_job_id(spec.id)  # not behind 100 ranges of "big"
    await rt.redis.zrem(rt.settings.distributed.queue_name, keys.finalize_job_id(spec.id))  # a worker took it
    await rt.redis.delete(job_key_prefix + keys.finalize_job_id(spec.id))
    with open(rt.download_dir / "f.bin.part", "r+b") as f:
        f.seek(CHUNK * 3)
        f.write(bytes(b ^ 0xFF for b in DATA[CHUNK * 3 : CHUNK * 3 + 10]))
    await finalize(rt)
    bad = ranges()[3]
    assert await first_in_queue(rt) == keys.range_job_id(spec.id, bad.start, bad.end)
    await fetch(rt, bad)
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE
    assert sha((rt.download_dir / "f.bin").read_bytes()) == sha(DATA)


async def test_verification_retries_are_bounded(redis: ArqRedis, tmp_path: Path, origin: Origin) -> None:
    rt = make_runtime(redis, tmp_path, origin, max_verify_retries=1)
    spec = await record(rt)
    bad = ranges()[2]

    async def corrupt_and_finalize() -> None:
        with open(rt.download_dir / "f.bin.part", "r+b") as f:
            f.seek(bad.start)
            f.write(b"\x00" * 10 if DATA[bad.start] else b"\x01" * 10)
        await finalize(rt)

    await fetch_all(rt)
    await corrupt_and_finalize()
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    await fetch(rt, bad)
    with pytest.raises(VerificationError, match=f"range {bad} failed verification 2 times"):
        await corrupt_and_finalize()
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed" and "verification" in data["error"]
    assert not (rt.download_dir / "f.bin").exists()
    await rt.client.aclose()


async def test_checksum_mismatch_fails_and_keeps_the_verified_part_file(rt: Runtime, origin: Origin) -> None:
    spec = await record(rt, checksum="sha256=" + "0" * 64)
    await fetch_all(rt)
    with pytest.raises(VerificationError, match="sha256 mismatch.*kept the downloaded f.bin.part"):
        await finalize(rt)
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "failed" and "sha256 mismatch" in data["error"]
    assert "kept the downloaded f.bin.part (43.9 KiB)" in data["error"] and "--checksum" in data["error"]
    assert sha(part_bytes(rt)) == sha(DATA) and not (rt.download_dir / "f.bin").exists()
    assert await rt.store.done_count(spec.id) == spec.ranges  # still marked done
    # Enqueued again with the right digest (what producer.enqueue does): only verified, nothing fetched.
    fetched = len(origin.ranges)
    await rt.redis.hset(keys.download_key(spec.id), "checksum", f"sha256={sha(DATA)}")
    await rt.store.reset_for_resume(spec.id, resumed=len(DATA))
    await rt.store.set_state(spec.id, DownloadState.QUEUED)
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE
    assert sha((rt.download_dir / "f.bin").read_bytes()) == sha(DATA)
    assert len(origin.ranges) == fetched


async def test_checksum_mismatch_without_a_validator_removes_the_part_file(rt: Runtime) -> None:
    spec = await record(rt, checksum="sha256=" + "0" * 64)
    await fetch_all(rt)
    await rt.redis.hdel(keys.download_key(spec.id), "etag")  # enqueuing again could not tell it is the same file
    with pytest.raises(VerificationError, match="sha256 mismatch") as caught:
        await finalize(rt)
    assert "kept" not in str(caught.value)
    assert not (rt.download_dir / "f.bin.part").exists() and not (rt.download_dir / "f.bin").exists()


async def test_finalizer_with_ranges_missing_enqueues_them(rt: Runtime) -> None:
    spec = await record(rt)
    for rng in ranges()[:-1]:
        await fetch(rt, rng)
    await rt.store.set_state(spec.id, DownloadState.VERIFYING)  # as if a redo was cut short
    await finalize(rt)
    last = ranges()[-1]
    assert await rt.store.state(spec.id) is DownloadState.RUNNING
    assert await rt.redis.exists(job_key_prefix + keys.range_job_id(spec.id, last.start, last.end))


async def test_finalizer_completes_a_file_renamed_by_a_finalizer_that_died(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch_all(rt)
    await rt.store.set_state(spec.id, DownloadState.VERIFYING)
    PartFile(rt.download_dir / "f.bin").commit()
    await finalize(rt)
    data = await rt.store.get(spec.id)
    assert data is not None and data["state"] == "complete" and data["sha256"] == sha(DATA)


async def test_wrong_size_fails_verification(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch_all(rt)
    with open(rt.download_dir / "f.bin.part", "ab") as f:
        f.write(b"extra")
    with pytest.raises(VerificationError, match="size mismatch"):
        await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.FAILED


async def test_hash_file_gives_range_and_whole_file_digests(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(DATA)
    digests, whole = await hash_file(path, len(DATA), ranges(), {"sha256", "md5"})
    assert digests == [crc(DATA[r.start : r.end + 1]) for r in ranges()]
    assert whole == {"sha256": sha(DATA), "md5": hashlib.md5(DATA).hexdigest()}


# -- multi-range jobs -------------------------------------------------------------
#
# One arq job fetches a run of consecutive ranges (a job cell).  The cells are
# cut once, at enqueue (DownloadSpec.job_ranges), and every producer, the sweep
# and cancel see the same cells.  A job reads its ranges' progress once, takes
# its connection slot once, fetches each range from its recorded bytes and
# marks the finished ones done in batches.

JOB_RANGES = 3  # DATA's five ranges in two cells: three ranges, then two


async def multi(rt: Runtime) -> DownloadSpec:
    """``DATA``'s download, recorded with cells of ``JOB_RANGES`` ranges."""
    spec = await record(rt)
    spec = replace(spec, job_ranges=JOB_RANGES)
    await rt.store.update_spec(spec)
    loaded = await rt.store.spec(spec.id)
    assert loaded is not None and loaded.job_ranges == JOB_RANGES and loaded.job_bytes == JOB_RANGES * CHUNK
    return spec


def cells(spec: DownloadSpec) -> list[Range]:
    return [span for span, _ in job_cells(spec.size, spec.job_bytes, plan_ranges(spec.size, spec.chunk_size))]


async def run_cell(rt: Runtime, spec: DownloadSpec, span: Range) -> None:
    job_id = keys.range_job_id(spec.id, span.start, span.end)
    await fetch_range_job(await ctx(rt, job_id), spec.id, span.start, span.end)


@given(
    size=st.integers(1, 10**9),
    chunk=st.integers(64 * 1024, 64 * 1024 * 1024),
    jobs=st.integers(1, 256),
)
@hypothesis_settings(deadline=None)  # up to 10,000 ranges an example: slow on a loaded machine
def test_cells_cut_the_plan_into_runs_of_whole_ranges(size: int, chunk: int, jobs: int) -> None:
    chunk = max(chunk, -(-size // MAX_RANGES))  # as the planner grows it
    ranges = plan_ranges(size, chunk)
    per_job = ranges_per_job(len(ranges), chunk, jobs)
    assert per_job >= 1 and (per_job == 1 or per_job * chunk <= MAX_JOB_BYTES)
    found = job_cells(size, chunk * per_job, ranges)
    assert [r for span, _ in found for r in ranges_in(span, chunk)] == ranges  # every range once, in order
    assert [r for _, rs in found for r in rs] == ranges
    assert all(len(rs) <= per_job for _, rs in found)
    if per_job < MAX_JOB_BYTES // chunk:  # the byte cap did not bind: at most ``jobs`` cells
        assert len(found) <= jobs
    for span, rs in found:
        assert {tuple(job_ids_of("d", size, chunk * per_job, r))[0] for r in rs} == {
            keys.range_job_id("d", span.start, span.end)
        }


async def test_one_job_fetches_its_run_and_marks_it_done(rt: Runtime, origin: Origin) -> None:
    spec = await multi(rt)
    first, second = cells(spec)
    await rt.store.set_state(spec.id, DownloadState.RUNNING)
    await run_cell(rt, spec, first)
    done = plan_ranges(spec.size, spec.chunk_size)[:JOB_RANGES]
    assert await rt.store.done_ranges(spec.id) == set(done)
    assert origin.ranges == [f"bytes={r.start}-{r.end}" for r in done]  # one request per range, in order
    assert part_bytes(rt)[: first.end + 1] == DATA[: first.end + 1]
    digests = await rt.store.digests(spec.id)
    assert {r: digests[r] for r in done} == {r: crc(DATA[r.start : r.end + 1]) for r in done}
    await run_cell(rt, spec, second)
    assert await rt.store.done_count(spec.id) == spec.ranges
    assert part_bytes(rt) == DATA
    assert await rt.redis.exists(job_key_prefix + keys.finalize_job_id(spec.id))  # the last batch enqueued it


async def test_a_job_skips_done_ranges_and_resumes_a_partial_one(rt: Runtime, origin: Origin) -> None:
    spec = await multi(rt)
    first, _ = cells(spec)
    r0, r1, r2 = ranges_in(first, spec.chunk_size)
    part = rt.download_dir / "f.bin.part"
    with part.open("r+b") as f:  # range 0 done by an earlier run, range 1 half written and recorded
        f.seek(r0.start)
        f.write(DATA[r0.start : r0.end + 1])
        f.seek(r1.start)
        f.write(DATA[r1.start : r1.start + 4000])
    await rt.store.mark_done(spec.id, r0, crc(DATA[r0.start : r0.end + 1]))
    await rt.store.set_progress(spec.id, r1, 4000)
    await rt.store.set_state(spec.id, DownloadState.RUNNING)
    await run_cell(rt, spec, first)
    assert origin.ranges == [f"bytes={r1.start + 4000}-{r1.end}", f"bytes={r2.start}-{r2.end}"]
    assert await rt.store.done_ranges(spec.id) == {r0, r1, r2}
    assert part_bytes(rt)[: first.end + 1] == DATA[: first.end + 1]
    digests = await rt.store.digests(spec.id)
    assert digests[r1] == crc(DATA[r1.start : r1.end + 1])  # the digest covers the bytes of both runs


async def test_a_cancelled_download_stops_its_runs_after_the_current_batch(rt: Runtime, origin: Origin) -> None:
    spec = await multi(rt)
    first, _ = cells(spec)
    await rt.store.set_state(spec.id, DownloadState.CANCELLED, error="cancelled")
    await run_cell(rt, spec, first)
    assert origin.ranges == [] and await rt.store.done_count(spec.id) == 0


async def test_the_sweep_enqueues_a_lost_cell_as_one_job(rt: Runtime) -> None:
    spec = await multi(rt)
    await rt.store.set_state(spec.id, DownloadState.RUNNING)
    await sweep_job(await ctx(rt, "sweep:1"))
    enqueued = {k.decode() for k in await rt.redis.keys(job_key_prefix + f"{spec.id}:*")}
    assert enqueued == {job_key_prefix + keys.range_job_id(spec.id, s.start, s.end) for s in cells(spec)}
    await sweep_job(await ctx(rt, "sweep:2"))  # a cell with a job is not lost
    assert len(await rt.redis.keys(job_key_prefix + f"{spec.id}:*")) == len(cells(spec))


async def test_cancel_removes_the_cell_jobs(rt: Runtime, redis: ArqRedis) -> None:
    spec = await multi(rt)
    queue = rt.settings.distributed.queue_name
    ranges = plan_ranges(spec.size, spec.chunk_size)
    assert await enqueue_ranges(redis, queue, spec.id, ranges, cells=(spec.size, spec.job_bytes)) == 2
    assert await redis.zcard(queue) == 2
    assert await cancel(rt.store, redis, rt.settings, spec.id) == 2
    assert await redis.zcard(queue) == 0


# -- sweep ----------------------------------------------------------------------


async def test_sweep_enqueues_missing_finalizers_and_lost_range_jobs(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch_all(rt)
    await rt.redis.delete(job_key_prefix + keys.finalize_job_id(spec.id))  # the enqueue was lost
    await sweep_job(await ctx(rt, "sweep:1"))
    assert await rt.redis.exists(job_key_prefix + keys.finalize_job_id(spec.id))

    other = DownloadSpec(**{**_fields(spec), "id": "dl2", "path": "g.bin"})
    assert await rt.store.create(other)
    await rt.store.set_state("dl2", DownloadState.RUNNING)
    first = ranges()[0]
    await rt.store.mark_done("dl2", first, "x")
    second = ranges()[1]
    await rt.redis.enqueue_job("fetch_range", "dl2", second.start, second.end, _job_id=f"dl2:{second}")
    await sweep_job(await ctx(rt, "sweep:2"))
    enqueued = {k.decode() for k in await rt.redis.keys(job_key_prefix + "dl2:*")}
    assert enqueued == {job_key_prefix + keys.range_job_id("dl2", r.start, r.end) for r in ranges()[1:]}


async def test_sweep_scores_lost_ranges_fairly(rt: Runtime) -> None:
    spec = await record(rt)
    await rt.store.set_state(spec.id, DownloadState.RUNNING)
    head = await backlog(rt)
    await sweep_job(await ctx(rt, "sweep:1"))
    ids = [keys.range_job_id(spec.id, r.start, r.end) for r in ranges()]
    scores = [await rt.redis.zscore(rt.settings.distributed.queue_name, i) for i in ids]
    assert scores == [head + k for k in range(len(ranges()))]  # interleaved with the backlog, not behind it


async def test_sweep_re_enqueues_lost_ranges_of_a_download_left_queued(rt: Runtime) -> None:
    spec = await record(rt)
    await fetch(rt, ranges()[0])
    await rt.store.set_state(spec.id, DownloadState.QUEUED)  # resumed, and its jobs lost before any ran
    await sweep_job(await ctx(rt, "sweep:1"))
    assert not await rt.redis.keys(job_key_prefix + "*")  # just queued: the producer may still be enqueuing
    await rt.redis.hset(keys.download_key(spec.id), "updated", str(time.time() - QUEUED_GRACE - 1))
    await sweep_job(await ctx(rt, "sweep:2"))
    enqueued = {k.decode() for k in await rt.redis.keys(job_key_prefix + "*")}
    assert enqueued == {job_key_prefix + keys.range_job_id(spec.id, r.start, r.end) for r in ranges()[1:]}
    for rng in ranges()[1:]:
        await fetch(rt, rng)
    await finalize(rt)
    assert await rt.store.state(spec.id) is DownloadState.COMPLETE
    assert sha((rt.download_dir / "f.bin").read_bytes()) == sha(DATA)


async def test_sweep_leaves_recently_requeued_downloads_alone(rt: Runtime) -> None:
    spec = await record(rt)
    await rt.redis.hset(keys.download_key(spec.id), "created", str(time.time() - 3600))
    await rt.store.set_state(spec.id, DownloadState.CANCELLED)
    await sweep_job(await ctx(rt, "sweep:1"))
    await rt.store.set_state(spec.id, DownloadState.QUEUED)  # resumed just now
    await sweep_job(await ctx(rt, "sweep:2"))
    assert not await rt.redis.keys(job_key_prefix + "*")


def _fields(spec: DownloadSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in DownloadSpec.__dataclass_fields__}


# -- worker settings --------------------------------------------------------------


def test_worker_settings_follow_the_timing_design(tmp_path: Path) -> None:
    s = quick_settings("redis://127.0.0.1:1/0", tmp_path, worker_concurrency=8, cluster_size=20)
    kw = worker_settings(s)
    functions = {f.name: f for f in kw["functions"]}
    assert functions["fetch_range"].timeout_s == s.distributed.jobs.timeout > s.distributed.jobs.budget
    assert functions["finalize"].timeout_s == s.distributed.jobs.finalize_timeout
    assert all(f.keep_result_s == 0 and f.max_tries == MAX_TRIES for f in functions.values())
    assert kw["queue_read_limit"] == queue_read_limit(s) == 320
    assert kw["max_jobs"] == 8 and kw["handle_signals"] and kw["retry_jobs"]
    assert queue_read_limit(quick_settings("redis://x", tmp_path, cluster_size=1)) == 100


async def test_create_worker_makes_in_progress_keys_leases(tmp_path: Path) -> None:
    s = quick_settings("redis://127.0.0.1:1/0", tmp_path)
    worker = create_worker(s, handle_signals=False)
    # arq would use the finalizer's timeout (+10 s) for every job.
    assert worker.in_progress_timeout_s == s.distributed.jobs.lease


def test_job_limits_keep_the_budget_below_the_timeout(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="budget"):
        quick_settings("redis://x", tmp_path, jobs={"budget": 60, "timeout": 50})
    assert quick_settings("redis://x", tmp_path).distributed.jobs == JobLimits(lease=2.0, slot_wait=0.2)
