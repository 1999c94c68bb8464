"""fetch_range / fetch_stream / probe against misbehaving servers played by httpx.MockTransport.

Every test checks the exact bytes handed to the writer at the exact offsets,
and that retries wait through the injected sleep only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable

import httpx
import pytest

from rangefetch import (
    Backoff,
    ConnectionLostError,
    HTTPStatusError,
    ProtocolError,
    Range,
    RemoteChangedError,
    RemoteFile,
    RetriesExhaustedError,
    RetryPolicy,
    fetch_range,
    fetch_stream,
    probe,
)

URL = "http://files.test/data.bin"
DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable by its neighbours
SIZE = len(DATA)
ETAG = '"v1"'
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
REMOTE = RemoteFile(url=URL, final_url=URL, size=SIZE, ranges=True, etag=ETAG, last_modified=LAST_MODIFIED)

Handler = Callable[[httpx.Request], httpx.Response]


class Memory:
    """An in-memory Writer that records every write."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    async def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, bytes(data)))

    def bytes_at(self, start: int) -> bytes:
        """The writes, which must be contiguous from ``start``, joined."""
        position = start
        for offset, data in self.writes:
            assert offset == position, f"write at {offset}, expected {position}"
            position += len(data)
        return b"".join(data for _, data in self.writes)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Script:
    """A MockTransport handler playing ``steps`` in order (the last one repeats), logging requests."""

    def __init__(self, *steps: Handler) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        return step(request)

    @property
    def ranges(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]


class Chunks(httpx.AsyncByteStream):
    """A body sent in the given pieces, optionally ending with a transport error.

    Responses built with ``content=`` arrive already read, so every body here is a stream.
    """

    def __init__(self, pieces: Iterable[bytes], error: Exception | None = None) -> None:
        self.pieces = list(pieces)
        self.error = error
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.sent += len(piece)
            yield piece
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


def asked(request: httpx.Request) -> tuple[int, int]:
    first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
    return int(first), int(last)


