"""An httpcore network backend that reads sockets directly, up to ``read_size`` bytes per call.

httpcore's default backend reads through anyio's asyncio streams: the event
loop's transport reads 256 KiB, anyio hands it out in httpcore's 64 KiB
pieces and copies the rest back every time.  ``DirectStream`` calls
``recv`` on a non-blocking socket itself, sized by what the kernel holds,
and waits for readability only when nothing is there.  It uses httpcore's
public extension points only (``AsyncNetworkBackend``/``AsyncNetworkStream``)
and raises httpcore's exceptions, so httpx maps them as usual: no byte
within the read timeout is ``httpcore.ReadTimeout`` (a stall), a closed or
reset connection is ``b""`` or ``httpcore.ReadError``.

TLS (``DirectStream.start_tls``) is ``tlsstream.TLSStream``.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import select
import socket
import ssl
import termios
import typing
from collections.abc import Iterable

import httpcore

from .network import bind_without_port
from .tlsstream import TLSStream

__all__ = ["TLS_FEED", "DirectBackend", "DirectStream", "os_reason"]

# Bytes of ciphertext moved from the socket to OpenSSL at a time, through one
# buffer per backend; each connection's input buffer in OpenSSL grows to this.
TLS_FEED = 128 * 1024


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def os_reason(error: OSError) -> str:
    """Why ``error`` happened, in the system's words: "Connection refused", "Name or service not known".

    asyncio words a refused connect its own way ("Connect call failed
    ('127.0.0.1', 9)"); a resolver error's errno is negative, not an errno.
    """
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


class DirectStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking TCP socket, read with ``recv`` up to ``read_size`` bytes at a time.

    Raises httpcore's exceptions, as every network stream must: a read that
    gets no byte within ``timeout`` raises ``httpcore.ReadTimeout``; a socket
    error raises ``httpcore.ReadError``/``WriteError``; end of stream is ``b""``.
    """

    def __init__(self, sock: socket.socket, *, read_size: int, scratch: memoryview | None = None) -> None:
        self._sock = sock
        self._read_size = read_size
        self._loop = asyncio.get_running_loop()
        self._avail = array.array("i", [0])
        # Where TLS ciphertext passes through on its way to OpenSSL: one buffer
        # for all the streams of a backend, which share one event loop.
        self._scratch = scratch if scratch is not None else memoryview(bytearray(TLS_FEED))

    def limit_reads(self, read_size: int) -> int:
        """Read at most ``read_size`` bytes per call from now on (a rate limit's pace); return the old size."""
        before, self._read_size = self._read_size, read_size
        return before

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max(max_bytes, read_size)`` bytes.

        httpcore asks for 64 KiB per call; the socket usually holds more, and
        h11 buffers whatever it is given, so a bigger read costs nothing and
        saves a trip through every layer above.
        """
        return await self.receive(max(max_bytes, self._read_size), timeout)

    async def receive(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """At most ``max_bytes`` bytes: whatever is there now, else the first to arrive.

        The read is sized by what the kernel holds (``FIONREAD``): ``recv(n)``
        allocates ``n`` bytes and then shrinks the object, and with 1 MiB
        reads the shrunk blocks fragment the heap by tens of MiB.
        """
        sock = self._sock
        try:
            while True:
                queued = self.queued()
                if queued:
                    return sock.recv(min(queued, max_bytes))
                try:
                    return sock.recv(max_bytes)  # nothing queued: EOF, an error, or BlockingIOError
                except BlockingIOError:
                    pass
                await self._readable(timeout)
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    def queued(self) -> int:
        """Bytes the kernel holds for this socket right now."""
        fcntl.ioctl(self._sock, termios.FIONREAD, self._avail)
        return self._avail[0]

    def recv_into_now(self, buffer: memoryview) -> int | None:
        """Read what the socket holds now into ``buffer``: the count, 0 at its end, ``None`` when nothing is there.

        Raises:
            httpcore.ReadError: a socket error.
        """
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def _readable(self, timeout: float | None) -> None:
        """Wait until the socket is readable; ``httpcore.ReadTimeout`` after ``timeout`` seconds."""
        waiter = self._loop.create_future()
        fd = self._sock.fileno()
        self._loop.add_reader(fd, _wake, waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from exc
        finally:
            self._loop.remove_reader(fd)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send all of ``buffer``; raise ``httpcore.WriteTimeout``/``WriteError``."""
        if not buffer:
            return
        cm = asyncio.timeout(timeout)
        try:
            async with cm:
                await self._loop.sock_sendall(self._sock, buffer)
        except OSError as exc:
            if cm.expired():
                raise httpcore.WriteTimeout(f"could not send within {timeout} s") from exc
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
            self._sock.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> TLSStream:
        """Run the TLS handshake over this connection; the result reads and writes through it.

        Raises:
            httpcore.ConnectError: the handshake failed; its ``__cause__`` is
                the ``ssl.SSLError`` (certificate, host name, version).
            httpcore.ConnectTimeout: no handshake within ``timeout``.
        """
        tls = TLSStream(self, ssl_context, server_hostname)
        await tls.handshake(timeout)
        return tls

    def get_extra_info(self, info: str) -> typing.Any:
        """``socket``, ``client_addr``, ``server_addr`` and ``is_readable`` (httpcore's keys)."""
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "is_readable":
            # An idle keep-alive connection that is readable has been closed
            # by the server (or sent junk): httpcore then drops it.
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class DirectBackend(httpcore.AsyncNetworkBackend):
    """Opens ``DirectStream``s; the rest of httpcore sees an ordinary network backend.

    ``local_address`` (an IP literal, checked by ``network.check_interface``)
    is where every connection comes from unless a caller names another: the
    body fast path, httpcore's own connections and its proxy connections
    (which do not pass the pool's ``local_address`` on) all connect here.
    """

    def __init__(self, *, read_size: int, local_address: str | None = None) -> None:
        self.read_size = read_size
        self.local_address = local_address
        self._scratch = memoryview(bytearray(TLS_FEED))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> DirectStream:
        """Connect to ``host:port``, trying each address in turn; from ``local_address`` if set.

        From a local address only the addresses of its family are tried.

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout``.
            httpcore.ConnectError: every address failed.
        """
        loop = asyncio.get_running_loop()
        cm = asyncio.timeout(timeout)
        errors: list[OSError] = []
        local = local_address or self.local_address
        family = socket.AF_UNSPEC if not local else socket.AF_INET6 if ":" in local else socket.AF_INET
        try:
            async with cm:
                try:
                    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
                except socket.gaierror as exc:
                    if local:  # "Address family for hostname not supported", say which
                        version = 6 if family == socket.AF_INET6 else 4
                        raise httpcore.ConnectError(f"{os_reason(exc)} (IPv{version} only, from {local})") from exc
                    raise
                for family, kind, proto, _, address in infos:
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for option in socket_options or ():
                            sock.setsockopt(*option)
                        if local:
                            bind_without_port(sock, local)
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        errors.append(exc)
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return DirectStream(sock, read_size=self.read_size, scratch=self._scratch)
        except OSError as exc:
            if cm.expired():
                raise httpcore.ConnectTimeout(f"could not connect to {host}:{port} within {timeout} s") from exc
            raise httpcore.ConnectError(os_reason(exc)) from exc
        # The cause alone ("Connection refused"): the caller names the host.
        detail = "; ".join(os_reason(e) for e in errors) or "no address"
        raise httpcore.ConnectError(detail) from (errors[-1] if errors else None)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
