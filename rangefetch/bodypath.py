"""The body fast path: ``Content-Length`` bodies read from the socket around h11.

Once h11 has parsed the headers of a ``Content-Length`` body and its buffer
is empty, body bytes are read from the socket straight to the caller, and
h11 is told how many went by (``FastHTTP11Connection``).  A body read of less
than ``COALESCE_BELOW`` waits ``COALESCE_DELAY`` before the next, so a
rate-capped server's trickle is picked up in fewer, larger reads.

Private reach: the body fast path overrides
``httpcore.AsyncHTTP11Connection._receive_response_body`` and reads
``_h11_state`` (httpcore), ``Connection._reader``, ``_receive_buffer`` and
``_receive_buffer_closed`` and ``ContentLengthReader._remaining`` (h11).
It is enabled only when the installed versions are the tested ones
(``TESTED_HTTPCORE``, ``TESTED_H11``, pinned in pyproject.toml) and a probe
at import finds every one of those names (``BODY_FAST_PATH``).  Otherwise
the fast pool uses httpcore's stock connection over ``DirectBackend``, which
still reads ``read_size`` bytes per call; ``Settings.fast_path=False`` skips
the fast path altogether.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import AsyncIterator

import h11
import httpcore

from .backend import DirectStream
from .tlsstream import TLSStream

__all__ = [
    "BODY_FAST_PATH",
    "COALESCE_BELOW",
    "COALESCE_DELAY",
    "TESTED_H11",
    "TESTED_HTTPCORE",
    "UNAVAILABLE_BECAUSE",
    "FastHTTP11Connection",
]

log = logging.getLogger(__name__)

# A body read smaller than COALESCE_BELOW waits COALESCE_DELAY seconds before
# the next one: on the capped bench (8 MiB/s per connection) that halves the
# CPU per GiB at the same throughput, and it costs nothing unthrottled
# (bench/README.md, "Levers tried").  Far below any stall timeout.
COALESCE_BELOW = 64 * 1024
COALESCE_DELAY = 0.02

TESTED_HTTPCORE = ("1.0.9",)
TESTED_H11 = ("0.16.0",)


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


class FastHTTP11Connection(httpcore.AsyncHTTP11Connection):
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
