"""Fetching bytes: one range, or the whole file as one stream.

``fetch_range`` is the unit of work both schedulers share: the embedded
downloader runs many of them in a task group, and each distributed range job
runs one.  It pins the file version with ``If-Range`` (RFC 9110 §13.1.5),
accepts only a 206 whose ``Content-Range`` is exactly what was asked
(§14.4, §15.3.7), streams the body to a ``Writer`` without holding it, and on
a dropped, stalled or too slow connection (the low-speed rule,
``settings.LowSpeed``) resumes from the last byte written.  With a
``throttle`` (``ratelimit.py``), each read is paid for before it is made
(the first before the loop, each next one once the chunk before it is
written), and the low-speed rule does not count those waits.

Every request carries the caller's headers as ``origin.headers_for`` allows: when
the probe was redirected to another origin, the credentials meant for the
URL the user gave stay behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import httpx

from .client import BASE_HEADERS, translate_error
from .errors import (
    ConnectionLostError,
    ProtocolError,
    RangefetchError,
    RemoteChangedError,
    TransientError,
)
from .lowspeed import SpeedWatch, moved_on, watch_speed
from .origin import headers_for
from .plan import Range
from .probe import RemoteFile, follow, raise_for_status
from .protocol import parse_content_length, parse_content_range
from .ratelimit import Throttle
from .retry import Backoff
from .segments import Segment
from .settings import DEFAULT_LOW_SPEED, LowSpeed

__all__ = ["Progress", "Writer", "fetch_range", "fetch_stream"]

Progress = Callable[[int], None]
"""Called with the number of bytes just written."""


class Writer(Protocol):
    """Where fetched bytes go: ``write`` puts ``data`` at absolute ``offset``."""

    async def write(self, offset: int, data: bytes) -> None: ...


def _ignore(n: int) -> None:
    pass


async def fetch_range(
    client: httpx.AsyncClient,
    remote: RemoteFile,
    rng: Range,
    writer: Writer,
    *,
    headers: Mapping[str, str] | None = None,
    done: int = 0,
    backoff: Backoff | None = None,
    on_progress: Progress = _ignore,
    segment: Segment | None = None,
    low_speed: LowSpeed = DEFAULT_LOW_SPEED,
    throttle: Throttle | None = None,
) -> None:
    """Fetch ``rng`` of ``remote`` into ``writer``, skipping its first ``done`` bytes.

    Transient failures are retried with ``backoff``; each retry resumes
    where the last one stopped.  A connection slower than ``low_speed``
    allows is closed and the range re-opened on a fresh one (``TooSlowError``,
    a failed try unless it brought a window's worth first).  With
    ``segment`` (``rng`` is then ``segment.range()``), the end is reread
    between chunks: when another connection took the tail
    (``segments.Scheduler``), the fetch stops at the new end, and
    ``segment.writing`` tells how much of a chunk is being handed to the
    writer.  ``throttle`` is the download's rate limit, shared by its connections.

    Raises:
        RemoteChangedError: the file is not the version the probe saw.
        ProtocolError: the server broke the Range rules.
        HTTPStatusError: a permanent error status.
        RetriesExhaustedError: transient failures kept coming.
    """
    backoff = backoff or Backoff()
    sent = headers_for(remote, headers)
    cursor = _Cursor(done)
    while cursor.done < rng.length:
        before = cursor.done
        try:
            await _fetch_once(
                client, remote, rng, writer, cursor, sent, on_progress, segment, low_speed=low_speed, throttle=throttle
            )
        except TransientError as exc:
            exc.range = rng
            if moved_on(exc, cursor.done - before, low_speed):
                backoff.reset()
            await backoff.wait(exc)
        if segment is not None:
            if segment.length <= cursor.done:
                return  # the rest was taken by another connection
            rng = segment.range()


async def fetch_stream(
    client: httpx.AsyncClient,
    remote: RemoteFile,
    writer: Writer,
    *,
    headers: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
    on_progress: Progress = _ignore,
    low_speed: LowSpeed = DEFAULT_LOW_SPEED,
    throttle: Throttle | None = None,
) -> int:
    """Fetch the whole file with one plain GET, for servers without ranges.

    A broken transfer cannot resume with a range here, so the next try
    fetches from byte 0 again and skips what was already written: every byte
    reaches ``writer`` once.  Returns the number of bytes in the file.

    Raises:
        The same errors as ``fetch_range``.
    """
    backoff = backoff or Backoff()
    sent = headers_for(remote, headers)
    cursor = _Cursor(0)
    while True:
        before = cursor.done
        try:
            await _fetch_once(
                client, remote, None, writer, cursor, sent, on_progress, low_speed=low_speed, throttle=throttle
            )
            return cursor.done
        except TransientError as exc:
            if moved_on(exc, cursor.done - before, low_speed):
                backoff.reset()
            await backoff.wait(exc)


@contextlib.asynccontextmanager
async def _get(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], rng: Range | None
) -> AsyncIterator[httpx.Response]:
    """A streamed GET of ``url``, whose redirects (if the server sends any now) follow the probe's rules."""
    try:
        response, _ = await follow(client, "GET", url, headers)
    except RangefetchError as exc:
        exc.range = exc.range or rng
        raise
    try:
        yield response
    finally:
        await response.aclose()


@contextlib.asynccontextmanager
async def _reads_of(response: httpx.Response, throttle: Throttle | None) -> AsyncIterator[None]:
    """Under a rate limit, the connection's reads for this response are no larger than a read's payment.

    Each read is paid for before it is made (``_Meter``); a socket read
    larger than that runs ahead of the rate (16 connections of 256 KiB reads
    hold 4 MiB, four seconds at 1 MiB/s).  Only our own network streams
    (the fast path) can be told; the size goes back when the response ends,
    as the connection may serve an unlimited download next.
    """
    stream = response.extensions.get("network_stream")
    limit = getattr(stream, "limit_reads", None)
    if throttle is None or limit is None:
        yield
        return
    before = limit(throttle.ahead)
    try:
        yield
    finally:
        limit(before)


class _Cursor:
    """Bytes of the current range that are already with the writer."""

    __slots__ = ("done",)

    def __init__(self, done: int) -> None:
        self.done = done


async def _fetch_once(
    client: httpx.AsyncClient,
    remote: RemoteFile,
    rng: Range | None,
    writer: Writer,
    cursor: _Cursor,
    headers: dict[str, str],
    on_progress: Progress,
    segment: Segment | None = None,
    *,
    low_speed: LowSpeed = DEFAULT_LOW_SPEED,
    throttle: Throttle | None = None,
) -> None:
    url = remote.final_url
    request_headers = {**headers, **BASE_HEADERS}
    if rng is not None:
        request_headers["Range"] = rng.header(cursor.done)
        if remote.validator:
            request_headers["If-Range"] = remote.validator
    meter = _Meter(throttle) if throttle is not None else None
    try:
        if meter is not None:
            # The first read comes with the headers, before the body's first chunk:
            # paid for before the request, as each later read is before it is made.
            await meter.top_up(None, rng.length - cursor.done if rng is not None else None)
        async with (
            watch_speed(low_speed, url=url, rng=rng) as watch,
            _get(client, url, request_headers, rng) as response,
            _reads_of(response, throttle),
        ):
            offset, expected = _check_response(response, remote, rng, cursor.done)
            # A plain GET starts at byte 0 again: skip what an earlier try wrote.
            skip = cursor.done if rng is None else 0
            async for chunk in response.aiter_raw():
                wire = len(chunk)
                watch.arrived(wire)
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        if expected is not None:
                            expected -= len(chunk)
                        if meter is not None:
                            await meter.paid(wire, watch, expected)
                        continue
                    chunk, offset = chunk[skip:], offset + skip
                    if expected is not None:
                        expected -= skip
                    skip = 0
                n = len(chunk)
                if expected is not None and n > expected:
                    raise ProtocolError(f"server sent more bytes than asked for {_what(rng)}", url=url, range=rng)
                if segment is not None:
                    room = segment.end + 1 - offset
                    # n == room is the segment's last chunk: read on to the end of the message,
                    # or httpcore drops the connection instead of keeping it for the next range.
                    if n > room:  # the rest is another connection's now: stop here
                        if room > 0:
                            await _write_held(writer, segment, offset, chunk[:room])
                            cursor.done += room
                            on_progress(room)
                        return
                    await _write_held(writer, segment, offset, chunk)
                else:
                    await writer.write(offset, chunk)
                offset += n
                cursor.done += n
                if expected is not None:
                    expected -= n
                on_progress(n)
                if meter is not None:  # after the write: a run stopped while it waits keeps these bytes
                    await meter.paid(wire, watch, expected)
    except httpx.HTTPError as exc:
        raise translate_error(exc, url=url, range=rng) from exc
    finally:
        if meter is not None:
            meter.close()
    if expected:
        raise ConnectionLostError(
            f"connection closed {expected} bytes short of the end of {_what(rng)}", url=url, range=rng
        )


class _Meter:
    """One response's account with the rate limit: each read is paid for before it is made.

    ``top_up`` pays for the next read: as much as the last read brought (the
    first: ``throttle.ahead``), no more than is left of the response.  So a
    fast server's full reads are paid for before they are made, and a slow
    one's small reads pay little up front and are not held back below the
    rate.  ``paid`` counts a chunk read (a read larger than paid for is paid
    at the next top-up) and tops up again; ``close`` gives back what was paid
    and not read.  The waits stop the low-speed rule's clock: they are ours,
    not the server's, and a rate below ``speed_limit`` times the connections
    must not make a healthy connection look too slow.
    """

    __slots__ = ("_credit", "_next", "_throttle")

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle
        self._credit = 0  # bytes paid for and not read yet; below 0: read and not paid for
        self._next = throttle.ahead  # what the next read is expected to bring

    async def top_up(self, watch: SpeedWatch | None, left: int | None) -> None:
        """Pay for the next read (``watch``: the request's low-speed rule, ``None`` before the request)."""
        want = self._next if left is None else min(self._next, left)
        if want > self._credit:
            n, self._credit = want - self._credit, want
            if watch is not None:
                watch.pause()
            try:
                await self._throttle.take(n)
            finally:
                if watch is not None:
                    watch.resume()

    async def paid(self, n: int, watch: SpeedWatch, left: int | None) -> None:
        self._credit -= n
        self._next = n
        await self.top_up(watch, left)

    def close(self) -> None:
        if self._credit:
            self._throttle.refund(self._credit)


async def _write_held(writer: Writer, segment: Segment, offset: int, data: bytes) -> None:
    """``writer.write`` with ``segment.writing`` set, so no steal takes these bytes meanwhile."""
    segment.writing = len(data)
    try:
        await writer.write(offset, data)
    finally:
        segment.writing = 0


def _what(rng: Range | None) -> str:
    return f"range {rng}" if rng is not None else "the file"


def _check_response(
    response: httpx.Response, remote: RemoteFile, rng: Range | None, done: int
) -> tuple[int, int | None]:
    """Check that ``response`` carries what was asked; return (write offset, bytes expected)."""
    url = remote.final_url
    status = response.status_code
    changed = remote.check_same(response.headers)
    if changed:
        raise RemoteChangedError(f"the remote file changed during the download: {changed}", url=url, range=rng)
    if status == 416 or status == 412:
        # §15.5.17, §13.1.1: the range or the precondition no longer fits
        # the file, so it is not the file the probe saw.
        raise RemoteChangedError(f"the remote file changed during the download (HTTP {status})", url=url, range=rng)
    if status >= 300:
        raise_for_status(response, url=url)
        raise ProtocolError(f"unexpected HTTP {status} for {_what(rng)}", url=url, range=rng)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # §8.4: the body is an encoded representation, not the file's bytes,
        # although we asked for identity (client.BASE_HEADERS).
        raise ProtocolError(f"server sent Content-Encoding {encoding!r} for {_what(rng)}", url=url, range=rng)
    length = parse_content_length(response.headers)
    if rng is None or (status == 200 and done == 0 and rng.start == 0 and rng.end + 1 == remote.size):
        # A plain GET, or a range that is the whole file answered with the
        # whole file (§15.3.1): the body is what we want either way.
        if status != 200 and rng is None:
            raise ProtocolError(f"unexpected HTTP {status} for {_what(rng)}", url=url)
        if remote.size is not None and length is not None and length != remote.size:
            raise RemoteChangedError(
                f"the remote file changed: now {length} bytes, was {remote.size}", url=url, range=rng
            )
        return (rng.start if rng else 0), (remote.size if remote.size is not None else length)
    if status != 206:
        # The body is the whole file, not our range.  With If-Range a 200
        # means the validator no longer matches (§13.1.5), but a changed
        # ETag or Last-Modified was refused by check_same above: a 200 that
        # shows the probe's own validator is the same file, sent whole by a
        # server (or a cache before it) that ignored Range.  Only the reply
        # with no validator at all cannot tell which it is.
        if remote.validator and not (response.headers.get("etag") or response.headers.get("last-modified")):
            why = "the server ignored Range, or the file changed (the reply has no ETag or Last-Modified to tell)"
        else:
            why = "the server ignored Range"
        raise ProtocolError(f"{why}: HTTP {status} instead of 206 for {_what(rng)}", url=url, range=rng)
    start = rng.start + done
    content_range = parse_content_range(response.headers.get("content-range"))
    if content_range is None or content_range.start != start or content_range.end != rng.end:
        got = response.headers.get("content-range", "none")
        raise ProtocolError(f"server sent Content-Range {got!r} for bytes {start}-{rng.end}", url=url, range=rng)
    if remote.size is not None and content_range.size is not None and content_range.size != remote.size:
        raise RemoteChangedError(
            f"the remote file changed: now {content_range.size} bytes, was {remote.size}", url=url, range=rng
        )
    expected = rng.end - start + 1
    if length is not None and length != expected:
        raise ProtocolError(
            f"server sent Content-Length {length} for {expected} bytes of range {rng}", url=url, range=rng
        )
    return start, expected
