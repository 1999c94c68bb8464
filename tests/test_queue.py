"""Bulk, fair job writing (rangefetch/distributed/queue.py) against fakeredis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus

from rangefetch import Range, plan_ranges
from rangefetch.distributed.keys import download_key
from rangefetch.distributed.queue import (
    JOB_TTL_MS,
    enqueue_finalizer,
    enqueue_jobs,
    enqueue_ranges,
    fair_scores,
    finalize_job,
    queue_head,
    range_job,
    remove_jobs,
)

QUEUE = "rangefetch:queue"
NOW = 1_700_000_000_000


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


def jobs_for(download_id: str, count: int) -> list:
    return [range_job(download_id, r) for r in plan_ranges(count * 10, 10)]


def test_job_ids_are_deterministic() -> None:
    job = range_job("abc", Range(0, 99))
    assert job.id == "abc:0-99" == range_job("abc", Range(0, 99)).id
    assert job.function == "fetch_range" and job.args == ("abc", 0, 99) and job.done_member == "0-99"
    fin = finalize_job("abc")
    assert (fin.id, fin.function, fin.args, fin.done_member) == ("abc:finalize", "finalize", ("abc",), None)


async def test_bulk_jobs_are_readable_by_arq(redis: fakeredis.FakeAsyncRedis) -> None:
    jobs = jobs_for("dl", 5) + [finalize_job("dl")]
    added = await enqueue_jobs(redis, QUEUE, jobs, done_key=download_key("dl", "done"), now=NOW, batch=2)
    assert added == 6
    info = await ArqJob("dl:10-19", redis, _queue_name=QUEUE).info()
    assert info is not None
    assert (info.function, info.args, info.kwargs, info.job_try) == ("fetch_range", ("dl", 10, 19), {}, None)
    assert info.enqueue_time.timestamp() * 1000 == pytest.approx(NOW, abs=1)
    assert info.score == NOW + 1
    assert await ArqJob("dl:10-19", redis, _queue_name=QUEUE).status() is JobStatus.queued
    fin = await ArqJob("dl:finalize", redis, _queue_name=QUEUE).info()
    assert fin is not None and fin.function == "finalize" and fin.args == ("dl",)
    ttl = await redis.pttl(job_key_prefix + "dl:0-9")
    assert JOB_TTL_MS - 5000 < ttl <= JOB_TTL_MS + 1000


async def test_enqueue_skips_existing_and_done(redis: fakeredis.FakeAsyncRedis) -> None:
    jobs = jobs_for("dl", 4)
    done_key = download_key("dl", "done")
    assert await enqueue_jobs(redis, QUEUE, jobs[:2], done_key=done_key, now=NOW) == 2
    await redis.sadd(done_key, "20-29")
    # An earlier try's result and retry counter must not block or age the new job.
    await redis.set(result_key_prefix + "dl:30-39", b"old")
    await redis.set(retry_key_prefix + "dl:30-39", 5)
    assert await enqueue_jobs(redis, QUEUE, jobs, done_key=done_key, now=NOW) == 1
    members = {m.decode() for m in await redis.zrange(QUEUE, 0, -1)}
    assert members == {"dl:0-9", "dl:10-19", "dl:30-39"}
    assert not await redis.exists(result_key_prefix + "dl:30-39", retry_key_prefix + "dl:30-39")
    assert await enqueue_jobs(redis, QUEUE, jobs, done_key=done_key, now=NOW) == 0


def test_fair_scores() -> None:
    assert fair_scores(100, 3) == [100, 101, 102]
    assert fair_scores(5, 0) == []


async def test_queue_head(redis: fakeredis.FakeAsyncRedis) -> None:
    assert await queue_head(redis, QUEUE, now=NOW) == NOW
    await redis.zadd(QUEUE, {"old": NOW - 5000, "later": NOW + 10})
    assert await queue_head(redis, QUEUE, now=NOW) == NOW - 5000
    await redis.zrem(QUEUE, "old")
    assert await queue_head(redis, QUEUE, now=NOW) == NOW  # a deferred job does not push the head forward


async def test_two_downloads_interleave(redis: fakeredis.FakeAsyncRedis) -> None:
    await enqueue_jobs(redis, QUEUE, jobs_for("big", 100), done_key="d1", now=NOW)
    # The big download's first 10 ranges were taken and finished meanwhile.
    await redis.zremrangebyrank(QUEUE, 0, 9)
    await enqueue_jobs(redis, QUEUE, jobs_for("small", 3), done_key="d2", now=NOW + 60_000)
    order = [m.decode().split(":")[0] for m in await redis.zrange(QUEUE, 0, 7)]
    assert order == ["big", "small", "big", "small", "big", "small", "big", "big"]


async def test_front_jobs_go_before_a_backlog_in_order(redis: fakeredis.FakeAsyncRedis) -> None:
    await enqueue_jobs(redis, QUEUE, jobs_for("big", 100), done_key="d1", now=NOW - 60_000)
    await enqueue_jobs(redis, QUEUE, jobs_for("redo", 2), done_key="d2", front=True, now=NOW)
    first = await redis.zrange(QUEUE, 0, 2, withscores=True)
    assert [(m.decode(), int(s)) for m, s in first] == [
        ("redo:0-9", NOW - 60_002), ("redo:10-19", NOW - 60_001), ("big:0-9", NOW - 60_000),
    ]  # fmt: skip


async def test_enqueue_ranges_and_finalizer(redis: fakeredis.FakeAsyncRedis) -> None:
    await enqueue_jobs(redis, QUEUE, jobs_for("big", 10), done_key="d1", now=NOW)
    ranges = plan_ranges(30, 10)
    await redis.sadd(download_key("dl", "done"), "0-9")
    assert await enqueue_ranges(redis, QUEUE, "dl", ranges) == 2  # fair: interleaved with "big"
    assert await redis.zscore(QUEUE, "dl:10-19") == NOW + 1
    assert await enqueue_ranges(redis, QUEUE, "dl", ranges, front=True) == 0
    assert await enqueue_finalizer(redis, QUEUE, "dl")
    assert not await enqueue_finalizer(redis, QUEUE, "dl")  # queued already
    assert (await redis.zrange(QUEUE, 0, 0))[0] == b"dl:finalize"


async def test_remove_jobs_keeps_running_ones(redis: fakeredis.FakeAsyncRedis) -> None:
    jobs = jobs_for("dl", 3)
    await enqueue_jobs(redis, QUEUE, jobs, done_key="d", now=NOW)
    await redis.set(in_progress_key_prefix + "dl:0-9", b"1")
    removed = await remove_jobs(redis, QUEUE, [j.id for j in jobs] + ["dl:finalize"])
    assert removed == 2
    assert [m.decode() for m in await redis.zrange(QUEUE, 0, -1)] == ["dl:0-9"]
    assert await redis.exists(job_key_prefix + "dl:0-9")
    assert not await redis.exists(job_key_prefix + "dl:10-19", job_key_prefix + "dl:20-29")
