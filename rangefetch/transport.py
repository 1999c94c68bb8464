"""The fast path: an httpx transport whose connections read the socket directly, over TLS or not.

Why: with httpx's default stack every body byte goes through anyio's asyncio
stream (the event loop reads 256 KiB, anyio re-splits it into httpcore's
64 KiB reads, copying the rest back each time) and then through h11's receive
buffer (three more copies) before the caller sees it.  On a fast link that
is most of the client's CPU.  The levers and what each one gave are in
bench/README.md ("Levers tried").

The seam, from the outside in:

* ``FastTransport``, an ``httpx.AsyncBaseTransport``: ``http://`` and
  ``https://`` requests go to an ``httpcore.AsyncConnectionPool`` built on
  ``DirectBackend``, directly or through one http:// proxy (``CONNECT`` for
  https, absolute-form requests for http, RFC 9112 §3.2).  Which proxy a
  URL takes is ``network.proxy_for``'s choice, made in ``client.ProxyRouter``.
* ``backend.DirectBackend``, an ``httpcore.AsyncNetworkBackend`` (httpcore's
  public extension point).  Its ``DirectStream`` reads a non-blocking socket
  with ``recv``, up to ``read_size`` bytes per call instead of httpcore's 64 KiB;
  its ``TLSStream`` decrypts all the records one ``recv`` brought at once.
* The body fast path (``_FastHTTP11Connection``): once h11 has parsed the
  headers of a ``Content-Length`` body and its buffer is empty, body bytes
  are read from the socket straight to the caller, and h11 is told how many
  went by.  A body read of less than ``COALESCE_BELOW`` waits
  ``COALESCE_DELAY`` before the next, so a rate-capped server's trickle is
  picked up in fewer, larger reads.  This is the only private reach (below).
* ``read_size_for``: the read size, lowered with many connections so the
  reads in flight stay within ``READ_MEMORY`` (the peak RSS target).

TLS: certificates are checked by the ``ssl.SSLContext`` the client is given
(``network.ssl_context``), as in httpx's own transport.

Private reach: the body fast path overrides
``httpcore.AsyncHTTP11Connection._receive_response_body`` and reads
``_h11_state`` (httpcore), ``Connection._reader``, ``_receive_buffer`` and
``_receive_buffer_closed`` and ``ContentLengthReader._remaining`` (h11).
It is enabled only when the installed versions are the tested ones
(``TESTED_HTTPCORE``, ``TESTED_H11``, pinned in pyproject.toml) and a probe
at import finds every one of those names (``BODY_FAST_PATH``).  Otherwise
the fast pool uses httpcore's stock connection over ``DirectBackend``, which
still reads ``read_size`` bytes per call; ``Settings.fast_path=False`` skips
this module altogether.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import typing
from collections.abc import AsyncIterator, Iterator
from urllib.parse import unquote, urlsplit

import h11
import httpcore
import httpx

from .backend import DirectBackend, DirectStream, TLSStream

__all__ = [
    "BODY_FAST_PATH",
    "Proxy",
    "READ_MEMORY",
    "TESTED_H11",
    "TESTED_HTTPCORE",
    "UNAVAILABLE_BECAUSE",
    "FastTransport",
    "read_size_for",
]

log = logging.getLogger(__name__)

# Socket reads in flight across all connections stay within this: each
# connection holds up to two reads at a time (the one being written and the
# one httpx's iterators still refer to while the next arrives).
READ_MEMORY = 8 * 1024 * 1024
MIN_READ = 64 * 1024
# Under a rate limit each read is paid for before it is made: the reads of
# all connections together hold at most LIMITED_AHEAD seconds of the rate
# (not below MIN_LIMITED_READ each), so 16 fresh connections at 1 MiB/s do
# not hold 4 MiB of reads (4 s of the rate) and then catch up in a burst.
LIMITED_AHEAD = 0.25
MIN_LIMITED_READ = 16 * 1024

# A body read smaller than COALESCE_BELOW waits COALESCE_DELAY seconds before
# the next one: on the capped bench (8 MiB/s per connection) that halves the
# CPU per GiB at the same throughput, and it costs nothing unthrottled
# (bench/README.md, "Levers tried").  Far below any stall timeout.
COALESCE_BELOW = 64 * 1024
COALESCE_DELAY = 0.02

TESTED_HTTPCORE = ("1.0.9",)
TESTED_H11 = ("0.16.0",)

# httpcore's exceptions and the httpx ones they become, most specific first
# (the same mapping httpx's own transport applies).
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """Raise httpcore's exceptions as httpx's, as ``httpx.AsyncHTTPTransport`` does."""
    try:
        yield
    except Exception as exc:
        for source, target in _ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


def read_size_for(read_size: int, connections: int, rate: int = 0) -> int:
    """The read size to use: ``read_size``, lowered so ``connections`` stay within ``READ_MEMORY``.

    At 16 connections that is 256 KiB, which keeps a 16-connection download
    under 64 MiB of peak RSS; 1 MiB reads would add about 24 MiB.  Under a
    rate limit of ``rate`` bytes/s, lowered again to ``LIMITED_AHEAD`` seconds
    of the rate over all connections (1 MiB/s, 16 connections: 16 KiB).
    """
    connections = max(connections, 1)
    size = max(MIN_READ, min(read_size, READ_MEMORY // (2 * connections)))
    if rate > 0:
        size = min(size, max(MIN_LIMITED_READ, int(rate * LIMITED_AHEAD) // connections))
    return size


# --- the body fast path (private reach, probed at import) --------------------


def _probe_body_fast_path() -> tuple[type[typing.Any] | None, str | None]:
    """h11's ``ContentLengthReader`` when the body fast path can be used here; else None and why not."""
    core, parser = httpcore.__version__, getattr(h11, "__version__", "unknown")
    if core not in TESTED_HTTPCORE or parser not in TESTED_H11:
        return None, f"untested httpcore {core} / h11 {parser}"
    try:
        from h11._readers import ContentLengthReader

        if not callable(getattr(httpcore.AsyncHTTP11Connection, "_receive_response_body", None)):
            return None, "httpcore.AsyncHTTP11Connection has no _receive_response_body"
        conn = httpcore.AsyncHTTP11Connection(
            origin=httpcore.Origin(b"http", b"localhost", 80), stream=httpcore.AsyncNetworkStream()
        )
        state = conn._h11_state
        if not isinstance(state, h11.Connection):
            return None, "httpcore.AsyncHTTP11Connection._h11_state is not an h11.Connection"
        _ = state._reader, len(state._receive_buffer), state._receive_buffer_closed
        reader: typing.Any = ContentLengthReader(7)
        if (reader._length, reader._remaining) != (7, 7):
            return None, "h11's ContentLengthReader counts differently"
    except (AttributeError, ImportError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return ContentLengthReader, None


_ContentLengthReader, UNAVAILABLE_BECAUSE = _probe_body_fast_path()
BODY_FAST_PATH = _ContentLengthReader is not None
"""Whether the private-reach body fast path is usable with the installed httpcore and h11."""
if UNAVAILABLE_BECAUSE is not None:
    log.info("body fast path off (%s): h11 parses every body byte", UNAVAILABLE_BECAUSE)


class _FastHTTP11Connection(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection, with ``Content-Length`` bodies read around h11.

    h11 copies every body byte three times (into its buffer, a probe slice,
    the extracted slice) and httpcore a fourth (``bytes(event.data)``).  Once
    h11 is in a ``Content-Length`` body with nothing buffered, this reads at
    most the bytes left in the body straight from the socket and hands them
    on as they are, then lowers h11's count of bytes left by as many, so h11
    still ends the message, keeps the connection reusable, and sees
    everything after the body.
    """

    def __init__(
        self, *, origin: httpcore.Origin, stream: DirectStream | TLSStream, keepalive_expiry: float | None
    ) -> None:
        super().__init__(origin=origin, stream=stream, keepalive_expiry=keepalive_expiry)
        self._direct = stream

    async def _receive_response_body(self, request: httpcore.Request) -> AsyncIterator[bytes]:
        timeout = request.extensions.get("timeout", {}).get("read")
        state, stream, read_size = self._h11_state, self._direct, self._direct._read_size
        while True:
            reader: typing.Any = state._reader
            if (
                type(reader) is _ContentLengthReader
                and reader._remaining > 0
                and not state._receive_buffer
                and not state._receive_buffer_closed
            ):
                data = await stream.receive(min(reader._remaining, read_size), timeout)
                if not data:
                    # The words h11 uses for the same case (ContentLengthReader.read_eof).
                    got = reader._length - reader._remaining
                    raise httpcore.RemoteProtocolError(
                        "peer closed connection without sending complete message body "
                        f"(received {got} bytes, expected {reader._length})"
                    )
                reader._remaining -= len(data)
                yield data
                if len(data) < COALESCE_BELOW and reader._remaining > len(data):
                    # A trickle (a rate-capped server): let the kernel gather more
                    # than one segment before the next trip through every layer.
                    await asyncio.sleep(COALESCE_DELAY)
                continue
            event = await self._receive_event(timeout=timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.PAUSED)):
                break


async def _tunnel(stream: DirectStream, proxy: Proxy, host: str, port: int, timeout: float | None) -> None:
    """Ask ``proxy`` for a tunnel to ``host:port`` (``CONNECT``, RFC 9110 §9.3.6).

    Raises:
        httpcore.ProxyError: the proxy answered anything but 2xx, or closed.
    """
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
    if proxy.authorization is not None:
        head += b"Proxy-Authorization: " + proxy.authorization + b"\r\n"
    await stream.write(head + b"\r\n", timeout)
    # Nothing follows the proxy's answer until the TLS handshake starts, so
    # reading up to the blank line reads exactly the answer.
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = await stream.receive(4096, timeout)
        if not data or len(answer) > 65536:
            raise httpcore.ProxyError(f"the proxy closed the connection instead of answering CONNECT {target}")
        answer += data
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
        raise httpcore.ProxyError(f"the proxy answered {status_line!r} to CONNECT {target}")


def _absolute_form(request: httpcore.Request, proxy: Proxy) -> httpcore.Request:
    """``request`` as a forward proxy takes it: the whole URL as the target (RFC 9112 §3.2.2)."""
    url = request.url
    default = 80 if url.scheme == b"http" else 443
    authority = url.host if url.port in (None, default) else url.host + b":%d" % url.port
    headers = list(request.headers)
    if proxy.authorization is not None:
        headers.append((b"Proxy-Authorization", proxy.authorization))
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(scheme=url.scheme, host=url.host, port=url.port,
                         target=url.scheme + b"://" + authority + url.target),
        headers=headers,
        content=request.stream,
        extensions=request.extensions,
    )  # fmt: skip


# Requests sent again on a new connection when a reused one closes before
# answering (RFC 9110 §9.2.2: safe, so repeating them is harmless).
_RETRY_ON_STALE = (b"GET", b"HEAD")


class Proxy(typing.NamedTuple):
    """An http:// proxy: where it listens and the ``Proxy-Authorization`` its URL's user info makes."""

    url: str
    host: str
    port: int
    authorization: bytes | None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """``http://[user:password@]host[:port]`` (port 1080 by default, as in curl)."""
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = b"Basic " + base64.b64encode(secret)
        return cls(url, parts.hostname or "", parts.port or 1080, auth)


class _DirectConnection(httpcore.AsyncConnectionInterface):
    """One connection of the fast pool: connects on first use, then is a ``_FastHTTP11Connection``.

    It connects through ``proxy`` when there is one, and runs TLS for https.
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        backend: DirectBackend,
        keepalive_expiry: float | None,
        ssl_context: ssl.SSLContext,
        proxy: Proxy | None,
    ) -> None:
        self._origin = origin
        self._backend = backend
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._conn: _FastHTTP11Connection | None = None
        self._failed = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if not self.can_handle_request(request.url.origin):
            raise RuntimeError(f"request to {request.url.origin} on a connection to {self._origin}")
        reused = self._conn is not None
        if self._conn is None:
            try:
                stream = await self._connect(request.extensions.get("timeout", {}).get("connect"))
            except BaseException:
                self._failed = True
                raise
            self._conn = _FastHTTP11Connection(
                origin=self._origin, stream=stream, keepalive_expiry=self._keepalive_expiry
            )
        if self._proxy is not None and self._origin.scheme == b"http":
            request = _absolute_form(request, self._proxy)
        try:
            return await self._conn.handle_async_request(request)
        except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError) as exc:
            if reused and request.method in _RETRY_ON_STALE:
                # The server closed this idle connection as we reused it (it
                # may close any time: RFC 9112 §9.3.1): before any response,
                # so a safe request goes again on a new connection, at once.
                raise httpcore.ConnectionNotAvailable() from exc
            raise

    async def _connect(self, timeout: float | None) -> DirectStream | TLSStream:
        host, port = self._origin.host.decode("ascii"), self._origin.port
        proxy = self._proxy
        stream = await self._backend.connect_tcp(proxy.host if proxy else host, proxy.port if proxy else port, timeout)
        try:
            if self._origin.scheme != b"https":
                return stream
            if proxy is not None:
                await _tunnel(stream, proxy, host, port, timeout)
            return await stream.start_tls(self._ssl_context, server_hostname=host, timeout=timeout)
        except BaseException:
            await stream.aclose()
            raise

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.aclose()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def is_available(self) -> bool:
        return self._conn is not None and self._conn.is_available()

    def has_expired(self) -> bool:
        return self._failed if self._conn is None else self._conn.has_expired()

    def is_idle(self) -> bool:
        return self._failed if self._conn is None else self._conn.is_idle()

    def is_closed(self) -> bool:
        return self._failed if self._conn is None else self._conn.is_closed()

    def info(self) -> str:
        if self._conn is None:
            return "CONNECTION FAILED" if self._failed else "CONNECTING"
        return self._conn.info()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.info()}]>"


class _DirectPool(httpcore.AsyncConnectionPool):
    """An ``httpcore.AsyncConnectionPool`` whose connections use the body fast path."""

    def __init__(
        self, *, backend: DirectBackend, limits: httpx.Limits, ssl_context: ssl.SSLContext, proxy: Proxy | None
    ) -> None:
        super().__init__(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
        self._direct_backend = backend
        self._direct_keepalive = limits.keepalive_expiry
        self._direct_ssl = ssl_context
        self._direct_proxy = proxy

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _DirectConnection(origin, self._direct_backend, self._direct_keepalive, self._direct_ssl,
                                 self._direct_proxy)  # fmt: skip


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx one, with httpcore's errors mapped."""

    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _map_errors():
                await close()


class FastTransport(httpx.AsyncBaseTransport):
    """httpx transport: ``http://`` and ``https://`` over ``DirectBackend``, directly or through one proxy.

    Args:
        limits: connection limits of the pool.
        read_size: the largest socket read on the fast path.
        ssl_context: verifies https servers (``network.ssl_context``).
        proxy: an ``http://`` proxy URL every request goes through, or None.
        local_address: the local IP address every connection (to the server
            or to the proxy) is made from, or None (``DirectBackend``).
        body_fast_path: read ``Content-Length`` bodies around h11 (default:
            ``BODY_FAST_PATH``, i.e. when the probe at import allows it).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        read_size: int,
        ssl_context: ssl.SSLContext,
        proxy: str | None = None,
        local_address: str | None = None,
        body_fast_path: bool | None = None,
    ) -> None:
        backend = DirectBackend(read_size=read_size, local_address=local_address)
        if body_fast_path is None:
            body_fast_path = BODY_FAST_PATH
        if body_fast_path and not BODY_FAST_PATH:
            raise ValueError(f"the body fast path is not available: {UNAVAILABLE_BECAUSE}")
        self.body_fast_path = body_fast_path
        self._pool: httpcore.AsyncConnectionPool
        if body_fast_path:
            parsed = Proxy.parse(proxy) if proxy else None
            self._pool = _DirectPool(backend=backend, limits=limits, ssl_context=ssl_context, proxy=parsed)
        else:
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                proxy=httpcore.Proxy(proxy, ssl_context=ssl_context) if proxy else None,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=backend,
            )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