def ranged(
    *,
    data: bytes = DATA,
    etag: str | None = ETAG,
    keep: int | None = None,
    content_range: str | None = None,
    extra: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Handler:
    """A 206 for the asked range; ``keep`` cuts the body short (the length still promises all of it)."""

    def handle(request: httpx.Request) -> httpx.Response:
        first, last = asked(request)
        body = data[first : last + 1]
        out = {
            "Content-Range": content_range or f"bytes {first}-{last}/{len(data)}",
            "Content-Length": str(len(body)),
            **({"ETag": etag} if etag else {}),
            **(headers or {}),
        }
        return httpx.Response(206, headers=out, stream=Chunks([body[:keep] + extra]))

    return handle


def whole(
    *, data: bytes = DATA, etag: str | None = ETAG, keep: int | None = None, headers: dict[str, str] | None = None
) -> Handler:
    """A 200 with the whole file, whatever was asked."""

    def handle(request: httpx.Request) -> httpx.Response:
        out = {"Content-Length": str(len(data)), **({"ETag": etag} if etag else {}), **(headers or {})}
        return httpx.Response(200, headers=out, stream=Chunks([data[:keep]]))

    return handle


def status(code: int, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers, stream=Chunks([b"<html>error page</html>"]))

    return handle


def client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def backoff(sleep: FakeSleep, max_tries: int = 4) -> Backoff:
    return Backoff(RetryPolicy(max_tries=max_tries, backoff=1.0, backoff_max=8.0, jitter=0), sleep=sleep)


async def run_range(
    script: Script,
    rng: Range,
    *,
    remote: RemoteFile = REMOTE,
    done: int = 0,
    max_tries: int = 4,
) -> tuple[Memory, FakeSleep]:
    memory, sleep = Memory(), FakeSleep()
    async with client(script) as http:
        await fetch_range(http, remote, rng, memory, done=done, backoff=backoff(sleep, max_tries))
    return memory, sleep


async def fails(
    script: Script, rng: Range, error: type[Exception], *, remote: RemoteFile = REMOTE, max_tries: int = 4
) -> tuple[Exception, Memory, FakeSleep]:
    memory, sleep = Memory(), FakeSleep()
    async with client(script) as http:
        with pytest.raises(error) as info:
            await fetch_range(http, remote, rng, memory, backoff=backoff(sleep, max_tries))
    return info.value, memory, sleep


# --- fetch_range: well-behaved server ----------------------------------------------


async def test_range_is_written_at_its_offset() -> None:
    script = Script(ranged())
    memory, sleep = await run_range(script, Range(100, 4099))
    assert memory.bytes_at(100) == DATA[100:4100]
    assert sleep.delays == []
    (request,) = script.requests
    assert request.url == URL
    assert request.headers["range"] == "bytes=100-4099"
    assert request.headers["if-range"] == ETAG  # a strong ETag pins the version (§13.1.5)
    assert request.headers["accept-encoding"] == "identity"


async def test_done_bytes_are_skipped() -> None:
    script = Script(ranged())
    memory, _ = await run_range(script, Range(1000, 1999), done=600)
    assert script.ranges == ["bytes=1600-1999"]
    assert memory.bytes_at(1600) == DATA[1600:2000]


async def test_a_finished_range_sends_no_request() -> None:
    script = Script(ranged())
    memory, _ = await run_range(script, Range(0, 9), done=10)
    assert script.requests == [] and memory.writes == []


@pytest.mark.parametrize(
    ("etag", "last_modified", "if_range"),
    [('W/"weak"', LAST_MODIFIED, LAST_MODIFIED), (None, LAST_MODIFIED, LAST_MODIFIED), (None, None, None)],
)
async def test_if_range_validator(etag: str | None, last_modified: str | None, if_range: str | None) -> None:
    remote = RemoteFile(URL, URL, SIZE, True, etag=etag, last_modified=last_modified)
    script = Script(ranged(etag=etag))
    await run_range(script, Range(0, 99), remote=remote)
    assert script.requests[0].headers.get("if-range") == if_range


async def test_progress_is_reported() -> None:
    seen: list[int] = []
    async with client(Script(ranged())) as http:
        await fetch_range(http, REMOTE, Range(10, 5009), Memory(), on_progress=seen.append)
    assert sum(seen) == 5000


# --- fetch_range: misbehaving servers -----------------------------------------------


async def test_server_ignoring_range_with_the_same_validator_is_not_a_change() -> None:
    # A 200 with the probe's own ETag: the same file, sent whole (issue 9, item 14).
    exc, memory, sleep = await fails(Script(whole()), Range(100, 199), ProtocolError)
    assert "ignored Range" in str(exc) and "changed" not in str(exc)
    assert memory.writes == [] and sleep.delays == []
    assert exc.range == Range(100, 199)  # type: ignore[attr-defined]


async def test_server_ignoring_range_with_another_validator_means_the_file_changed() -> None:
    exc, memory, _ = await fails(Script(whole(etag='"other"')), Range(100, 199), RemoteChangedError)
    assert "ETag changed" in str(exc)
    assert memory.writes == []


async def test_server_ignoring_range_without_a_validator_is_a_protocol_error() -> None:
    remote = RemoteFile(URL, URL, SIZE, True)
    exc, memory, _ = await fails(Script(whole(etag=None)), Range(100, 199), ProtocolError, remote=remote)
    assert "ignored Range" in str(exc)
    assert memory.writes == []


async def test_whole_file_range_answered_with_200_is_accepted() -> None:
    memory, _ = await run_range(Script(whole()), Range(0, SIZE - 1))
    assert memory.bytes_at(0) == DATA


@pytest.mark.parametrize(
    "content_range",
    ["bytes 101-200/10244", "bytes 100-198/10244", "bytes 0-10243/10244", "bytes */10244", "garbage", "bytes 100-199"],
)
async def test_wrong_content_range_is_refused(content_range: str) -> None:
    exc, memory, sleep = await fails(Script(ranged(content_range=content_range)), Range(100, 199), ProtocolError)
    assert "Content-Range" in str(exc)
    assert memory.writes == [] and sleep.delays == []


async def test_missing_content_range_is_refused() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, stream=Chunks([DATA[100:200]]))

    _, memory, _ = await fails(Script(handle), Range(100, 199), ProtocolError)
    assert memory.writes == []


