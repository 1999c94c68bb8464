"""The producer's enqueue (producer/enqueue.py): fakeredis plus the real range server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import fakeredis
import httpx
import pytest
from arq.constants import job_key_prefix
from rangeserver import RangeServer

from rangefetch import (
    Checksum,
    PermanentError,
    Settings,
    UnknownSizeError,
    UnsafePathError,
    UsageError,
)
from rangefetch.distributed.keys import download_key
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store
from rangefetch.plan import MAX_RANGES, MIN_REQUESTED_CHUNK, choose_chunk_size
from rangefetch.producer.enqueue import download_id, enqueue, resolve_target
from rangefetch.settings import Distributed

CHUNK = MIN_REQUESTED_CHUNK  # the smallest --chunk-size there is (64 KiB)
DATA = os.urandom(10 * CHUNK + 7)  # 11 ranges
QUEUE = Distributed.model_fields["queue_name"].default


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(download_dir=tmp_path / "dl", chunk_size=CHUNK, connections=4)


@pytest.fixture
def url(server: RangeServer) -> str:
    server.add_file("data.bin", DATA)
    return server.url("data.bin")


async def queued(redis: fakeredis.FakeAsyncRedis) -> list[str]:
    return [m.decode() for m in await redis.zrange(QUEUE, 0, -1)]


async def test_new_download(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str) -> None:
    result = await enqueue(
        url, settings=settings, redis=redis, headers={"Authorization": "Bearer s3cret"},
        checksum=Checksum("sha256", hashlib.sha256(DATA).hexdigest()),
    )  # fmt: skip
    assert result.id == hashlib.sha256(f"{url}\ndata.bin".encode()).hexdigest()[:16] == download_id(url, "data.bin")
    assert result.path == (settings.download_dir / "data.bin").resolve()
    assert (result.size, result.added, result.state) == (len(DATA), 11, DownloadState.QUEUED)
    part = result.path.with_name("data.bin.part")
    assert part.stat().st_size == len(DATA)
    spec = await Store(redis).spec(result.id)
    assert spec is not None
    assert (spec.path, spec.size, spec.chunk_size, spec.ranges) == ("data.bin", len(DATA), CHUNK, 11)
    assert spec.connections == 4
    assert spec.headers == {"Authorization": "Bearer s3cret"}
    assert spec.checksum == f"sha256={hashlib.sha256(DATA).hexdigest()}"
    fields = await redis.hgetall(download_key(result.id))
    assert b"s3cret" not in b"".join([*fields.keys(), *fields.values()])
    ids = await queued(redis)
    assert ids[0] == f"{result.id}:0-{CHUNK - 1}" and ids[-1] == f"{result.id}:{10 * CHUNK}-{len(DATA) - 1}"
    assert len(ids) == 11


async def test_enqueue_again_is_idempotent(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str) -> None:
    first = await enqueue(url, settings=settings, redis=redis)
    again = await enqueue(url, settings=settings, redis=redis)
    assert again.id == first.id and again.added == 0 and again.state is DownloadState.QUEUED
    assert len(await queued(redis)) == 11


async def test_resume_enqueues_only_missing(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str) -> None:
    first = await enqueue(url, settings=settings, redis=redis)
    store = Store(redis)
    part = first.path.with_name("data.bin.part")
    with open(part, "r+b") as f:  # pretend a worker wrote the first two ranges
        f.write(DATA[: 2 * CHUNK])
    for r in (f"0-{CHUNK - 1}", f"{CHUNK}-{2 * CHUNK - 1}"):
        await redis.sadd(download_key(first.id, "done"), r)
        await redis.hset(download_key(first.id, "progress"), r, str(CHUNK))
    await store.set_state(first.id, DownloadState.CANCELLED)
    await redis.delete(QUEUE, *(job_key_prefix + i for i in await queued(redis)))

    again = await enqueue(url, settings=settings, redis=redis)
    assert again.id == first.id and again.added == 9
    assert f"{first.id}:0-{CHUNK - 1}" not in await queued(redis)
    assert part.read_bytes()[: 2 * CHUNK] == DATA[: 2 * CHUNK]  # kept
    assert await store.state(first.id) is DownloadState.QUEUED
    assert (await redis.hget(download_key(first.id), "resumed")) == str(2 * CHUNK).encode()


async def test_changed_remote_starts_over(
    redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str, server: RangeServer
) -> None:
    first = await enqueue(url, settings=settings, redis=redis)
    old_etag = await redis.hget(download_key(first.id), "etag")
    await redis.sadd(download_key(first.id, "done"), f"0-{CHUNK - 1}")
    await Store(redis).set_state(first.id, DownloadState.FAILED, error="boom")
    part = first.path.with_name("data.bin.part")
    part.write_bytes(b"x" * len(DATA))
    server.add_file("data.bin", bytes(reversed(DATA)))  # a new version: new ETag
    again = await enqueue(url, settings=settings, redis=redis)
    assert again.id == first.id
    assert not await redis.smembers(download_key(first.id, "done"))
    assert part.read_bytes() == bytes(len(DATA))  # reallocated: zeros
    assert (await redis.hget(download_key(first.id), "error")) is None
    assert old_etag and (await redis.hget(download_key(first.id), "etag")) not in (None, old_etag)


async def test_dropped_facts_do_not_linger(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str) -> None:
    checksum = Checksum("sha256", hashlib.sha256(DATA).hexdigest())
    first = await enqueue(url, settings=settings, redis=redis, checksum=checksum)
    await Store(redis).set_state(first.id, DownloadState.CANCELLED)
    await enqueue(url, settings=settings, redis=redis)  # resumed without --checksum
    spec = await Store(redis).spec(first.id)
    assert spec is not None and spec.checksum is None and spec.etag is not None


async def test_complete_download_is_left_alone(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str) -> None:
    first = await enqueue(url, settings=settings, redis=redis)
    store = Store(redis)
    await store.set_state(first.id, DownloadState.VERIFYING)
    await store.set_state(first.id, DownloadState.COMPLETE)
    first.path.with_name("data.bin.part").rename(first.path)
    await redis.delete(QUEUE, *(job_key_prefix + i for i in await queued(redis)))
    again = await enqueue(url, settings=settings, redis=redis)
    assert (again.id, again.added, again.state) == (first.id, 0, DownloadState.COMPLETE)
    assert not first.path.with_name("data.bin.part").exists()
    # Once the file is gone, enqueuing downloads it again.
    first.path.unlink()
    third = await enqueue(url, settings=settings, redis=redis)
    assert (third.added, third.state) == (11, DownloadState.QUEUED)


async def test_empty_file_enqueues_only_finalizer(
    redis: fakeredis.FakeAsyncRedis, settings: Settings, server: RangeServer
) -> None:
    server.add_file("empty", b"")
    result = await enqueue(server.url("empty"), settings=settings, redis=redis)
    assert await queued(redis) == [f"{result.id}:finalize"]
    assert result.path.with_name("empty.part").stat().st_size == 0


@pytest.mark.parametrize(("fault", "error"), [("norange", PermanentError), ("nolength", UnknownSizeError)])
async def test_undistributable_servers_are_refused(
    redis: fakeredis.FakeAsyncRedis, settings: Settings, server: RangeServer, fault: str, error: type
) -> None:
    server.add_file("plain", DATA)
    with pytest.raises(error, match="embedded") as info:
        await enqueue(server.url("plain", **{fault: 1}), settings=settings, redis=redis)
    assert info.value.exit_code == 1
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    ("output", "directory"),
    [("../x", None), ("/etc/x", None), ("a/../../x", None), (None, "/tmp"), (None, "..")],
)
async def test_paths_outside_are_refused(
    redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str, output: str | None, directory: str | None
) -> None:
    with pytest.raises(UnsafePathError) as info:
        await enqueue(url, settings=settings, redis=redis, output=output, directory=directory)
    assert info.value.exit_code == 2
    assert await redis.dbsize() == 0


async def test_paths_inside(redis: fakeredis.FakeAsyncRedis, settings: Settings, url: str, server: RangeServer) -> None:
    base = settings.download_dir.resolve()
    a = await enqueue(url, settings=settings, redis=redis, output="sub/out.bin")
    assert a.path == base / "sub" / "out.bin"
    b = await enqueue(url, settings=settings, redis=redis, directory="folder")
    assert b.path == base / "folder" / "data.bin"
    c = await enqueue(url, settings=settings, redis=redis, output=str(base / "abs.bin"))
    assert c.path == base / "abs.bin"
    evil = await enqueue(server.url("data.bin", cd="../../evil.sh"), settings=settings, redis=redis)
    assert evil.path == base / "evil.sh"
    assert len({a.id, b.id, c.id, evil.id}) == 4


def test_resolve_target_needs_one_of_output_or_dir(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not both"):
        resolve_target(tmp_path, None, output="a", directory="b")
    assert resolve_target(tmp_path, None, directory="b") is None


async def test_default_ranges_are_smaller_than_embedded_modes(
    redis: fakeredis.FakeAsyncRedis, tmp_path: Path, server: RangeServer
) -> None:
    data = os.urandom(64 * 1024 * 1024 + 5)
    server.add_file("big.bin", data)
    settings = Settings(download_dir=tmp_path / "dl", connections=4)
    result = await enqueue(server.url("big.bin"), settings=settings, redis=redis)
    spec = await Store(redis).spec(result.id)
    assert spec is not None
    # Embedded mode aims at 4 ranges per connection (64 MiB / 16, rounded up to whole MiB), distributed mode at 8.
    assert choose_chunk_size(len(data), 4) == 5 * 1024 * 1024
    assert spec.chunk_size == choose_chunk_size(len(data), 4, per_connection=8) == 3 * 1024 * 1024
    assert spec.ranges == result.added == 22


async def test_a_chunk_size_below_the_floor_is_refused_before_any_request(
    redis: fakeredis.FakeAsyncRedis, tmp_path: Path, server: RangeServer, url: str
) -> None:
    settings = Settings(download_dir=tmp_path / "dl", chunk_size=MIN_REQUESTED_CHUNK - 1024, connections=4)
    with pytest.raises(UsageError, match="chunk size 63K is too small: use at least 64K") as info:
        await enqueue(url, settings=settings, redis=redis)
    assert info.value.exit_code == 2
    assert server.requests_for("data.bin") == []
    assert await redis.dbsize() == 0
    assert not (tmp_path / "dl").exists()


async def test_a_chunk_size_that_cuts_too_many_ranges_is_grown(redis: fakeredis.FakeAsyncRedis, tmp_path: Path) -> None:
    # A file just over MAX_RANGES ranges of 64 KiB (625 MiB): served by a stand-in
    # that only answers the probe; the .part file is preallocated, not written.
    size = MAX_RANGES * MIN_REQUESTED_CHUNK + 1

    def origin(request: httpx.Request) -> httpx.Response:
        headers = {"etag": '"v1"', "accept-ranges": "bytes"}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "content-length": str(size)})
        return httpx.Response(206, headers={**headers, "content-range": f"bytes 0-0/{size}"}, content=b"x")

    settings = Settings(download_dir=tmp_path / "dl", chunk_size=MIN_REQUESTED_CHUNK, connections=4)
    async with httpx.AsyncClient(transport=httpx.MockTransport(origin)) as client:
        result = await enqueue("http://files.test/huge.bin", settings=settings, redis=redis, client=client)
    spec = await Store(redis).spec(result.id)
    assert spec is not None
    assert spec.chunk_size == 2 * MIN_REQUESTED_CHUNK  # the smallest multiple of 64 KiB within MAX_RANGES
    assert spec.ranges == MAX_RANGES // 2 + 1 <= MAX_RANGES
    # Runs of ranges: at most per_download jobs.
    assert result.added == -(-spec.ranges // spec.job_ranges) <= settings.distributed.jobs.per_download
