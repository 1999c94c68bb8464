"""The fast path's connection pool: an ``httpcore.AsyncConnectionPool`` of ``DirectConnection``s.

A ``DirectConnection`` connects on first use over ``DirectBackend``,
through a proxy when there is one (``proxying``), runs TLS for https
(``tlsstream``), and then is a ``bodypath.FastHTTP11Connection``.
"""

from __future__ import annotations

import ssl

import httpcore
import httpx

from .backend import DirectBackend, DirectStream
from .bodypath import FastHTTP11Connection
from .proxying import Proxy, absolute_form, tunnel
from .tlsstream import TLSStream

__all__ = ["DirectConnection", "DirectPool"]

# Requests sent again on a new connection when a reused one closes before
# answering (RFC 9110 §9.2.2: safe, so repeating them is harmless).
_RETRY_ON_STALE = (b"GET", b"HEAD")


class DirectConnection(httpcore.AsyncConnectionInterface):
    """One connection of the fast pool: connects on first use, then is a ``FastHTTP11Connection``.

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
        self._conn: FastHTTP11Connection | None = None
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
            self._conn = FastHTTP11Connection(
                origin=self._origin, stream=stream, keepalive_expiry=self._keepalive_expiry
            )
        if self._proxy is not None and self._origin.scheme == b"http":
            request = absolute_form(request, self._proxy)
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
                await tunnel(stream, proxy, host, port, timeout)
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


class DirectPool(httpcore.AsyncConnectionPool):
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
        return DirectConnection(origin, self._direct_backend, self._direct_keepalive, self._direct_ssl,
                                 self._direct_proxy)  # fmt: skip
