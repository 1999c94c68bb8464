"""Distributed downloads with real ``rangefetch worker`` processes, a real Redis and the range server.

Every download is checked by the sha256 of the final file against the
source.  Test timings are short through the environment: a 2 s lease (so a
SIGKILLed worker's range is redone 2 s later), 0.2 s checkpoints, fast
retries.  Rate-limited URLs (``rate=BPS`` per request) keep ranges in
flight long enough to kill, stop or restart things mid-download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from arq import Retry as JobRetry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from distributed_helpers import (
    QUEUE,
    WorkerProcess,
    arq_pool,
    file_sha256,
    quick_settings,
    sha256,
    start_download,
    wait_finished,
    wait_for,
)
from rangeserver import RangeServer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redisserver import RedisServer

from rangefetch import plan_ranges
from rangefetch.distributed import keys
from rangefetch.distributed.connections import redis_settings
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.plan import Range
from rangefetch.worker.cli import serve
from rangefetch.worker.finalize import sweep_job
from rangefetch.worker.jobs import fetch_range_job
from rangefetch.worker.runtime import RUNTIME_KEY, Runtime

pytestmark = pytest.mark.redis

KiB = 1024
DATA = os.urandom(800 * KiB)
SHA = sha256(DATA)

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    p = await arq_pool(redis_url)
    yield p
    await p.aclose()


async def progressed(store: Store, spec: DownloadSpec, *, at_least: int = 1) -> bool:
    """Whether ``at_least`` ranges have recorded some (not all) of their bytes."""
    ranges = plan_ranges(spec.size, spec.chunk_size)
    partial = 0
    for rng in ranges:
        done = await store.progress(spec.id, rng)
        partial += 0 < done < rng.length
    return partial >= at_least


async def check_complete(store: Store, spec: DownloadSpec, directory: Path, data: bytes = DATA) -> None:
    status = await store.status(spec.id)
    assert status is not None
    assert status["state"] == "complete", status["errorMessage"]
    assert status["completedLength"] == status["totalLength"] == len(data)
    assert status["rangesDone"] == spec.ranges
    assert status["sha256"] == sha256(data)
    assert file_sha256(directory / spec.path) == sha256(data)
    assert not (directory / (spec.path + ".part")).exists()


def range_offsets(server: RangeServer, name: str) -> list[tuple[int, int]]:
    """(first, last) byte of every ranged GET the server saw for ``name``."""
    out = []
    for rec in server.requests_for(name):
        value = rec.headers.get("range")
        if rec.method == "GET" and value and value != "bytes=0-0":
            first, _, last = value.removeprefix("bytes=").partition("-")
            out.append((int(first), int(last)))
    return out


def assert_resumed_exactly(server: RangeServer, name: str, seen: int, recorded: dict[Range, int]) -> None:
    """After the first ``seen`` requests, each range was asked for from exactly its recorded progress."""
    first_requests: dict[Range, int] = {}
    for first_byte, last in range_offsets(server, name)[seen:]:
        rng = next(r for r in recorded if r.end == last)
        first_requests.setdefault(rng, first_byte)
    for rng, done in recorded.items():
        if done < rng.length:
            assert first_requests[rng] == rng.start + done, rng
        else:
            assert rng not in first_requests, rng


@pytest.mark.parametrize("verify_early", ["1", "0"])
async def test_two_workers_download_one_file(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker, verify_early: str
) -> None:
    server.add_file("plain", DATA)
    spec = await start_download(pool, server.url("plain"), download_dir, chunk_size=64 * KiB)
    for _ in range(2):
        start_worker("--concurrency", "4", RANGEFETCH_DISTRIBUTED__JOBS__VERIFY_EARLY=verify_early)
    store = Store(pool)
    assert await wait_finished(store, spec.id) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir)
    assert len(await store.workers()) == 2
    status = await store.status(spec.id)
    assert status is not None
    # With the early verifier the bytes were verified in order as ranges finished; without it, only at the end.
    assert status["verifiedLength"] == (len(DATA) if verify_early == "1" else 0)


async def test_sigkilled_worker_range_is_redone_from_its_progress(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("kill", DATA)
    url = server.url("kill", rate=100 * KiB)  # each 100 KiB range takes about a second
    spec = await start_download(pool, url, download_dir, chunk_size=100 * KiB)
    store = Store(pool)
    victim = start_worker("--concurrency", "8")
    await wait_for(lambda: progressed(store, spec, at_least=4), timeout=15)
    victim.signal(signal.SIGKILL)
    victim.proc.wait()
    recorded = {r: await store.progress(spec.id, r) for r in plan_ranges(spec.size, spec.chunk_size)}
    seen = len(range_offsets(server, "kill"))
    killed_at = time.monotonic()
    start_worker("--concurrency", "8")
    assert await wait_finished(store, spec.id, timeout=20) is DownloadState.COMPLETE
    assert time.monotonic() - killed_at < 15  # lease (2 s) + startup + the rest of the bytes
    await check_complete(store, spec, download_dir)
    assert_resumed_exactly(server, "kill", seen, recorded)


async def test_a_sigkilled_run_of_ranges_is_taken_up_from_each_range_s_progress(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("cells", DATA)
    url = server.url("cells", rate=100 * KiB)  # each 50 KiB range takes about half a second
    spec = await start_download(pool, url, download_dir, name="cells.bin", chunk_size=50 * KiB, job_ranges=4)
    assert spec.ranges == 16 and await pool.zcard(QUEUE) == 4  # four jobs, each a run of four ranges
    store = Store(pool)

    async def one_done_and_more_under_way() -> bool:
        return await store.done_count(spec.id) >= 1 and await progressed(store, spec, at_least=2)

    victim = start_worker("--concurrency", "8")
    await wait_for(one_done_and_more_under_way, timeout=20)
    victim.signal(signal.SIGKILL)
    victim.proc.wait()
    recorded = {r: await store.progress(spec.id, r) for r in plan_ranges(spec.size, spec.chunk_size)}
    assert any(0 < done < r.length for r, done in recorded.items())
    seen = len(range_offsets(server, "cells"))
    start_worker("--concurrency", "8")
    assert await wait_finished(store, spec.id, timeout=30) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir, DATA)
    assert_resumed_exactly(server, "cells", seen, recorded)


async def test_sigterm_loses_and_double_counts_nothing(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("term", DATA)
    url = server.url("term", rate=100 * KiB)
    spec = await start_download(pool, url, download_dir, chunk_size=100 * KiB)
    store = Store(pool)
    first = start_worker("--concurrency", "8", "-v")  # -v: arq's per-job lines
    await wait_for(lambda: progressed(store, spec, at_least=4), timeout=15)
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=10) == 0
    assert "will be run again" in first.output()
    ranges = plan_ranges(spec.size, spec.chunk_size)
    recorded = {r: await store.progress(spec.id, r) for r in ranges}
    part = (download_dir / (spec.path + ".part")).read_bytes()
    for rng, done in recorded.items():  # every recorded byte is on disk and right
        assert part[rng.start : rng.start + done] == DATA[rng.start : rng.start + done]
    assert await store.state(spec.id) is DownloadState.RUNNING
    assert await pool.hlen(keys.download_key(spec.id, "inflight")) == 0
    seen = len(range_offsets(server, "term"))

    start_worker("--concurrency", "8")
    assert await wait_finished(store, spec.id) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir)
    assert_resumed_exactly(server, "term", seen, recorded)


async def test_workers_ride_out_a_redis_restart(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    server.add_file("restart", DATA)
    url = server.url("restart", rate=200 * KiB)
    spec = await start_download(pool, url, download_dir, chunk_size=50 * KiB)
    store = Store(pool)
    start_worker("--concurrency", "2")
    start_worker("--concurrency", "2")
    await wait_for(lambda: progressed(store, spec, at_least=2), timeout=15)
    await asyncio.to_thread(redis_server.restart, down_for=1.0)
    assert await wait_finished(store, spec.id, timeout=30) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir)


async def test_a_changed_remote_file_fails_the_download(
    server: RangeServer, pool: ArqRedis, download_dir: Path, redis_url: str
) -> None:
    server.add_file("changing", DATA)
    url = server.url("changing", etag_change_after=3)  # the probe and two ranges see the old file
    spec = await start_download(pool, url, download_dir, chunk_size=64 * KiB)
    await serve(quick_settings(redis_url, download_dir), burst=True, handle_signals=False)
    data = await Store(pool).get(spec.id)
    assert data is not None and data["state"] == "failed"
    assert "changed" in data["error"] and "\n" not in data["error"]
    assert not (download_dir / spec.path).exists()


async def test_a_range_that_fails_verification_is_fetched_again(
    server: RangeServer, pool: ArqRedis, download_dir: Path, redis_url: str
) -> None:
    server.add_file("verify", DATA)
    spec = await start_download(pool, server.url("verify"), download_dir, chunk_size=100 * KiB)
    store = Store(pool)
    settings = quick_settings(redis_url, download_dir)
    assert await store.claim_finalizer(spec.id, "test", ttl=60)  # hold the finalizer back
    await serve(settings, burst=True, handle_signals=False)
    assert await store.done_count(spec.id) == spec.ranges
    bad = plan_ranges(spec.size, spec.chunk_size)[3]
    with open(download_dir / (spec.path + ".part"), "r+b") as f:
        f.seek(bad.start + 1000)
        f.write(bytes(b ^ 0xFF for b in DATA[bad.start + 1000 : bad.start + 1100]))
    await store.release_finalizer(spec.id, "test")
    await pool.enqueue_job("finalize", spec.id, _job_id=keys.finalize_job_id(spec.id))
    await serve(settings, burst=True, handle_signals=False)
    await check_complete(store, spec, download_dir)
    assert await pool.hget(keys.download_key(spec.id, "redo"), str(bad)) == b"1"
    assert range_offsets(server, "verify").count((bad.start, bad.end)) == 2


async def test_per_host_cap_holds_across_the_cluster(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("capped", DATA)
    # Every response waits 0.1 s before its headers.
    url = server.url("capped", slow_headers=0.1, times=1000)
    spec = await start_download(pool, url, download_dir, chunk_size=32 * KiB)
    server.reset()
    start_worker("--concurrency", "8", RANGEFETCH_DISTRIBUTED__PER_HOST_CONNECTIONS="3")
    start_worker("--concurrency", "8", RANGEFETCH_DISTRIBUTED__PER_HOST_CONNECTIONS="3")
    store = Store(pool)
    assert await wait_finished(store, spec.id) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir)
    assert 2 <= server.max_concurrent <= 3


async def test_a_small_download_is_not_starved_by_a_big_one(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    # Two connections to the host.  The big download's ranges take 2 s and
    # yield their slot every 0.5 s (the job budget), then come back at the
    # head of the queue.  Without fair shares they would take the slot right
    # back every time and the small download would wait for a big range to
    # finish; with them, the waiting small download gets the next one.
    big_data, small_data = DATA[: 256 * KiB], os.urandom(32 * KiB)
    server.add_file("big", big_data)
    server.add_file("small", small_data)
    big_url, small_url = server.url("big", rate=64 * KiB), server.url("small", rate=128 * KiB)
    big = await start_download(pool, big_url, download_dir, name="big", chunk_size=128 * KiB)
    small = await start_download(pool, small_url, download_dir, name="small", chunk_size=32 * KiB)
    start_worker(
        "--concurrency", "8",
        RANGEFETCH_DISTRIBUTED__PER_HOST_CONNECTIONS="2", RANGEFETCH_DISTRIBUTED__JOBS__BUDGET="0.5",
    )  # fmt: skip
    store = Store(pool)
    assert await wait_finished(store, small.id) is DownloadState.COMPLETE
    assert await store.done_count(big.id) == 0  # no big range had to finish first
    await check_complete(store, small, download_dir, small_data)
    assert await wait_finished(store, big.id) is DownloadState.COMPLETE
    await check_complete(store, big, download_dir, big_data)


def test_worker_without_redis_fails_in_one_line(download_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RANGEFETCH_")}
    env["RANGEFETCH_DOWNLOAD_DIR"] = str(download_dir)
    done = subprocess.run(
        [sys.executable, "-m", "rangefetch", "worker"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no Redis configured" in done.stderr


async def test_worker_restarts_when_its_loop_dies_with_redis(
    server: RangeServer,
    download_dir: Path,
    redis_url: str,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rangefetch.worker.cli")
    settings = quick_settings(redis_url, download_dir)
    fragile = redis_settings(settings)  # give up on Redis at once instead of after a minute
    fragile.retry = Retry(NoBackoff(), 1)
    fragile.conn_retries, fragile.conn_retry_delay = 1, 1
    running = asyncio.create_task(serve(settings, handle_signals=False, redis_settings=fragile))
    probe_pool = await arq_pool(redis_url)
    await wait_for(lambda: _has_workers(probe_pool), timeout=10)
    await probe_pool.aclose()
    await asyncio.to_thread(redis_server.stop, kill=True)
    await wait_for(lambda: _logged(caplog, "lost Redis"), timeout=10)
    await asyncio.to_thread(redis_server.start)

    server.add_file("after", DATA)
    pool = await arq_pool(redis_url)
    try:
        spec = await start_download(pool, server.url("after"), download_dir, chunk_size=100 * KiB)
        store = Store(pool)
        assert await wait_finished(store, spec.id) is DownloadState.COMPLETE
        await check_complete(store, spec, download_dir)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await pool.aclose()


async def _has_workers(pool: ArqRedis) -> bool:
    return bool(await Store(pool).workers())


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


# -- leases that lapse ----------------------------------------------------------------------


class _StallingOrigin:
    """One range: its first ``good`` bytes right, then a stall of the whole event loop, then bytes that must never land.

    The stall is the run's process freezing (a long GC pause, a VM stopped):
    nothing in the loop runs, renewals included, until ``resume()`` says so
    (polled with a client of its own).  What it sends after that is wrong
    on purpose: had the run written any of it, the file would be corrupt.
    """

    def __init__(self, data: bytes, etag: str, good: int, resume: Callable[[], bool]) -> None:
        self.data, self.etag, self.good, self.resume = data, etag, good, resume
        self.stalled = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        headers = {"etag": self.etag, "content-range": f"bytes {start}-{end}/{len(self.data)}"}
        return httpx.Response(206, headers=headers, stream=_Stalling(self, start, end))


class _Stalling(httpx.AsyncByteStream):
    def __init__(self, origin: _StallingOrigin, start: int, end: int) -> None:
        self.origin, self.start, self.end = origin, start, end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        o = self.origin
        yield o.data[self.start : o.good]
        await asyncio.sleep(0.5)  # a checkpoint or two record those bytes
        o.stalled = True
        deadline = time.monotonic() + 60  # a hang guard only
        while not o.resume() and time.monotonic() < deadline:
            time.sleep(0.05)  # blocks the event loop: the process is frozen
        yield bytes(b ^ 0xFF for b in o.data[o.good : self.end + 1])


async def test_a_run_whose_lease_lapsed_writes_nothing_more_and_the_range_is_redone_elsewhere(
    server: RangeServer, pool: ArqRedis, download_dir: Path, redis_url: str, start_worker: StartWorker
) -> None:
    data = DATA[: 256 * KiB]
    server.add_file("lapse", data)
    spec = await start_download(pool, server.url("lapse"), download_dir, chunk_size=len(data))  # one range
    (rng,) = plan_ranges(spec.size, spec.chunk_size)
    job_id = keys.range_job_id(spec.id, rng.start, rng.end)
    store = Store(pool)
    watcher = sync_redis.Redis.from_url(redis_url)

    def complete() -> bool:
        return watcher.hget(keys.download_key(spec.id), "state") == b"complete"

    assert spec.etag is not None
    origin = _StallingOrigin(data, spec.etag, 64 * KiB, resume=complete)
    settings = quick_settings(redis_url, download_dir, jobs={"lease": 1.0, "slot_wait": 0.2, "verify_early": False})
    client = httpx.AsyncClient(transport=httpx.MockTransport(origin))
    stalled = Runtime(settings, pool, store, client, "stalled-worker", download_dir.resolve())
    start_worker("--concurrency", "2")  # someone else, to take the range over once the lease lapses
    try:
        # Taken as arq's start_jobs takes a job: its in-progress key, for one lease.
        await pool.set(in_progress_key_prefix + job_id, b"1", px=1000)
        ctx = {RUNTIME_KEY: stalled, "job_id": job_id, "job_try": 1, "redis": pool}
        with pytest.raises(JobRetry):  # gave the range up, to come back one lease later
            await asyncio.wait_for(fetch_range_job(ctx, spec.id, rng.start, rng.end), timeout=90)
    finally:
        await client.aclose()
        watcher.close()
    assert origin.stalled and complete()
    await check_complete(store, spec, download_dir, data)  # not one byte from after the stall reached the file
    assert await store.progress(spec.id, rng) == rng.length
    # The other worker fetched the range from what the stalled run had recorded before it froze.
    assert range_offsets(server, "lapse") == [(64 * KiB, rng.end)]


async def test_a_worker_stopped_past_its_lease_gives_its_range_up_when_it_wakes(
    server: RangeServer, pool: ArqRedis, download_dir: Path, start_worker: StartWorker
) -> None:
    data = DATA[: 512 * KiB]
    server.add_file("frozen", data)
    url = server.url("frozen", rate=128 * KiB)  # the one range takes 4 s
    spec = await start_download(pool, url, download_dir, chunk_size=len(data))
    (rng,) = plan_ranges(spec.size, spec.chunk_size)
    store = Store(pool)
    frozen = start_worker("--concurrency", "2", RANGEFETCH_DISTRIBUTED__JOBS__VERIFY_EARLY="0")
    await wait_for(lambda: progressed(store, spec), timeout=20)
    frozen.signal(signal.SIGSTOP)
    try:
        for _ in range(2):
            start_worker("--concurrency", "2", RANGEFETCH_DISTRIBUTED__JOBS__VERIFY_EARLY="0")
        before = await store.progress(spec.id, rng)
        await wait_for(lambda: _progress_above(store, spec.id, rng, before), timeout=20)  # taken over
    finally:
        frozen.signal(signal.SIGCONT)
    assert await wait_finished(store, spec.id, timeout=30) is DownloadState.COMPLETE
    await check_complete(store, spec, download_dir, data)
    await wait_for(lambda: _logged_by(frozen, "lost its lease"), timeout=10)
    assert "giving the range up" in frozen.output()
    # Two runs: the frozen one, and the one that took over.  The frozen run's end
    # deleted arq's in-progress key of the job under the other; that one put it
    # back, so no third worker started the job meanwhile.
    assert [first for first, _ in range_offsets(server, "frozen")] == [0, before]


async def _progress_above(store: Store, download_id: str, rng: Range, floor: int) -> bool:
    return await store.progress(download_id, rng) > floor


async def _logged_by(worker: WorkerProcess, text: str) -> bool:
    return text in worker.output()


class _HoldingOrigin:
    """Serves the first ``first`` bytes of a range, then holds the response open until ``release`` is set."""

    def __init__(self, data: bytes, etag: str, first: int) -> None:
        self.data, self.etag, self.first = data, etag, first
        self.release = asyncio.Event()
        self.sent = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        start, _, end = request.headers["range"].removeprefix("bytes=").partition("-")
        headers = {"etag": self.etag, "content-range": f"bytes {start}-{end}/{len(self.data)}"}
        return httpx.Response(206, headers=headers, stream=_Holding(self, int(start), int(end)))


class _Holding(httpx.AsyncByteStream):
    def __init__(self, origin: _HoldingOrigin, start: int, end: int) -> None:
        self.origin, self.start, self.end = origin, start, end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        o = self.origin
        yield o.data[self.start : self.start + o.first]
        o.sent.set()
        await o.release.wait()
        yield o.data[self.start + o.first : self.end + 1]


def _in_process_runtime(redis_url: str, download_dir: Path, pool: ArqRedis, origin: object, **jobs: object) -> Runtime:
    jobs = {"lease": 1.0, "slot_wait": 0.2, "verify_early": False, **jobs}
    settings = quick_settings(redis_url, download_dir, jobs=jobs)
    client = httpx.AsyncClient(transport=httpx.MockTransport(origin))  # type: ignore[arg-type]
    return Runtime(settings, pool, Store(pool), client, "in-process-worker", download_dir.resolve())


async def test_a_run_that_loses_redis_for_longer_than_its_lease_stops(
    server: RangeServer, pool: ArqRedis, download_dir: Path, redis_url: str, redis_server: RedisServer
) -> None:
    server.add_file("away", DATA)
    spec = await start_download(pool, server.url("away"), download_dir, chunk_size=len(DATA), enqueue=False)
    (rng,) = plan_ranges(spec.size, spec.chunk_size)
    job_id = keys.range_job_id(spec.id, rng.start, rng.end)
    assert spec.etag is not None
    origin = _HoldingOrigin(DATA, spec.etag, 100 * KiB)
    rt = _in_process_runtime(redis_url, download_dir, pool, origin)
    await pool.set(in_progress_key_prefix + job_id, b"1", px=1000)
    ctx = {RUNTIME_KEY: rt, "job_id": job_id, "job_try": 1, "redis": pool}
    job = asyncio.create_task(fetch_range_job(ctx, spec.id, rng.start, rng.end))
    try:
        await asyncio.wait_for(origin.sent.wait(), timeout=10)
        await asyncio.to_thread(redis_server.stop, kill=True)
        # Its renewals fail; one lease on, its claims may be anyone's: it must stop by
        # itself (without the fix it waits on the server as long as the server likes).
        with pytest.raises(JobRetry):
            await asyncio.wait_for(job, timeout=30)
    finally:
        origin.release.set()
        if not job.done():
            job.cancel()
        await rt.client.aclose()
        await asyncio.to_thread(redis_server.start)
    part = (download_dir / (spec.path + ".part")).read_bytes()
    assert part[: 100 * KiB] == DATA[: 100 * KiB] and part[100 * KiB :] == bytes(len(DATA) - 100 * KiB)


async def test_a_job_that_redis_keeps_failing_is_given_up_to_the_sweep(
    server: RangeServer, pool: ArqRedis, download_dir: Path, redis_url: str
) -> None:
    server.add_file("broken", DATA)
    spec = await start_download(pool, server.url("broken"), download_dir, chunk_size=len(DATA), enqueue=False)
    (rng,) = plan_ranges(spec.size, spec.chunk_size)
    await pool.set(keys.download_key(spec.id, "progress"), "not a hash")  # every run fails on Redis: WRONGTYPE
    rt = _in_process_runtime(redis_url, download_dir, pool, _HoldingOrigin(DATA, "", 0))

    async def run(job: Callable[..., Awaitable[None]], job_id: str, *args: object) -> None:
        """Run a job as arq's start_jobs and run_job would (its in-progress key), without the waits."""
        await pool.set(in_progress_key_prefix + job_id, b"1", px=1000)
        ctx = {RUNTIME_KEY: rt, "job_id": job_id, "job_try": 1, "redis": pool}
        await asyncio.wait_for(job(ctx, *args), timeout=10)

    try:
        retries = 0
        while True:
            try:
                await run(fetch_range_job, keys.range_job_id(spec.id, rng.start, rng.end), spec.id, rng.start, rng.end)
                break  # given up
            except JobRetry:
                retries += 1
                assert retries < 50, "a job that Redis keeps failing is retried for ever"
        assert retries == rt.settings.distributed.jobs.max_attempts - 1
        assert await Store(pool).state(spec.id) is DownloadState.RUNNING  # nothing failed for good
        # Once Redis answers again, the sweep enqueues the job that was given up, and it runs.
        await pool.delete(keys.download_key(spec.id, "progress"))
        await run(sweep_job, "cron:sweep:test")
    finally:
        await rt.client.aclose()
    await serve(quick_settings(redis_url, download_dir), burst=True, handle_signals=False)
    await check_complete(Store(pool), spec, download_dir)
