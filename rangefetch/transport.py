"""The fast path: an httpx transport whose connections read the socket directly, over TLS or not.

Why: with httpx's default stack every body byte goes through anyio's asyncio
stream (the event loop reads 256 KiB, anyio re-splits it into httpcore's
64 KiB reads, copying the rest back each time) and then through h11's receive
buffer (three more copies) before the caller sees it.  On a fast link that
is most of the client's CPU.  The levers and what each one gave are in
bench/README.md ("Levers tried").

The seam, from the outside in, one module each:

* ``FastTransport`` (here), an ``httpx.AsyncBaseTransport``: ``http://`` and
  ``https://`` requests go to an ``httpcore.AsyncConnectionPool`` built on
  ``DirectBackend`` (``directpool.DirectPool``), directly or through one
  http:// proxy (``proxying``: ``CONNECT`` for https, absolute-form requests
  for http, RFC 9112 §3.2).  Which proxy a URL takes is
  ``network.proxy_for``'s choice, made in ``client.ProxyRouter``.
* ``backend.DirectBackend``, an ``httpcore.AsyncNetworkBackend`` (httpcore's
  public extension point).  Its ``DirectStream`` reads a non-blocking socket
  with ``recv``, up to ``read_size`` bytes per call instead of httpcore's 64 KiB;
  its ``tlsstream.TLSStream`` decrypts all the records one ``recv`` brought at once.
* The body fast path (``bodypath.FastHTTP11Connection``): once h11 has parsed the
  headers of a ``Content-Length`` body and its buffer is empty, body bytes
  are read from the socket straight to the caller, and h11 is told how many
  went by.  A body read of less than ``COALESCE_BELOW`` waits
  ``COALESCE_DELAY`` before the next, so a rate-capped server's trickle is
  picked up in fewer, larger reads.  This is the only private reach
  (``bodypath``: what it reads, and the probe that turns it off).
* ``read_size_for`` (here): the read size, lowered with many connections so the
  reads in flight stay within ``READ_MEMORY`` (the peak RSS target).

TLS: certificates are checked by the ``ssl.SSLContext`` the client is given
(``network.ssl_context``), as in httpx's own transport.

``Settings.fast_path=False`` skips this module altogether.
"""

from __future__ import annotations

import contextlib
import ssl
import typing
from collections.abc import AsyncIterator, Iterator

import httpcore
import httpx

from . import bodypath
from .backend import DirectBackend
from .directpool import DirectPool
from .proxying import Proxy

__all__ = ["READ_MEMORY", "FastTransport", "read_size_for"]

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
            ``bodypath.BODY_FAST_PATH``, i.e. when the probe at import allows it).
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
            body_fast_path = bodypath.BODY_FAST_PATH
        if body_fast_path and not bodypath.BODY_FAST_PATH:
            raise ValueError(f"the body fast path is not available: {bodypath.UNAVAILABLE_BECAUSE}")
        self.body_fast_path = body_fast_path
        self._pool: httpcore.AsyncConnectionPool
        if body_fast_path:
            parsed = Proxy.parse(proxy) if proxy else None
            self._pool = DirectPool(backend=backend, limits=limits, ssl_context=ssl_context, proxy=parsed)
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