async def test_content_range_with_another_total_size_means_the_file_changed() -> None:
    exc, memory, _ = await fails(
        Script(ranged(content_range="bytes 100-199/20000")), Range(100, 199), RemoteChangedError
    )
    assert "now 20000 bytes, was 10244" in str(exc)
    assert memory.writes == []


async def test_short_body_is_resumed_from_the_right_byte() -> None:
    script = Script(ranged(keep=1234), ranged())
    memory, sleep = await run_range(script, Range(2000, 5999))
    assert script.ranges == ["bytes=2000-5999", "bytes=3234-5999"]
    assert all(r.headers["if-range"] == ETAG for r in script.requests)
    assert memory.bytes_at(2000) == DATA[2000:6000]
    assert sleep.delays == [1.0]


async def test_dropped_connection_is_resumed_from_the_right_byte() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        first, last = asked(request)
        stream = Chunks([DATA[first : first + 300], DATA[first + 300 : first + 700]], httpx.ReadError("reset"))
        headers = {"Content-Range": f"bytes {first}-{last}/{SIZE}", "Content-Length": str(last - first + 1)}
        return httpx.Response(206, headers=headers, stream=stream)

    script = Script(broken, broken, ranged())
    memory, sleep = await run_range(script, Range(0, 2999))
    assert script.ranges == ["bytes=0-2999", "bytes=700-2999", "bytes=1400-2999"]
    assert memory.bytes_at(0) == DATA[:3000]
    assert sleep.delays == [1.0, 1.0]  # each try made progress, so the count was reset


async def test_a_stall_is_retried() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no data", request=request)

    script = Script(stall, ranged())
    memory, sleep = await run_range(script, Range(0, 99))
    assert memory.bytes_at(0) == DATA[:100] and sleep.delays == [1.0]


async def test_progress_resets_the_retry_budget() -> None:
    # Every response stops after 100 bytes; with 2 tries a range of 1000 bytes still completes.
    script = Script(ranged(keep=100))
    memory, sleep = await run_range(script, Range(500, 1499), max_tries=2)
    assert len(script.requests) == 10
    assert memory.bytes_at(500) == DATA[500:1500]
    assert sleep.delays == [1.0] * 9


async def test_no_progress_exhausts_the_retries() -> None:
    exc, memory, sleep = await fails(Script(ranged(keep=0)), Range(0, 99), RetriesExhaustedError, max_tries=3)
    assert isinstance(exc.__cause__, ConnectionLostError)
    assert memory.writes == [] and sleep.delays == [1.0, 2.0]


async def test_body_longer_than_the_content_length_promises() -> None:
    # The Content-Length matches the range; the body runs past it.
    script = Script(ranged(extra=b"EXTRA"))
    _, memory, _ = await fails(script, Range(100, 199), ProtocolError)
    assert memory.writes == []


async def test_content_length_longer_than_the_range() -> None:
    script = Script(ranged(extra=b"EXTRA", headers={"Content-Length": "105"}))
    exc, memory, _ = await fails(script, Range(100, 199), ProtocolError)
    assert "Content-Length 105" in str(exc) and memory.writes == []


async def test_body_longer_than_asked_without_a_length() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        first, last = asked(request)
        stream = Chunks([DATA[first : last + 1], b"more bytes than asked"])
        return httpx.Response(206, headers={"Content-Range": f"bytes {first}-{last}/{SIZE}"}, stream=stream)

    _, memory, _ = await fails(Script(handle), Range(100, 199), ProtocolError)
    # What was asked may have been written; nothing past the range ever is.
    assert all(offset >= 100 and offset + len(data) <= 200 for offset, data in memory.writes)


