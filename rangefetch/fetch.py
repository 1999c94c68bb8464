"""Fetching bytes: one range, or the whole file as one stream.

``fetch_range`` is the unit of work both schedulers share: the embedded
downloader runs many of them in a task group, and each distributed range job
runs one.  It pins the file version with ``If-Range`` (RFC 9110 §13.1.5),
accepts only a 206 whose ``Content-Range`` is exactly what was asked
(§14.4, §15.3.7; ``response.check_response``), streams the body to a
``Writer`` without holding it, and on a dropped, stalled or too slow
connection (the low-speed rule, ``settings.LowSpeed``) resumes from the
last byte written.  With a ``throttle`` (``ratelimit.py``), each read is
paid for before it is made (``metering.Meter``: the first before the loop,
each next one once the chunk before it is written), and the low-speed rule
does not count those waits.

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
    TransientError,
)
from .lowspeed import moved_on, watch_speed
from .metering import Meter, reads_of
from .origin import headers_for
from .plan import Range
from .probe import RemoteFile, follow
from .ratelimit import Throttle
from .response import check_response, describe_range
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
    meter = Meter(throttle) if throttle is not None else None
    try:
        if meter is not None:
            # The first read comes with the headers, before the body's first chunk:
            # paid for before the request, as each later read is before it is made.
            await meter.top_up(None, rng.length - cursor.done if rng is not None else None)
        async with (
            watch_speed(low_speed, url=url, rng=rng) as watch,
            _get(client, url, request_headers, rng) as response,
            reads_of(response, throttle),
        ):
            offset, expected = check_response(response, remote, rng, cursor.done)
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
                    raise ProtocolError(
                        f"server sent more bytes than asked for {describe_range(rng)}", url=url, range=rng
                    )
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
            f"connection closed {expected} bytes short of the end of {describe_range(rng)}", url=url, range=rng
        )


async def _write_held(writer: Writer, segment: Segment, offset: int, data: bytes) -> None:
    """``writer.write`` with ``segment.writing`` set, so no steal takes these bytes meanwhile."""
    segment.writing = len(data)
    try:
        await writer.write(offset, data)
    finally:
        segment.writing = 0
