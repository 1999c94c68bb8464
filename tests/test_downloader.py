"""The seed API, ``Downloader``, against the real range server.

Every test reassembles what ``start()`` yields into a buffer, checks that
each byte came exactly once at its absolute offset, and compares the sha256
with the served bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import types
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from rangeserver import RangeServer

from rangefetch import (
    Downloader,
    HTTPStatusError,
    RemoteChangedError,
    RetryPolicy,
    Settings,
    UnknownSizeError,
    UsageError,
)

PRIME = 5_000_011  # a prime near 5 MB: divisible by no worker count or block size
BIG = os.urandom(PRIME)
FAST = Settings(retry=RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4))

Chunk = tuple[int, int, bytes]


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def assemble(chunks: list[Chunk], size: int) -> bytes:
    """The file the chunks make up; fails unless every byte came exactly once."""
    buffer = bytearray(size)
    seen = bytearray(size)
    for start, end, content in chunks:
        assert end == start + len(content), (start, end, len(content))
        assert 0 <= start < end <= size, (start, end, size)
        assert not any(seen[start:end]), f"bytes {start}-{end} yielded twice"
        buffer[start:end] = content
        seen[start:end] = b"\1" * (end - start)
    assert all(seen), f"bytes never yielded, first at {seen.index(0)}"
    return bytes(buffer)


async def collect(downloader: Downloader) -> list[Chunk]:
    return [chunk async for chunk in downloader.start()]


def ranges_asked(server: RangeServer, name: str) -> list[tuple[int, int]]:
    """The (first, last) of every ranged GET the server saw, probe excluded."""
    spans = []
    for rec in server.requests_for(name):
        value = rec.headers.get("range")
        if rec.method == "GET" and value and value != "bytes=0-0":
            first, _, last = value.removeprefix("bytes=").partition("-")
            spans.append((int(first), int(last)))
    return spans


@pytest.fixture
def big(server: RangeServer) -> RangeServer:
    server.add_file("big", BIG)
    return server


def test_prime_is_prime() -> None:
    assert is_prime(PRIME)


# --- every byte exactly once ---------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 17, 1024 * 1024 + 1])
@pytest.mark.parametrize("max_workers", [1, 3, 64])
async def test_small_sizes(server: RangeServer, size: int, max_workers: int) -> None:
    data = os.urandom(size)
    server.add_file(f"s{size}", data)
    async with Downloader(server.url(f"s{size}"), max_workers=max_workers, block_size=4096, settings=FAST) as d:
        assert await d.get_size() == size
        chunks = await collect(d)
    assert assemble(chunks, size) == data
    if size == 0:
        assert chunks == []
        assert ranges_asked(server, f"s{size}") == []  # an empty file needs no range request


async def test_prime_size_many_workers(big: RangeServer) -> None:
    async with Downloader(big.url("big"), max_workers=7, block_size=100_000, settings=FAST) as d:
        assert await d.get_size() == PRIME
        chunks = await collect(d)
    got = assemble(chunks, PRIME)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(BIG).hexdigest()
    assert 1 < len(ranges_asked(big, "big")) and big.max_concurrent <= 7


async def test_default_arguments(big: RangeServer) -> None:
    async with Downloader(big.url("big")) as d:
        chunks = await collect(d)
    assert assemble(chunks, PRIME) == BIG
    assert max(len(c) for _, _, c in chunks) == 1024 * 1024  # block_size defaults to 1 MiB


async def test_pieces_are_block_size_except_the_last_of_each_range(big: RangeServer) -> None:
    block = 65_000
    async with Downloader(big.url("big"), max_workers=4, block_size=block, settings=FAST) as d:
        chunks = await collect(d)
    assert assemble(chunks, PRIME) == BIG
    spans = ranges_asked(big, "big")
    assert len(spans) > 1
    assert sorted(spans)[0][0] == 0 and sorted(spans)[-1][1] == PRIME - 1
    ends = {last + 1 for _, last in spans}
    for start, end, content in chunks:
        (first, last) = next(s for s in spans if s[0] <= start <= s[1])
        assert end <= last + 1  # a piece never straddles two ranges
        if len(content) != block:
            assert end in ends and len(content) < block
    # Ranges hold whole blocks, so only a range's last piece is short.
    assert all((last - first + 1) % block == 0 for first, last in spans if last != PRIME - 1)


async def test_more_workers_than_bytes(server: RangeServer) -> None:
    server.add_file("tiny", b"0123456789abcdefg")
    async with Downloader(server.url("tiny"), max_workers=100, block_size=5, settings=FAST) as d:
        chunks = await collect(d)
    assert assemble(chunks, 17) == b"0123456789abcdefg"
    assert sorted(len(c) for _, _, c in chunks) == [2, 5, 5, 5]


# --- the caller's client, and the loop argument --------------------------------------


async def test_the_callers_client_is_used_and_left_open(big: RangeServer) -> None:
    async with httpx.AsyncClient(headers={"X-Caller": "mine"}) as client:
        async with Downloader(big.url("big"), max_workers=4, client=client, settings=FAST) as d:
            assert d.client is client
            chunks = await collect(d)
        assert not client.is_closed
        assert assemble(chunks, PRIME) == BIG
        assert all(rec.headers.get("x-caller") == "mine" for rec in big.requests_for("big"))
        assert (await client.get(big.url("big"), headers={"Range": "bytes=0-9"})).content == BIG[:10]


async def test_its_own_client_is_closed(big: RangeServer) -> None:
    async with Downloader(big.url("big"), settings=FAST) as d:
        await d.get_size()
        client = d.client
    assert client.is_closed


async def test_loop_argument_is_accepted_with_a_deprecation_warning(server: RangeServer) -> None:
    server.add_file("f", b"abc")
    with pytest.warns(DeprecationWarning, match="loop"):
        downloader = Downloader(server.url("f"), 2, 1024, None, asyncio.get_running_loop())
    async with downloader as d:
        assert assemble(await collect(d), 3) == b"abc"


@pytest.mark.parametrize("kwargs", [{"max_workers": 0}, {"block_size": 0}])
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Downloader("http://127.0.0.1:1/f", **kwargs)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/f", "file:///etc/passwd", "not a url"])
def test_bad_url(url: str) -> None:
    with pytest.raises(UsageError):
        Downloader(url)


# --- errors reach the caller; error pages never become content -------------------------


async def test_missing_file_raises_http_status_error(server: RangeServer) -> None:
    async with Downloader(server.url("no-such-file"), settings=FAST) as d:
        with pytest.raises(HTTPStatusError) as info:
            await d.get_size()
        assert info.value.status == 404
    chunks: list[Chunk] = []
    async with Downloader(server.url("no-such-file"), settings=FAST) as d:
        with pytest.raises(HTTPStatusError):
            async for chunk in d.start():
                chunks.append(chunk)
    assert chunks == []


@pytest.mark.parametrize("change_after", [1, 3])
async def test_remote_change_raises_and_no_changed_byte_is_yielded(big: RangeServer, change_after: int) -> None:
    chunks: list[Chunk] = []
    url = big.url("big", etag_change_after=change_after)
    async with Downloader(url, max_workers=2, block_size=50_000, settings=FAST) as d:
        with pytest.raises(RemoteChangedError):
            async for chunk in d.start():
                chunks.append(chunk)
    if change_after == 1:
        assert chunks == []  # every range request already sees the new version
    for start, end, content in chunks:  # whatever came before the change is the old file
        assert content == BIG[start:end]


async def test_server_errors_are_retried_and_never_yielded(big: RangeServer) -> None:
    url = big.url("big", status=503, times=3, key="busy")
    async with Downloader(url, max_workers=4, block_size=100_000, settings=FAST) as d:
        chunks = await collect(d)
    assert assemble(chunks, PRIME) == BIG


async def test_a_server_that_ignores_range(big: RangeServer) -> None:
    async with Downloader(big.url("big", norange=1), max_workers=4, block_size=300_000, settings=FAST) as d:
        assert await d.get_size() == PRIME
        chunks = await collect(d)
    assert assemble(chunks, PRIME) == BIG
    assert all(len(c) == 300_000 for _, _, c in sorted(chunks)[:-1])
    gets = [r for r in big.requests_for("big") if r.method == "GET"]
    assert len(gets) == 2  # the probe, then one plain GET for the whole file


async def test_dropped_stream_of_a_server_that_ignores_range(big: RangeServer) -> None:
    url = big.url("big", norange=1, drop=1_000_000, times=2)
    async with Downloader(url, max_workers=4, block_size=300_000, settings=FAST) as d:
        chunks = await collect(d)
    assert assemble(chunks, PRIME) == BIG


async def test_unknown_size(big: RangeServer) -> None:
    async with Downloader(big.url("big", nolength=1), settings=FAST) as d:
        with pytest.raises(UnknownSizeError):
            await d.get_size()
        chunks = await collect(d)  # start() still works
    assert assemble(chunks, PRIME) == BIG


# --- bounded memory, clean cancellation ---------------------------------------------------


class CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.inner:
            self.counter[0] += len(piece)
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the response body bytes the client has taken off the wire."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.received = [0]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=CountingStream(response.stream, self.received),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_slow_consumer_keeps_memory_bounded(big: RangeServer) -> None:
    workers, block = 4, 16 * 1024
    transport = CountingTransport()
    consumed = worst = 0
    async with httpx.AsyncClient(transport=transport) as client:
        async with Downloader(big.url("big"), max_workers=workers, block_size=block, client=client) as d:
            await d.get_size()
            async for _, _, content in d.start():
                consumed += len(content)
                worst = max(worst, transport.received[0] - consumed)
                if consumed < PRIME // 2:
                    await asyncio.sleep(0.001)
    assert consumed == PRIME
    # Taken off the wire but not yet yielded: the queue (2 per worker), the piece
    # being handed over, and per worker one piece waiting to be queued, a partial
    # piece and one network read (httpcore reads at most 64 KiB).
    bound = (2 * workers + 1) * block + workers * (2 * block + 64 * 1024)
    assert worst <= bound < PRIME // 5


def leftover(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started since ``before`` that are still running coroutines (ours or httpx's).

    Left out: the event loop's own tasks that finish closing async generators
    abandoned mid-iteration (httpx's body iterators when a fetch is cancelled);
    ``settled()`` waits for those.
    """
    return {
        t for t in asyncio.all_tasks() - before if not t.done() and isinstance(t.get_coro(), types.CoroutineType)
    }


