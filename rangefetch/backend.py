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

Plain TCP only: ``start_tls`` is not implemented, and ``transport.FastTransport``
sends https to httpcore's default backend instead.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import select
import socket
import termios
import typing
from collections.abc import Iterable

import httpcore

__all__ = ["DirectBackend", "DirectStream"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DirectStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking TCP socket, read with ``recv`` up to ``read_size`` bytes at a time.

    Raises httpcore's exceptions, as every network stream must: a read that
    gets no byte within ``timeout`` raises ``httpcore.ReadTimeout``; a socket
    error raises ``httpcore.ReadError``/``WriteError``; end of stream is ``b""``.
    """

    def __init__(self, sock: socket.socket, *, read_size: int) -> None:
        self._sock = sock
        self._read_size = read_size
        self._loop = asyncio.get_running_loop()
        self._avail = array.array("i", [0])

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
                fcntl.ioctl(sock, termios.FIONREAD, self._avail)
                if self._avail[0]:
                    return sock.recv(min(self._avail[0], max_bytes))
                try:
                    return sock.recv(max_bytes)  # nothing queued: EOF, an error, or BlockingIOError
                except BlockingIOError:
                    pass
                await self._readable(timeout)
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
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        """Not supported: ``FastTransport`` sends https to httpcore's default backend."""
        raise httpcore.UnsupportedProtocol("DirectStream is plain TCP; https uses httpcore's default backend")

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
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class DirectBackend(httpcore.AsyncNetworkBackend):
    """Opens ``DirectStream``s; the rest of httpcore sees an ordinary network backend."""

    def __init__(self, *, read_size: int) -> None:
        self.read_size = read_size

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> DirectStream:
        """Connect to ``host:port``, trying each address in turn.

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout``.
            httpcore.ConnectError: every address failed.
        """
        loop = asyncio.get_running_loop()
        cm = asyncio.timeout(timeout)
        errors: list[OSError] = []
        try:
            async with cm:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                for family, kind, proto, _, address in infos:
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for option in socket_options or ():
                            sock.setsockopt(*option)
                        if local_address:
                            sock.bind((local_address, 0))
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        errors.append(exc)
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return DirectStream(sock, read_size=self.read_size)
        except OSError as exc:
            if cm.expired():
                raise httpcore.ConnectTimeout(f"could not connect to {host}:{port} within {timeout} s") from exc
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        detail = "; ".join(str(e) for e in errors) or "no address"
        raise httpcore.ConnectError(f"could not connect to {host}:{port}: {detail}") from (
            errors[-1] if errors else None
        )

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
