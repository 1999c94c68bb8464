"""TLS on the fast path: ``TLSStream``, OpenSSL over memory buffers on a ``DirectStream``.

TLS (``DirectStream.start_tls``) runs OpenSSL over memory buffers
(``ssl.MemoryBIO``) instead of over the socket: the socket is read as
before, as much as the kernel holds in one ``recv``, and the records in it
are decrypted into one buffer of up to ``read_size`` bytes.  An
``ssl.SSLSocket`` reads each 16 KiB record with two ``recv`` calls (header,
then body), and asyncio's SSL transport adds a protocol object, a buffer
copy and a callback per read; bench/README.md ("HTTPS") has the numbers.
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import httpcore

if typing.TYPE_CHECKING:
    from .backend import DirectStream

__all__ = ["PARTIAL_RECORD_DELAY", "TLSStream"]

# How long a read that got only part of a TLS record waits for the rest
# before it looks again (a 16 KiB record at 8 MiB/s takes 2 ms).
PARTIAL_RECORD_DELAY = 0.01


class TLSStream(httpcore.AsyncNetworkStream):
    """TLS over a ``DirectStream``: OpenSSL reads and writes memory buffers, the stream moves them.

    ``receive`` decrypts every whole record the socket has delivered into one
    buffer of up to ``max_bytes``, reading the socket again only when no
    whole record is left: one ``recv`` and one wake-up per many records.
    Raises httpcore's exceptions, as ``DirectStream`` does.
    """

    def __init__(self, raw: DirectStream, ssl_context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ssl_context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._read_size = raw._read_size
        self._scratch = raw._scratch
        self._fed = 0  # ciphertext bytes the last _pull moved to OpenSSL

    def limit_reads(self, read_size: int) -> int:
        """As ``DirectStream.limit_reads``, for the decrypted reads."""
        before, self._read_size = self._read_size, read_size
        return before

    async def handshake(self, timeout: float | None) -> None:
        """Complete the TLS handshake (see ``DirectStream.start_tls`` for what it raises)."""
        cm = asyncio.timeout(timeout)
        try:
            async with cm:
                while True:
                    try:
                        self._tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush(timeout)
                        data = await self._raw.receive(self._read_size, timeout)
                        if not data:
                            raise httpcore.ConnectError(
                                "the server closed the connection during the TLS handshake"
                            ) from None
                        self._incoming.write(data)
                await self._flush(timeout)
        except ssl.SSLError as exc:
            raise httpcore.ConnectError(f"TLS handshake failed: {exc.reason or exc}") from exc
        except (httpcore.ReadTimeout, TimeoutError) as exc:
            if cm.expired() or isinstance(exc, httpcore.ReadTimeout):
                raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout} s") from exc
            raise
        except (httpcore.ReadError, httpcore.WriteError) as exc:
            raise httpcore.ConnectError(f"the connection broke during the TLS handshake: {exc}") from exc

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max(max_bytes, read_size)`` bytes (see ``DirectStream.read``)."""
        return await self.receive(max(max_bytes, self._read_size), timeout)

    async def receive(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """At most ``max_bytes`` decrypted bytes: all that has arrived, else the first to arrive; ``b""`` at the end."""
        raw = self._raw
        while True:
            buf = self._pull(max_bytes)
            if buf is None:
                return b""
            if buf:
                if self._outgoing.pending:  # a post-handshake reply (TLS 1.3 KeyUpdate)
                    await self._flush(timeout)
                # A bytearray is bytes-like everywhere it goes (h11's buffer,
                # pwrite, hashlib) and copying it to bytes would cost a pass
                # over every byte; nothing resizes it after this.
                return typing.cast(bytes, buf)
            if self._fed and self._incoming.pending:
                # Part of a record came, and a record is decrypted only whole:
                # let the rest arrive instead of waking for each segment of a
                # trickle (a rate-capped server sends a few KiB at a time).
                await asyncio.sleep(PARTIAL_RECORD_DELAY)
            else:
                await raw._readable(timeout)

    def _pull(self, max_bytes: int) -> bytearray | None:
        """Decrypt up to ``max_bytes``, reading the socket as long as it holds more (never blocks).

        ``None`` at the end of the stream, empty when nothing has arrived.
        Decrypting in the event loop's thread is cheaper than handing it to
        threads (bench/README.md, "HTTPS").
        """
        incoming, tls = self._incoming, self._tls
        self._fed = 0
        if not incoming.pending and not tls.pending():
            # Nothing to decrypt yet: look at the socket before allocating.
            if incoming.eof or not self._feed():
                return None if incoming.eof else bytearray()
        # Plaintext is never longer than the ciphertext it comes from: size
        # the buffer by what has arrived, so a trickle (a capped server) does
        # not zero and then shrink a whole read_size buffer on every read.
        size = min(max_bytes, incoming.pending + tls.pending() + self._raw.queued())
        buf = bytearray(max(size, 1))
        view = memoryview(buf)
        max_bytes = len(buf)
        got, ended = 0, False
        try:
            while got < max_bytes:
                try:
                    n = typing.cast(int, tls.read(max_bytes - got, view[got:]))  # typeshed: int | bytes
                except ssl.SSLWantReadError:
                    if incoming.eof:
                        ended = True  # the socket ended inside a record
                        break
                    if not self._feed():
                        break  # nothing more has arrived
                    continue
                if not n:
                    ended = True
                    break
                got += n
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # close_notify, or a close without it: the end, as for plain TCP.
            # A body cut short is caught above by its Content-Length.
            ended = True
        except ssl.SSLError as exc:
            raise httpcore.ReadError(f"TLS error: {exc.reason or exc}") from exc
        finally:
            view.release()
        if ended and not got:
            return None
        del buf[got:]
        return buf

    def _feed(self) -> bool:
        """Move what the socket holds (up to ``TLS_FEED`` bytes) into OpenSSL's input; False when nothing was there."""
        n = self._raw.recv_into_now(self._scratch)
        if n is None:
            return False
        if n:
            self._incoming.write(self._scratch[:n])
            self._fed += n
        else:
            self._incoming.write_eof()
        return True

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Encrypt and send all of ``buffer`` (``DirectStream.write``'s errors)."""
        if not buffer:
            return
        try:
            self._tls.write(buffer)
        except ssl.SSLError as exc:
            raise httpcore.WriteError(f"TLS error: {exc.reason or exc}") from exc
        await self._flush(timeout)

    async def _flush(self, timeout: float | None) -> None:
        if self._outgoing.pending:
            await self._raw.write(self._outgoing.read(), timeout)

    async def aclose(self) -> None:
        """Close the connection (without a close_notify: the connection is never reused after)."""
        await self._raw.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        """Not supported: TLS inside TLS (an https proxy) is not on the fast path."""
        raise httpcore.UnsupportedProtocol("TLS inside TLS is not supported on the fast path")

    def get_extra_info(self, info: str) -> typing.Any:
        """``ssl_object`` and the raw stream's keys."""
        if info == "ssl_object":
            return self._tls
        if info == "is_readable":
            return bool(self._incoming.pending) or self._raw.get_extra_info(info)
        return self._raw.get_extra_info(info)