async def test_encoded_body_is_refused() -> None:
    script = Script(ranged(headers={"Content-Encoding": "gzip"}))
    exc, memory, _ = await fails(script, Range(0, 99), ProtocolError)
    assert "gzip" in str(exc) and memory.writes == []


@pytest.mark.parametrize("code", [416, 412])
async def test_unsatisfiable_or_failed_precondition_means_the_file_changed(code: int) -> None:
    script = Script(status(code, **{"Content-Range": f"bytes */{SIZE}"}))
    exc, memory, sleep = await fails(script, Range(0, 99), RemoteChangedError)
    assert f"HTTP {code}" in str(exc)
    assert memory.writes == [] and sleep.delays == [] and len(script.requests) == 1


async def test_etag_change_on_a_later_response() -> None:
    script = Script(ranged(keep=40), ranged(etag='"v2"'))
    exc, memory, _ = await fails(script, Range(0, 99), RemoteChangedError)
    assert 'ETag changed from "v1" to "v2"' in str(exc)
    assert memory.bytes_at(0) == DATA[:40]  # only the first response's bytes
    assert len(script.requests) == 2


async def test_last_modified_change_without_etag() -> None:
    remote = RemoteFile(URL, URL, SIZE, True, last_modified=LAST_MODIFIED)
    script = Script(ranged(etag=None, headers={"Last-Modified": "Wed, 15 Nov 2023 00:00:00 GMT"}))
    _, memory, _ = await fails(script, Range(0, 99), RemoteChangedError, remote=remote)
    assert memory.writes == []


async def test_server_busy_then_success_honours_retry_after() -> None:
    script = Script(status(503, **{"Retry-After": "7"}), ranged())
    memory, sleep = await run_range(script, Range(0, 99))
    assert sleep.delays == [7.0]
    assert memory.bytes_at(0) == DATA[:100]
    assert script.ranges == ["bytes=0-99", "bytes=0-99"]


async def test_server_busy_forever_gives_up() -> None:
    script = Script(status(429))
    exc, memory, sleep = await fails(script, Range(0, 99), RetriesExhaustedError, max_tries=3)
    assert len(script.requests) == 3 and sleep.delays == [1.0, 2.0]
    assert "HTTP 429" in str(exc) and memory.writes == []


@pytest.mark.parametrize("code", [404, 403, 410, 501])
async def test_permanent_status_is_not_retried(code: int) -> None:
    exc, memory, sleep = await fails(Script(status(code)), Range(0, 99), HTTPStatusError)
    assert exc.status == code  # type: ignore[attr-defined]
    assert memory.writes == [] and sleep.delays == []


async def test_redirect_is_not_followed_silently() -> None:
    _, memory, _ = await fails(Script(status(302, Location="/elsewhere")), Range(0, 99), ProtocolError)
    assert memory.writes == []


# --- fetch_stream ----------------------------------------------------------------------


async def run_stream(script: Script, remote: RemoteFile) -> tuple[int, Memory, FakeSleep]:
    memory, sleep = Memory(), FakeSleep()
    async with client(script) as http:
        size = await fetch_stream(http, remote, memory, backoff=backoff(sleep))
    return size, memory, sleep


STREAM_REMOTE = RemoteFile(URL, URL, SIZE, False, etag=ETAG)


async def test_stream_fetches_the_whole_file() -> None:
    script = Script(whole())
    size, memory, _ = await run_stream(script, STREAM_REMOTE)
    assert size == SIZE and memory.bytes_at(0) == DATA
    assert script.requests[0].headers.get("range") is None