async def settled(before: set[asyncio.Task[Any]]) -> bool:
    """Whether every task started since ``before`` ends within a second."""
    for _ in range(100):
        if all(t.done() for t in asyncio.all_tasks() - before):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_breaking_out_early_cancels_cleanly(big: RangeServer) -> None:
    before = asyncio.all_tasks()
    async with Downloader(big.url("big"), max_workers=4, block_size=10_000, settings=FAST) as d:
        async with contextlib.aclosing(d.start()) as chunks:
            async for start, end, content in chunks:
                assert content == BIG[start:end]
                break
        assert leftover(before) == set()  # closing the iterator cancelled every task it started
    assert d.client.is_closed
    assert await settled(before)


async def test_breaking_out_of_a_bare_loop_cancels_soon(big: RangeServer) -> None:
    # The seed's own pattern: no aclosing(); the event loop's async-generator
    # finaliser closes the iterator as soon as it is dropped.
    before = asyncio.all_tasks()
    async with httpx.AsyncClient() as client:
        async with Downloader(big.url("big"), max_workers=4, block_size=10_000, client=client, settings=FAST) as d:
            async for _ in d.start():
                break
            assert await settled(before)
        # The client is still usable: no connection was left half-read in the pool.
        assert (await client.get(big.url("big"), headers={"Range": "bytes=0-3"})).content == BIG[:4]
