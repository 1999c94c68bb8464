"""Building the httpx client and translating httpx errors at the boundary."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .backend import os_reason
from .errors import (
    ConnectionLostError,
    DownloadError,
    MalformedResponseError,
    ProtocolError,
    ProxyError,
    RangefetchError,
    StallError,
    TLSError,
    UnreachableError,
    UsageError,
    cause_of,
)
from .network import Trust, check_interface, proxy_for, ssl_context
from .plan import Range
from .redact import redact_url
from .settings import Settings
from .transport import FastTransport, read_size_for

__all__ = [
    "BASE_HEADERS",
    "MAX_REDIRECTS",
    "FromAddress",
    "ProxyRouter",
    "bind_stock_transport",
    "check_url",
    "make_client",
    "parse_header",
    "translate_error",
]

log = logging.getLogger(__name__)

# The bytes on disk must be the file's bytes, not a compressed
# representation of them (RFC 9110 §12.5.3): always ask for identity.
BASE_HEADERS = {"Accept-Encoding": "identity"}

# Redirects followed for one request, by the probe (``probe.follow``) and by
# httpx for any other request of the client.
MAX_REDIRECTS = 10


def check_url(url: str) -> str:
    """Return ``url`` if rangefetch can fetch it, with ``http://`` put in front when it names no scheme.

    As curl does: a URL without ``SCHEME:/`` in front (``example.com/file``,
    ``localhost:8080/file``) is taken as ``http://`` (said at info level).

    Raises:
        UsageError: not an http(s) URL with a valid host.
    """
    guess = "" if _SCHEME.match(url) else "http:" if url.startswith("//") else "http://"
    url = guess + url
    given = redact_url(url).removeprefix(guess)  # errors name the URL as it was given (redacted as a URL)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UsageError(f"invalid URL {given!r}: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise UsageError(
            f"unsupported URL scheme {parts.scheme}:// in {given!r}: only http:// and https:// are supported"
        )
    if not parts.hostname:
        raise UsageError(f"invalid URL {given!r}: no host")
    if _BAD_HOST.search(parts.hostname):
        raise UsageError(f"invalid URL {given!r}: bad host name")
    try:
        _ = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid URL {given!r}: {exc}") from exc
    if guess:
        log.info("no scheme in %r: using %s", given, redact_url(url))
    return url


# A scheme, as curl recognises one before it guesses: letters, digits, "+-."
# then ":/" (RFC 3986 §3.1; "localhost:8080/x" names a port, not a scheme).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")
# What can never be in a host name (RFC 3986 §3.2.2): space, controls, delimiters.
_BAD_HOST = re.compile(r'[\s\x00-\x1f\x7f<>"{}|\\^`]')


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


def make_client(
    settings: Settings, *, headers: dict[str, str] | None = None, trust: Trust | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` configured from ``settings``.

    The read timeout is the stall timeout: httpx raises when no byte arrives
    for that long, which is exactly a stall.  With ``settings.fast_path``
    requests go through ``transport.FastTransport``, else through httpx's
    stock transport; either way through the proxy ``network.proxy_for``
    picks, verifying servers as ``trust`` says (default: ``settings``'), and
    from the local address ``settings.interface`` when set.

    Raises:
        UsageError: a CA file cannot be loaded, or ``settings.interface`` is
            not an address of this host (``network.check_interface``).
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
    context = ssl_context(trust or Trust.from_settings(settings))
    read_size = read_size_for(settings.read_size, settings.connections, settings.limit_rate)
    local = check_interface(settings.interface) if settings.interface else None

    def transport_for(proxy: str | None) -> httpx.AsyncBaseTransport:
        if settings.fast_path:
            return FastTransport(
                limits=limits, read_size=read_size, ssl_context=context, proxy=proxy, local_address=local
            )
        stock = httpx.AsyncHTTPTransport(
            verify=context, limits=limits, proxy=proxy, trust_env=False, local_address=local
        )
        if local is not None:
            bind_stock_transport(stock, local)
        return stock

    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        transport=ProxyRouter(lambda url: proxy_for(url, settings), transport_for),
        # Redirects are followed by probe.follow, whose rules keep credentials
        # on their origin; a request that is not followed that way stops at a 3xx.
        follow_redirects=False,
        headers={"User-Agent": settings.user_agent, **BASE_HEADERS, **(headers or {})},
        trust_env=False,
    )


def bind_stock_transport(transport: httpx.AsyncHTTPTransport, local_address: str) -> None:
    """Make every connection of httpx's stock ``transport`` come from ``local_address``, proxied ones too.

    httpx hands ``local_address`` to httpcore only without a proxy, and
    httpcore's proxy pools do not pass it to their connections; all of them
    connect through the pool's network backend, so that is wrapped.
    Private reach: ``AsyncHTTPTransport._pool`` (httpx) and
    ``AsyncConnectionPool._network_backend`` (httpcore), checked here.

    Raises:
        UsageError: the installed httpx or httpcore keeps them elsewhere.
    """
    pool: Any = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.AsyncNetworkBackend):
        raise UsageError(
            "--interface cannot be applied to httpx's stock transport of this httpx version; "
            "leave RANGEFETCH_FAST_PATH on"
        )
    pool._network_backend = FromAddress(backend, local_address)


class FromAddress(httpcore.AsyncNetworkBackend):
    """A network backend whose TCP connections come from ``local_address`` unless the caller names one."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, local_address: str) -> None:
        self.inner = inner
        self.local_address = local_address

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address or self.local_address,
            socket_options=socket_options,
        )  # fmt: skip

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class ProxyRouter(httpx.AsyncBaseTransport):
    """Sends each request to the transport of the proxy ``route`` picks for its URL (``None``: direct).

    Transports are made on first use by ``build`` and kept.  A proxy that
    cannot be reached is a ``httpx.ProxyError`` naming the proxy, whichever
    transport noticed: never a direct connection instead.
    """

    def __init__(
        self, route: Callable[[str], str | None], build: Callable[[str | None], httpx.AsyncBaseTransport]
    ) -> None:
        self._route = route
        self._build = build
        self._routes: dict[tuple[bytes, bytes, int | None], str | None] = {}
        self._transports: dict[str | None, httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        if key not in self._routes:
            self._routes[key] = proxy = self._route(str(url))
            if proxy is not None:
                log.debug("%s://%s goes through the proxy %s", url.scheme, url.host, redact_url(proxy))
        proxy = self._routes[key]
        transport = self._transports.get(proxy)
        if transport is None:
            transport = self._transports[proxy] = self._build(proxy)
        if proxy is None:
            return await transport.handle_async_request(request)
        try:
            return await transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if _tls_cause(exc) is not None:
                raise  # the tunnel stood; the origin's TLS failed
            raise httpx.ProxyError(f"could not connect to the proxy {_host(proxy)}: {_connect_detail(exc)}") from exc

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``exc``."""
    return cause_of(exc, ssl.SSLError)


def _connect_detail(exc: BaseException) -> str:
    """Why a connection could not be made, in the system's words ("Connection refused").

    asyncio and anyio word it their own way ("Connect call failed ('127.0.0.1', 9)",
    "All connection attempts failed"); the errno behind it says it plainly.
    """
    error = cause_of(exc, OSError)
    return os_reason(error) if error is not None else str(exc) or type(exc).__name__


def _tls_message(error: ssl.SSLError, url: str) -> str:
    """One line naming what TLS refused, and what to do about it."""
    host = _host(url)
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason or str(error)
        if error.verify_code == 62 or "hostname" in str(reason).lower() or "IP address mismatch" in str(reason):
            what = f"the certificate of {host} is not valid for that name ({reason})"
        else:
            what = f"the certificate of {host} cannot be verified ({reason})"
    elif error.reason == "WRONG_VERSION_NUMBER":
        # What a plain-HTTP server's answer to a ClientHello looks like.
        return f"{host} does not answer TLS (WRONG_VERSION_NUMBER); if it is a plain HTTP server, use http://"
    elif error.reason in _VERSION_REASONS:
        return f"no TLS version in common with {host} ({error.reason}): it offers none of TLS 1.2 and 1.3"
    else:
        what = f"TLS handshake with {host} failed ({error.reason or error})"
    return f"{what}; to trust its CA use --ca-certificate FILE, or --insecure to skip verification"


# OpenSSL's reasons for a handshake that found no protocol version both sides speak.
_VERSION_REASONS = frozenset(
    {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW"}
)


# The words h11 and httpcore use for a peer that went away in the middle of
# a message: a dropped connection, worth another try.  Any other
# RemoteProtocolError is a reply that breaks HTTP/1.1 (RFC 9112): a bad
# status line, a header field h11 refuses (a NUL or other control character,
# §5.5 of RFC 9110; conflicting Content-Length, RFC 9112 §6.3), a header
# section past h11's size limit.  The server sends the same bytes again on
# every try, so those are final.
_PEER_WENT_AWAY = (
    "peer closed connection",  # h11: the body ended early (ContentLengthReader/ChunkedReader.read_eof)
    "peer unexpectedly closed",  # h11: closed in the middle of the status line or headers
    "server disconnected",  # httpcore: closed before the response began
    "connectionclosed",  # h11: "can't handle event type ConnectionClosed ..."
    "peer state is error",  # h11: a read after the connection already failed
)


def _peer_went_away(exc: httpx.RemoteProtocolError) -> bool:
    text = str(exc).lower()
    return any(words in text for words in _PEER_WENT_AWAY)


def _redirect_target(exc: httpx.RequestError) -> str:
    """The URL of the request that failed, redacted: where a redirect led."""
    try:
        return redact_url(str(exc.request.url))
    except RuntimeError:  # httpx raises this when no request is attached
        return "an unsupported URL"


def translate_error(exc: Exception, *, url: str, range: Range | None = None) -> RangefetchError:
    """Map an httpx (or socket) error onto our tree; the caller raises it ``from exc``.

    A reply that breaks HTTP/1.1 is a ``MalformedResponseError`` (final);
    a connection that broke mid-reply a ``ConnectionLostError`` (retried).
    """
    where = f" (range {range})" if range is not None else ""
    if isinstance(exc, RangefetchError):
        return exc
    if isinstance(exc, httpx.ProxyError):
        return ProxyError(f"{exc}{where}", url=url, range=range)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and (tls := _tls_cause(exc)) is not None:
        return TLSError(_tls_message(tls, url), url=url, range=range)
    if isinstance(exc, httpx.ConnectError):
        detail = _connect_detail(exc)
        error = UnreachableError(f"could not connect to {_host(url)}: {detail}{where}", url=url, range=range)
        error.reason = detail[:1].lower() + detail[1:]  # "connection refused", for "retrying in 4 s (...)"
        return error
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            error = UnreachableError(f"timed out connecting to {_host(url)}{where}", url=url, range=range)
            error.reason = "connect timeout"
            return error
        return StallError(f"no data from {_host(url)} within the stall timeout{where}", url=url, range=range)
    if isinstance(exc, httpx.TooManyRedirects):
        return ProtocolError(f"too many redirects for {redact_url(url)}", url=url, range=range)
    if isinstance(exc, httpx.UnsupportedProtocol):
        if urlsplit(url).scheme.lower() in ("http", "https"):
            # The URL asked for was fine (check_url): a redirect led to
            # file://, ftp:// or the like.  The server's doing, not a usage error.
            target = _redirect_target(exc)
            return ProtocolError(
                f"{_host(url)} redirected to {target}: only http:// and https:// URLs are followed{where}",
                url=url,
                range=range,
            )
        return UsageError(f"unsupported URL {redact_url(url)!r}: {exc}", url=url)
    if isinstance(exc, httpx.RemoteProtocolError):
        if _peer_went_away(exc):
            return ConnectionLostError(f"connection to {_host(url)} broke: {exc}{where}", url=url, range=range)
        return MalformedResponseError(
            f"{_host(url)} sent a reply that breaks HTTP/1.1: {exc}{where}", url=url, range=range
        )
    if isinstance(exc, httpx.LocalProtocolError):
        # h11 refused to send our own request (a header value it will not
        # put on the wire): the same request fails the same way every time.
        return ProtocolError(f"cannot send the request to {_host(url)}: {exc}{where}", url=url, range=range)
    if isinstance(exc, (httpx.TransportError, OSError)):
        detail = str(exc) or type(exc).__name__
        return ConnectionLostError(f"connection to {_host(url)} failed: {detail}{where}", url=url, range=range)
    return DownloadError(f"request to {_host(url)} failed: {exc}{where}", url=url, range=range)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "the server"
