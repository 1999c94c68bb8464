"""Monitoring and control (producer/monitor.py, producer/watch.py) against fakeredis."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import fakeredis
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from rangefetch import (
    CancelledDownloadError,
    DownloadError,
    Range,
    Settings,
    StateError,
    UsageError,
    plan_ranges,
)
from rangefetch.distributed.keys import download_key
from rangefetch.distributed.queue import enqueue_jobs, finalize_job, range_job
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store, WorkerInfo
from rangefetch.producer.monitor import (
    cancel,
    follow,
    format_status,
    format_workers,
    outcome,
    scrub,
    status,
    statuses,
    worker_record,
)
from rangefetch.producer.watch import watch

SECRET_URL = "https://alice:hunter22@example.com/big.iso?X-Amz-Signature=abcdef123&token=tok456&part=1"
SECRETS = ("hunter22", "abcdef123", "tok456", "Bearer-xyz789")
SETTINGS = Settings(redis_url="redis://unused")
QUEUE = SETTINGS.distributed.queue_name


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


@pytest.fixture
async def store(redis: fakeredis.FakeAsyncRedis) -> Store:
    spec = DownloadSpec(
        id="d1", url=SECRET_URL, final_url=SECRET_URL, size=4000, path="big.iso", chunk_size=1000, ranges=4,
        connections=4, etag='"e"', headers={"Authorization": "Bearer-xyz789"},
    )  # fmt: skip
    s = Store(redis)
    assert await s.create(spec)
    return s


async def test_status_fields(store: Store) -> None:
    await store.set_state("d1", DownloadState.RUNNING)
    await store.mark_done("d1", Range(0, 999), "aa")
    await store.start_range("d1", Range(1000, 1999), "w1")
    await store.set_progress("d1", Range(1000, 1999), 500)
    await store.fail_range("d1", Range(2000, 2999), "HTTP 503 from example.com")
    record = await status(store, "d1")
    assert record["gid"] == "d1"
    assert (record["state"], record["status"]) == ("running", "active")
    assert (record["totalLength"], record["completedLength"], record["percent"]) == (4000, 1500, 37.5)
    assert (record["rangesDone"], record["rangesInFlight"], record["rangesFailed"]) == (1, 1, 1)
    assert (record["numPieces"], record["pieceLength"]) == (4, 1000)
    assert record["errorMessage"] == "HTTP 503 from example.com"
    assert record["workers"] == ["w1"]
    assert {"downloadSpeed", "eta", "path", "url", "sha256", "connections"} <= set(record)
    text = format_status(record)
    assert text.startswith("d1  big.iso  running ")  # the file's name beside the id
    assert "running" in text and "1/4 done, 1 in flight, 1 failed" in text and "w1" in text


async def test_progress_of_a_done_range_stays_full(store: Store) -> None:
    rng = Range(0, 999)
    await store.set_state("d1", DownloadState.RUNNING)
    await store.set_progress("d1", rng, 400)
    assert await store.progress("d1", rng) == 400
    await store.mark_done("d1", rng, "aa")
    await store.set_progress("d1", rng, 700)  # a zombie worker that lost its lease saves late
    assert await store.progress("d1", rng) == 1000
    assert (await status(store, "d1"))["completedLength"] == 1000


async def test_status_hides_secrets(store: Store) -> None:
    await store.set_state("d1", DownloadState.FAILED, error=f"too many redirects for {SECRET_URL}")
    record = await status(store, "d1")
    out = json.dumps(record) + format_status(record)
    for secret in SECRETS:
        assert secret not in out
    assert "example.com/big.iso" in record["url"] and "part=1" in record["url"]
    stream = io.StringIO()
    await watch(store, ["d1"], stream=stream, as_json=True)
    await watch(store, [], stream=stream)
    for secret in SECRETS:
        assert secret not in stream.getvalue()


def test_scrub() -> None:
    assert scrub("see https://u:pw12345@h/x?sig=1", ["https://u:pw12345@h/x?sig=1"]) == (
        "see https://u:REDACTED@h/x?sig=REDACTED"
    )
    assert "pw12345" not in scrub("login pw12345 failed", ["https://u:pw12345@h/other"])


async def test_unknown_download(store: Store) -> None:
    with pytest.raises(UsageError, match="no download nope"):
        await status(store, "nope")
    with pytest.raises(UsageError):
        await cancel(store, store.redis, SETTINGS, "nope")


async def test_statuses_lists_all(store: Store) -> None:
    assert [r["gid"] for r in await statuses(store)] == ["d1"]


async def test_cancel_removes_queued_jobs(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    jobs = [range_job("d1", r) for r in plan_ranges(4000, 1000)] + [finalize_job("d1")]
    await enqueue_jobs(redis, QUEUE, jobs, done_key=download_key("d1", "done"))
    await enqueue_jobs(redis, QUEUE, [range_job("other", Range(0, 9))], done_key="x")
    await redis.set(in_progress_key_prefix + "d1:0-999", b"1")  # running: left to notice the state
    assert await cancel(store, redis, SETTINGS, "d1") == 4
    assert await store.state("d1") is DownloadState.CANCELLED
    assert sorted(m.decode() for m in await redis.zrange(QUEUE, 0, -1)) == ["d1:0-999", "other:0-9"]
    assert not await redis.exists(job_key_prefix + "d1:1000-1999")
    assert await cancel(store, redis, SETTINGS, "d1") == 0  # again: harmless


async def test_state_transitions(store: Store) -> None:
    await store.set_state("d1", DownloadState.RUNNING)
    await store.set_state("d1", DownloadState.VERIFYING)
    await store.set_state("d1", DownloadState.COMPLETE)
    with pytest.raises(StateError, match="complete download cannot become cancelled"):
        await cancel(store, store.redis, SETTINGS, "d1")
    await store.set_state("d1", DownloadState.QUEUED)  # enqueued again
    await store.set_state("d1", DownloadState.FAILED)
    with pytest.raises(StateError):
        await store.set_state("d1", DownloadState.RUNNING)


async def test_follow_and_outcome(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    await store.set_state("d1", DownloadState.RUNNING)

    async def finish() -> None:
        while len(seen) < 3:
            await asyncio.sleep(0.001)
        await store.set_state("d1", DownloadState.VERIFYING)
        await store.set_state("d1", DownloadState.COMPLETE, sha256="ff")

    ticks = iter(range(0, 10_000, 100))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(finish())
        follower = tg.create_task(
            follow(store, "d1", on_status=lambda r: seen.append(r["state"]), interval=0.001, clock=lambda: next(ticks))
        )
    record = follower.result()
    assert seen[0] == "running" and record["state"] == "complete" and record["sha256"] == "ff"
    assert caplog.text.count("no live workers") == 1
    outcome(record)
    with pytest.raises(DownloadError, match="d1 failed: HTTP 404") as info:
        outcome({**record, "state": "failed", "errorMessage": "HTTP 404"})
    assert info.value.exit_code == 1
    with pytest.raises(CancelledDownloadError, match="cancelled"):
        outcome({**record, "state": "cancelled"})


async def test_workers(store: Store) -> None:
    assert format_workers([]) == "no live workers"
    now = time.time()
    await store.heartbeat(WorkerInfo("host-1-ab", "host", 1, 3, now))
    found = await store.workers()
    assert [w.id for w in found] == ["host-1-ab"]
    table = format_workers(found, now=found[0].heartbeat + 2)
    assert table.splitlines()[0].split() == ["ID", "HOST", "PID", "JOBS", "HEARTBEAT"]
    assert table.splitlines()[1].split() == ["host-1-ab", "host", "1", "3", "2s", "ago"]
    info = WorkerInfo("host-1-ab", "host", 1, 3, 1000.0)
    assert worker_record(info, now=1002.0) == {
        "id": "host-1-ab", "host": "host", "pid": 1, "jobs": 3, "heartbeat": 1000.0, "interface": None, "age": 2.0,
    }  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_watch_bars_until_finished(store: Store) -> None:
    await store.set_state("d1", DownloadState.CANCELLED)
    stream = _Terminal()
    records = await watch(store, [], stream=stream)
    assert [r["state"] for r in records] == ["cancelled"]
    assert "big.iso  d1 cancelled" in stream.getvalue() and "0/4 ranges" in stream.getvalue()