async def test_stream_retry_skips_what_was_written() -> None:
    def pieces(request: httpx.Request) -> httpx.Response:
        stream = Chunks([DATA[:1000], DATA[1000:2500]], httpx.ReadError("reset"))
        return httpx.Response(200, headers={"Content-Length": str(SIZE), "ETag": ETAG}, stream=stream)

    script = Script(pieces, whole(keep=4000), whole())
    size, memory, sleep = await run_stream(script, STREAM_REMOTE)
    assert size == SIZE
    assert memory.bytes_at(0) == DATA  # every byte exactly once, in order
    assert script.ranges == [None, None, None]
    assert sleep.delays == [1.0, 1.0]


async def test_stream_of_unknown_size() -> None:
    remote = RemoteFile(URL, URL, None, False)

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([DATA[:5000], DATA[5000:]]))

    size, memory, _ = await run_stream(Script(handle), remote)
    assert size == SIZE and memory.bytes_at(0) == DATA


async def test_stream_with_another_length_means_the_file_changed() -> None:
    memory, sleep = Memory(), FakeSleep()
    async with client(Script(whole(data=DATA + b"!"))) as http:
        with pytest.raises(RemoteChangedError):
            await fetch_stream(http, STREAM_REMOTE, memory, backoff=backoff(sleep))
    assert memory.writes == []


async def test_stream_longer_than_the_size_is_refused() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([DATA, b"junk"]))

    memory = Memory()
    async with client(Script(handle)) as http:
        with pytest.raises(ProtocolError):
            await fetch_stream(http, STREAM_REMOTE, memory)
    assert sum(len(d) for _, d in memory.writes) <= SIZE


async def test_stream_answered_with_206_is_refused() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, headers={"Content-Range": f"bytes 0-{SIZE - 1}/{SIZE}"}, stream=Chunks([DATA]))

    memory = Memory()
    async with client(Script(handle)) as http:
        with pytest.raises(ProtocolError):
            await fetch_stream(http, STREAM_REMOTE, memory)
    assert memory.writes == []


async def test_stream_error_page_is_never_written() -> None:
    memory, sleep = Memory(), FakeSleep()
    async with client(Script(status(404))) as http:
        with pytest.raises(HTTPStatusError):
            await fetch_stream(http, STREAM_REMOTE, memory, backoff=backoff(sleep))
    assert memory.writes == [] and sleep.delays == []


# --- probe ----------------------------------------------------------------------------


