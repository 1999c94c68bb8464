"""Probing: what is at the URL, how large is it, and can it be fetched in ranges?

Two requests, both following redirects:

1. ``HEAD`` for the metadata a server volunteers (size, validators,
   ``Accept-Ranges``, ``Content-Disposition``).  Many servers refuse HEAD
   (405, 403 on presigned URLs, 501) or answer it carelessly, so its answer is
   only a first guess.
2. ``GET`` with ``Range: bytes=0-0``.  A 206 with ``Content-Range: bytes
   0-0/SIZE`` is proof that ranges work and gives the size (RFC 9110 §14.4);
   a 416 with ``bytes */SIZE`` does the same for an empty file; a 200 means the
   server ignores ``Range`` and the file must come as one stream.  The GET
   wins wherever the two disagree.

The body of the probe GET is never read past the one byte asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import httpx

from .client import BASE_HEADERS, translate_error
from .errors import HTTPStatusError, ServerBusyError, TransientError, UnreachableError
from .protocol import (
    is_strong_etag,
    is_transient_status,
    parse_content_length,
    parse_content_range,
    parse_retry_after,
)
from .redact import redact_url
from .retry import Backoff

__all__ = ["UNREACHABLE_TRIES", "RemoteFile", "probe", "raise_for_status"]

log = logging.getLogger(__name__)

# Tries before the probe gives up on a host (or proxy) that takes no
# connection: a second look rides out a blip, more only delays the answer.
UNREACHABLE_TRIES = 2


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """What the probe learned about the file at ``url``.

    ``size`` is ``None`` when the server does not say; ``ranges`` is whether
    byte ranges were shown to work.
    """

    url: str
    final_url: str
    size: int | None
    ranges: bool
    etag: str | None = None
    last_modified: str | None = None
    content_disposition: str | None = None

    @property
    def validator(self) -> str | None:
        """The value that pins this version of the file for ``If-Range`` (§13.1.5).

        A strong ETag when there is one, else Last-Modified (weak ETags are
        not allowed in ``If-Range``).
        """
        if is_strong_etag(self.etag):
            return self.etag
        return self.last_modified

    def check_same(self, headers: Mapping[str, str]) -> str | None:
        """Why a response with ``headers`` is not this version of the file, or ``None``."""
        etag = headers.get("etag")
        if self.etag and etag and etag != self.etag:
            return f"ETag changed from {self.etag} to {etag}"
        modified = headers.get("last-modified")
        if not self.etag and self.last_modified and modified and modified != self.last_modified:
            return f"Last-Modified changed from {self.last_modified} to {modified}"
        return None


def raise_for_status(response: httpx.Response, *, url: str) -> None:
    """Raise our error for an error status: transient or permanent.

    Raises:
        ServerBusyError: 5xx (but 501/505), 408, 425, 429.
        HTTPStatusError: any other status of 400 or more.
    """
    status = response.status_code
    if status < 400:
        return
    host = response.request.url.host
    reason = response.reason_phrase or ""
    message = f"HTTP {status} {reason} from {host}".strip()
    if is_transient_status(status):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise ServerBusyError(message, status=status, retry_after=retry_after, url=url)
    raise HTTPStatusError(message, status=status, url=url)


async def probe(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
) -> RemoteFile:
    """Find out the size, validators and range support of the file at ``url``.

    Transient failures are retried with ``backoff``, but a host that takes
    no connection at all only ``UNREACHABLE_TRIES`` times.

    Raises:
        HTTPStatusError: the server answered 404, 403, 410 and the like.
        TLSError: the server's certificate or TLS was refused.
        UnreachableError: no connection to the server (``ProxyError``: to the proxy).
        RetriesExhaustedError: other transient failures did not stop.
    """
    backoff = backoff or Backoff()
    unreachable = 0
    head: RemoteFile | None = None
    headed = False
    while True:
        try:
            # HEAD once: a retry is for the GET.  (HEAD then GET on the same
            # connection each try would meet the same early close each time,
            # from a proxy that closes after every response.)
            if not headed:
                head = await _head(client, url, dict(headers or {}))
                headed = True
            return await _get(client, url, dict(headers or {}), head)
        except UnreachableError as exc:
            unreachable += 1
            if unreachable >= UNREACHABLE_TRIES:
                raise
            await backoff.wait(exc)
        except TransientError as exc:
            await backoff.wait(exc)


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], head: RemoteFile | None) -> RemoteFile:
    req_headers = {**headers, **BASE_HEADERS, "Range": "bytes=0-0"}
    try:
        async with client.stream("GET", url, headers=req_headers, follow_redirects=True) as response:
            if response.status_code != 416:
                raise_for_status(response, url=url)
            return _from_get(url, response, head)
    except httpx.HTTPError as exc:
        raise translate_error(exc, url=url) from exc


async def _head(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> RemoteFile | None:
    """HEAD the URL; ``None`` when the server will not answer HEAD usefully."""
    try:
        response = await client.head(url, headers={**headers, **BASE_HEADERS}, follow_redirects=True)
    except httpx.HTTPError as exc:
        error = translate_error(exc, url=url)
        if isinstance(error, TransientError):
            log.debug("HEAD %s failed (%s); trying GET", redact_url(url), error)
            return None
        raise error from exc
    if response.status_code >= 300:
        log.debug("HEAD %s answered %d; trying GET", redact_url(url), response.status_code)
        return None
    h = response.headers
    accept = h.get("accept-ranges", "").strip().lower()
    return RemoteFile(
        url=url,
        final_url=str(response.url),
        size=parse_content_length(h),
        ranges=accept == "bytes",
        etag=h.get("etag"),
        last_modified=h.get("last-modified"),
        content_disposition=h.get("content-disposition"),
    )


def _from_get(url: str, response: httpx.Response, head: RemoteFile | None) -> RemoteFile:
    h = response.headers
    content_range = parse_content_range(h.get("content-range"))
    final_url = str(response.url)
    disposition = h.get("content-disposition") or (head.content_disposition if head else None)
    etag = h.get("etag") or (head.etag if head else None)
    modified = h.get("last-modified") or (head.last_modified if head else None)
    if h.get("accept-ranges", "").strip().lower() == "none":
        ranges_ok = False
    else:
        ranges_ok = response.status_code in (206, 416) and content_range is not None and content_range.size is not None
    if ranges_ok and content_range is not None:
        size = content_range.size
    else:
        # §15.3.1: a 200 carries the whole file; its length is the size.
        size = parse_content_length(h) if response.status_code == 200 else (head.size if head else None)
    if head is not None and head.size is not None and size is not None and head.size != size:
        log.warning("HEAD said %d bytes but GET says %d; trusting GET", head.size, size)
    remote = RemoteFile(
        url=url,
        final_url=final_url,
        size=size,
        ranges=ranges_ok,
        etag=etag,
        last_modified=modified,
        content_disposition=disposition,
    )
    if remote.size == 0:
        remote = replace(remote, ranges=False)
    log.debug("probed %s: size=%s ranges=%s", redact_url(url), remote.size, remote.ranges)
    return remote
