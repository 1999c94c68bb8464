"""Checks on a fetch's response: that it carries the bytes asked for, of the file the probe saw.

``check_response`` accepts a 206 only when its ``Content-Range`` is exactly
the range asked for (RFC 9110 §14.4, §15.3.7), a 200 only for a plain GET or
a range that is the whole file, and no ``Content-Encoding``; a changed
validator, 412 or 416 means the remote file changed.
"""

from __future__ import annotations

import httpx

from .errors import ProtocolError, RemoteChangedError
from .plan import Range
from .probe import RemoteFile, raise_for_status
from .protocol import parse_content_length, parse_content_range

__all__ = ["check_response", "describe_range"]


def describe_range(rng: Range | None) -> str:
    """``rng`` as error messages name it: ``range ...``, or ``the file`` for a plain GET."""
    return f"range {rng}" if rng is not None else "the file"


def check_response(
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
        raise ProtocolError(f"unexpected HTTP {status} for {describe_range(rng)}", url=url, range=rng)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # §8.4: the body is an encoded representation, not the file's bytes,
        # although we asked for identity (client.BASE_HEADERS).
        raise ProtocolError(f"server sent Content-Encoding {encoding!r} for {describe_range(rng)}", url=url, range=rng)
    length = parse_content_length(response.headers)
    if rng is None or (status == 200 and done == 0 and rng.start == 0 and rng.end + 1 == remote.size):
        # A plain GET, or a range that is the whole file answered with the
        # whole file (§15.3.1): the body is what we want either way.
        if status != 200 and rng is None:
            raise ProtocolError(f"unexpected HTTP {status} for {describe_range(rng)}", url=url)
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
        raise ProtocolError(f"{why}: HTTP {status} instead of 206 for {describe_range(rng)}", url=url, range=rng)
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
