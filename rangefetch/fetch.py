"""Fetching bytes: one range, or the whole file as one stream.

``fetch_range`` is the unit of work both schedulers share: the embedded
downloader runs many of them in a task group, and each distributed range job
runs one.  It pins the file version with ``If-Range`` (RFC 9110 §13.1.5),
accepts only a 206 whose ``Content-Range`` is exactly what was asked
(§14.4, §15.3.7), streams the body to a ``Writer`` without holding it, and on
a dropped or stalled connection resumes from the last byte written.

Every request carries the caller's headers as ``headers_for`` allows: when
the probe was redirected to another origin, the credentials meant for the
URL the user gave stay behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import httpx

from .client import BASE_HEADERS, translate_error
from .errors import (
    ConnectionLostError,
    ProtocolError,
    RemoteChangedError,
    TransientError,
)
from .plan import Range
from .probe import RemoteFile, raise_for_status
from .protocol import parse_content_length, parse_content_range
from .retry import Backoff

__all__ = ["CROSS_ORIGIN_DROPPED", "Progress", "Writer", "fetch_range", "fetch_stream", "headers_for", "same_origin"]

# Headers that carry the user's credentials for the URL they gave: never sent
# to another origin (curl drops the same three since 7.83, CVE-2022-27776).
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})

Progress = Callable[[int], None]
"""Called with the number of bytes just written."""


class Writer(Protocol):
    """Where fetched bytes go: ``write`` puts ``data`` at absolute ``offset``."""

    async def write(self, offset: int, data: bytes) -> None: ...


def _ignore(n: int) -> None:
    pass


def same_origin(url: str, other: str) -> bool:
    """Whether ``url`` and ``other`` have the same scheme, host and port (RFC 6454 §4).

    A missing port is the scheme's default; a URL that cannot be parsed has
    no origin in common with anything.
    """
    try:
        a, b = httpx.URL(url), httpx.URL(other)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return (a.scheme, a.raw_host.lower(), _port(a)) == (b.scheme, b.raw_host.lower(), _port(b))


def _port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)


def headers_for(remote: RemoteFile, headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's ``headers`` that a request to ``remote.final_url`` may carry.

    They were given for ``remote.url``: when the probe's redirects ended at
    another origin (scheme, host or port), ``Authorization``, ``Cookie`` and
    ``Proxy-Authorization`` are dropped, in any case of their names, so a
    token for one host never reaches another.  Other headers pass as given.
    """
    chosen = dict(headers or {})
    if same_origin(remote.url, remote.final_url):
        return chosen
    return {k: v for k, v in chosen.items() if k.lower() not in CROSS_ORIGIN_DROPPED}


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
) -> None:
    """Fetch ``rng`` of ``remote`` into ``writer``, skipping its first ``done`` bytes.

    Transient failures are retried with ``backoff``; each retry resumes
    where the last one stopped.

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
            await _fetch_once(client, remote, rng, writer, cursor, sent, on_progress)
        except TransientError as exc:
            exc.range = rng
            if cursor.done > before:
                backoff.reset()
            await backoff.wait(exc)


async def fetch_stream(
    client: httpx.AsyncClient,
    remote: RemoteFile,
    writer: Writer,
    *,
    headers: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
    on_progress: Progress = _ignore,
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
            await _fetch_once(client, remote, None, writer, cursor, sent, on_progress)
            return cursor.done
        except TransientError as exc:
            if cursor.done > before:
                backoff.reset()
            await backoff.wait(exc)


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
) -> None:
    url = remote.final_url
    request_headers = {**headers, **BASE_HEADERS}
    if rng is not None:
        request_headers["Range"] = rng.header(cursor.done)
        if remote.validator:
            request_headers["If-Range"] = remote.validator
    try:
        async with client.stream("GET", url, headers=request_headers) as response:
            offset, expected = _check_response(response, remote, rng, cursor.done)
            # A plain GET starts at byte 0 again: skip what an earlier try wrote.
            skip = cursor.done if rng is None else 0
            async for chunk in response.aiter_raw():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        if expected is not None:
                            expected -= len(chunk)
                        continue
                    chunk, offset = chunk[skip:], offset + skip
                    if expected is not None:
                        expected -= skip
                    skip = 0
                n = len(chunk)
                if expected is not None and n > expected:
                    raise ProtocolError(f"server sent more bytes than asked for {_what(rng)}", url=url, range=rng)
                await writer.write(offset, chunk)
                offset += n
                cursor.done += n
                if expected is not None:
                    expected -= n
                on_progress(n)
    except httpx.HTTPError as exc:
        raise translate_error(exc, url=url, range=rng) from exc
    if expected:
        raise ConnectionLostError(
            f"connection closed {expected} bytes short of the end of {_what(rng)}", url=url, range=rng
        )


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