def head(*, length: int | None = SIZE, accept: str | None = "bytes", headers: dict[str, str] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        out = {**(headers or {})}
        if length is not None:
            out["Content-Length"] = str(length)
        if accept is not None:
            out["Accept-Ranges"] = accept
        return httpx.Response(200, headers=out)

    return handle


def by_method(head_handler: Handler, get_handler: Handler) -> Script:
    def handle(request: httpx.Request) -> httpx.Response:
        return head_handler(request) if request.method == "HEAD" else get_handler(request)

    return Script(handle)


def gets(script: Script) -> list[httpx.Request]:
    return [r for r in script.requests if r.method == "GET"]


async def run_probe(script: Script, sleep: FakeSleep | None = None) -> RemoteFile:
    async with client(script) as http:
        return await probe(http, URL, backoff=backoff(sleep or FakeSleep()))


async def test_probe_of_a_range_server() -> None:
    script = by_method(head(headers={"ETag": ETAG}), ranged(headers={"Last-Modified": LAST_MODIFIED}))
    remote = await run_probe(script)
    assert remote == RemoteFile(URL, URL, SIZE, True, etag=ETAG, last_modified=LAST_MODIFIED)
    assert [r.method for r in script.requests] == ["HEAD", "GET"]
    assert gets(script)[0].headers["range"] == "bytes=0-0"


async def test_probe_reads_no_more_than_the_headers() -> None:
    stream = Chunks([b"x" * 1000] * 100)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(405)
        # A server that ignores Range: the probe must not download the whole body.
        return httpx.Response(200, headers={"Content-Length": "100000"}, stream=stream)

    remote = await run_probe(Script(handle))
    assert (remote.size, remote.ranges) == (100000, False)
    assert stream.sent <= 1000 and stream.closed


@pytest.mark.parametrize("code", [405, 403, 501, 404])
async def test_probe_falls_back_to_get_when_head_fails(code: int) -> None:
    script = by_method(status(code), ranged())
    remote = await run_probe(script)
    assert (remote.size, remote.ranges, remote.etag) == (SIZE, True, ETAG)


async def test_probe_head_transport_error_falls_back_to_get() -> None:
    def broken_head(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    remote = await run_probe(by_method(broken_head, ranged()))
    assert (remote.size, remote.ranges) == (SIZE, True)


async def test_probe_trusts_get_over_head(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rangefetch.probe")
    script = by_method(head(length=SIZE + 1000, headers={"ETag": '"head-etag"'}), ranged())
    remote = await run_probe(script)
    assert remote.size == SIZE
    assert remote.etag == ETAG
    assert "trusting GET" in caplog.text


async def test_probe_head_accept_ranges_none_but_get_206() -> None:
    remote = await run_probe(by_method(head(accept="none"), ranged()))
    assert (remote.size, remote.ranges) == (SIZE, True)


async def test_probe_of_an_empty_file() -> None:
    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(416, headers={"Content-Range": "bytes */0", "ETag": ETAG}, stream=Chunks([]))

    remote = await run_probe(by_method(head(length=0), empty))
    assert (remote.size, remote.ranges) == (0, False)


async def test_probe_of_a_server_ignoring_range() -> None:
    remote = await run_probe(by_method(head(accept=None), whole(etag=None)))
    assert (remote.size, remote.ranges, remote.etag) == (SIZE, False, None)


async def test_probe_accept_ranges_none() -> None:
    remote = await run_probe(by_method(head(accept="none"), whole(headers={"Accept-Ranges": "none"})))
    assert (remote.size, remote.ranges) == (SIZE, False)


async def test_probe_206_with_accept_ranges_none_is_not_trusted() -> None:
    remote = await run_probe(by_method(head(), ranged(headers={"Accept-Ranges": "none"})))
    assert remote.ranges is False


async def test_probe_of_unknown_size() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([DATA]))

    remote = await run_probe(by_method(head(length=None, accept=None), handle))
    assert (remote.size, remote.ranges) == (None, False)


async def test_probe_gzip_length_is_not_a_size() -> None:
    remote = await run_probe(by_method(head(length=None), whole(headers={"Content-Encoding": "gzip"})))
    assert remote.size is None


async def test_probe_keeps_content_disposition_and_validators_from_head() -> None:
    script = by_method(
        head(headers={"Content-Disposition": 'attachment; filename="x.bin"', "Last-Modified": LAST_MODIFIED}),
        ranged(etag=None),
    )
    remote = await run_probe(script)
    assert remote.content_disposition == 'attachment; filename="x.bin"'
    assert remote.last_modified == LAST_MODIFIED and remote.validator == LAST_MODIFIED


async def test_probe_follows_redirects_to_the_final_url() -> None:
    final = "http://cdn.test/real.bin"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url == URL:
            return httpx.Response(302, headers={"Location": final})
        return ranged()(request) if request.method == "GET" else head()(request)

    remote = await run_probe(Script(handle))
    assert (remote.url, remote.final_url, remote.size) == (URL, final, SIZE)


async def test_probe_permanent_error() -> None:
    sleep = FakeSleep()
    script = by_method(status(404), status(404))
    with pytest.raises(HTTPStatusError) as info:
        await run_probe(script, sleep)
    assert info.value.status == 404 and sleep.delays == []
    assert len(gets(script)) == 1


async def test_probe_retries_a_busy_server() -> None:
    sleep = FakeSleep()
    answers = iter([status(503, **{"Retry-After": "3"}), ranged()])
    script = by_method(status(405), lambda request: next(answers)(request))
    remote = await run_probe(script, sleep)
    assert remote.size == SIZE and sleep.delays == [3.0]
