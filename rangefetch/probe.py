"""Probing: what is at the URL, how large is it, and can it be fetched in ranges?

Two requests, both following redirects (``follow``):

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

Redirects are followed here, by hand, not by httpx: each hop is one request
through the same client (so through the proxy ``client.ProxyRouter`` picks
for its URL), at most ``MAX_REDIRECTS`` of them, to http:// and https://
only.  The user's credentials (``origin.CROSS_ORIGIN_DROPPED``) stay behind
from the first hop that leaves the origin of the URL they gave, and for the
rest of the chain; httpx's own redirects would drop ``Authorization`` but
carry ``Proxy-Authorization`` on.  ``RemoteFile.redirects`` records the hops
so that ``origin.headers_for`` keeps them behind for the range GETs too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import httpx

from .client import BASE_HEADERS, MAX_REDIRECTS, translate_error
from .errors import (
    HTTPStatusError,
    MalformedResponseError,
    ProtocolError,
    ServerBusyError,
    TransientError,
    UnreachableError,
)
from .origin import same_origin, without_credentials
from .protocol import (
    is_strong_etag,
    is_transient_status,
    parse_content_length,
    parse_content_range,
    parse_retry_after,
)
from .redact import redact_url
from .retry import Backoff

__all__ = ["UNREACHABLE_TRIES", "RemoteFile", "follow", "probe", "raise_for_status"]

log = logging.getLogger(__name__)

# Tries before the probe gives up on a host (or proxy) that takes no
# connection: a second look rides out a blip, more only delays the answer.
UNREACHABLE_TRIES = 2

# The statuses that send the client on to their Location (RFC 9110 §15.4).
# Every one of them keeps HEAD and GET, the only methods the probe sends: only
# a POST may become a GET on a 301, 302 or 303 (§15.4.2-§15.4.4).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# A redirect's body is read, so that its connection can carry the next hop,
# when it says it is no longer than this; a longer or unsized one is closed.
_SHORT_BODY_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """What the probe learned about the file at ``url``.

    ``size`` is ``None`` when the server does not say; ``ranges`` is whether
    byte ranges were shown to work.  ``redirects`` are the URLs the probe
    was redirected to on its way from ``url`` to ``final_url``, in order,
    ``final_url`` not among them: ``origin.headers_for`` reads them.
    """

    url: str
    final_url: str
    size: int | None
    ranges: bool
    etag: str | None = None
    last_modified: str | None = None
    content_disposition: str | None = None
    redirects: tuple[str, ...] = ()

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
        ProtocolError: too many redirects, or one to a scheme other than http(s).
        MalformedResponseError: a reply that breaks HTTP/1.1 (a Location that is no URL).
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


async def follow(
    client: httpx.AsyncClient, method: str, url: str, headers: Mapping[str, str]
) -> tuple[httpx.Response, tuple[str, ...]]:
    """Send ``method`` to ``url`` and follow its redirects; the last response and the URLs it went through.

    The response is open, its body unread: the caller closes it.  The
    URLs are those redirected to, the response's own last.  Each hop is a
    request of its own through ``client`` (its proxy routing, TLS and
    timeouts); ``headers`` ride along, but their credentials
    (``origin.without_credentials``) stop at the first hop that leaves the
    origin of ``url`` and never come back, even when a later hop does.

    Raises:
        ProtocolError: more than ``MAX_REDIRECTS`` redirects, or one to a
            scheme other than http:// or https:// (the server's doing).
        MalformedResponseError: a Location that is not a URL.
        RangefetchError: what httpx raised, translated (``client.translate_error``).
    """
    sent = dict(headers)
    current = url
    hops: list[str] = []
    while True:
        request = client.build_request(method, current, headers=sent)
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise translate_error(exc, url=current) from exc
        try:
            target = _redirect_target(response, current)
        except BaseException:
            await response.aclose()
            raise
        if target is None:
            return response, tuple(hops)
        await _finish(response)
        if len(hops) >= MAX_REDIRECTS:
            raise ProtocolError(f"too many redirects for {redact_url(url)} (more than {MAX_REDIRECTS})", url=url)
        log.debug("%s %s: HTTP %d to %s", method, redact_url(current), response.status_code, redact_url(target))
        if not same_origin(url, target):
            kept = without_credentials(sent)
            if len(kept) < len(sent):
                log.debug(
                    "%s is another origin than %s: the credentials stay behind", redact_url(target), redact_url(url)
                )
            sent = kept
        if not same_origin(current, target):
            # A Host of the user's names their origin, not this one (httpx's
            # redirects replace it the same way).
            sent = {k: v for k, v in sent.items() if k.lower() != "host"}
        current = target
        hops.append(target)


def _redirect_target(response: httpx.Response, current: str) -> str | None:
    """The absolute URL ``response`` redirects to, or ``None`` when it is not a redirect.

    Raises:
        ProtocolError: its Location is not http:// or https://.
        MalformedResponseError: its Location is not a URL.
    """
    location = response.headers.get("location")
    if response.status_code not in _REDIRECTS or location is None:
        return None
    location = location.strip()
    host = _host(current)
    try:
        scheme = urlsplit(location).scheme.lower()
        # RFC 9110 §10.2.2: a relative Location is resolved against the URL asked for.
        target = httpx.URL(current).join(location)
    except (httpx.InvalidURL, ValueError) as exc:
        raise MalformedResponseError(
            f"{host} redirected to an invalid URL {redact_url(location)!r}: {exc}", url=current
        ) from exc
    if scheme and scheme not in ("http", "https"):
        raise ProtocolError(
            f"{host} redirected to {redact_url(location)}: only http:// and https:// URLs are followed", url=current
        )
    if target.scheme not in ("http", "https") or not target.host:
        raise MalformedResponseError(f"{host} redirected to an invalid URL {redact_url(location)!r}", url=current)
    return str(target)


async def _finish(response: httpx.Response) -> None:
    """Close ``response``, reading its body first when it is short (a HEAD has none), so the connection is used again.

    httpcore keeps a connection for the next request only after the whole
    response was read: the probe's HEAD and ``bytes=0-0`` GET and a
    redirect's short body cost no new connection that way.
    """
    try:
        length = 0 if response.request.method == "HEAD" else parse_content_length(response.headers)
        if length is not None and length <= _SHORT_BODY_MAX:
            await response.aread()
    except httpx.HTTPError as exc:
        # What counts is read already; a body that breaks off only costs its connection.
        log.debug("the body of a reply from %s broke off: %s", _host(str(response.url)), exc)
    finally:
        await response.aclose()


def _host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2] or "the server"


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], head: RemoteFile | None) -> RemoteFile:
    response, hops = await follow(client, "GET", url, {**headers, **BASE_HEADERS, "Range": "bytes=0-0"})
    try:
        if response.status_code != 416:
            raise_for_status(response, url=url)
        return _from_get(url, response, hops, head)
    finally:
        await _finish(response)


async def _head(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> RemoteFile | None:
    """HEAD the URL; ``None`` when the server will not answer HEAD usefully."""
    try:
        response, hops = await follow(client, "HEAD", url, {**headers, **BASE_HEADERS})
    except TransientError as exc:
        log.debug("HEAD %s failed (%s); trying GET", redact_url(url), exc)
        return None
    await _finish(response)
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
        redirects=hops[:-1],
    )


def _from_get(url: str, response: httpx.Response, hops: tuple[str, ...], head: RemoteFile | None) -> RemoteFile:
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
        redirects=hops[:-1],
    )
    if remote.size == 0:
        remote = replace(remote, ranges=False)
    log.debug("probed %s: size=%s ranges=%s", redact_url(url), remote.size, remote.ranges)
    return remote
