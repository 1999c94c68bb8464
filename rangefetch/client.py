"""Building the httpx client and translating httpx errors at the boundary."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from .errors import (
    ConnectionLostError,
    DownloadError,
    ProtocolError,
    RangefetchError,
    StallError,
    UsageError,
)
from .plan import Range
from .redact import redact_url
from .settings import Settings
from .transport import FastTransport, read_size_for

__all__ = ["BASE_HEADERS", "check_url", "make_client", "parse_header", "translate_error"]

# The bytes on disk must be the file's bytes, not a compressed
# representation of them (RFC 9110 §12.5.3): always ask for identity.
BASE_HEADERS = {"Accept-Encoding": "identity"}


def check_url(url: str) -> str:
    """Return ``url`` if rangefetch can fetch it.

    Raises:
        UsageError: not an absolute http(s) URL with a host.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UsageError(f"invalid URL {redact_url(url)!r}: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}://" if parts.scheme else "none"
        raise UsageError(
            f"unsupported URL scheme {shown} in {redact_url(url)!r}: only http:// and https:// are supported"
        )
    if not parts.hostname:
        raise UsageError(f"invalid URL {redact_url(url)!r}: no host")
    try:
        _ = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid URL {redact_url(url)!r}: {exc}") from exc
    return url


def parse_header(text: str) -> tuple[str, str]:
    """Parse a ``'Name: value'`` header given on the command line.

    Raises:
        UsageError: no colon, an empty name, or a line break in it.
    """
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in text for c in "\r\n") or " " in name:
        raise UsageError(f"invalid header {text!r}: use 'Name: value'")
    return name, value


def make_client(settings: Settings, *, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` configured from ``settings``.

    The read timeout is the stall timeout: httpx raises when no byte arrives
    for that long, which is exactly a stall.  With ``settings.fast_path``
    plain-http requests go through ``transport.FastTransport``.
    """
    timeout = httpx.Timeout(
        connect=settings.timeouts.connect,
        read=settings.timeouts.stall,
        write=settings.timeouts.write,
        pool=None,
    )
    limits = httpx.Limits(
        max_connections=settings.connections + 2,
        max_keepalive_connections=settings.connections + 2,
    )
    # The fast path is a transport of ours (transport.py); without it httpx
    # builds its stock transport from ``limits``.
    transport = None
    if settings.fast_path:
        read_size = read_size_for(settings.read_size, settings.connections)
        transport = FastTransport(limits=limits, read_size=read_size)
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        transport=transport,
        follow_redirects=True,
        max_redirects=10,
        headers={"User-Agent": settings.user_agent, **BASE_HEADERS, **(headers or {})},
        trust_env=False,
    )


def translate_error(exc: Exception, *, url: str, range: Range | None = None) -> RangefetchError:
    """Map an httpx (or socket) error onto our tree; the caller raises it ``from exc``."""
    where = f" (range {range})" if range is not None else ""
    if isinstance(exc, RangefetchError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            return ConnectionLostError(f"timed out connecting to {_host(url)}{where}", url=url, range=range)
        return StallError(f"no data from {_host(url)} within the stall timeout{where}", url=url, range=range)
    if isinstance(exc, httpx.TooManyRedirects):
        return ProtocolError(f"too many redirects for {redact_url(url)}", url=url, range=range)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return UsageError(f"unsupported URL {redact_url(url)!r}: {exc}", url=url)
    if isinstance(exc, httpx.RemoteProtocolError):
        return ConnectionLostError(f"connection to {_host(url)} broke: {exc}{where}", url=url, range=range)
    if isinstance(exc, (httpx.TransportError, OSError)):
        detail = str(exc) or type(exc).__name__
        return ConnectionLostError(f"connection to {_host(url)} failed: {detail}{where}", url=url, range=range)
    return DownloadError(f"request to {_host(url)} failed: {exc}{where}", url=url, range=range)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "the server"
