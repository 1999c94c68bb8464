"""The fast path (rangefetch/backend.py, tlsstream.py, directpool.py, bodypath.py, transport.py) on a real server.

Three layers: the network backend on its own (reads, timeouts, errors, TLS
refusal); the transport through an ``httpx.AsyncClient`` with the body fast
path on and off (large bodies, drops, stalls, short bodies, keep-alive),
checking that fetch.py's translation still classifies every failure; and
whole downloads in several fault modes with ``fast_path`` on and off,
sha256-checked.  The private-reach probe is tested for a clean fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from rangeserver import RangeServer

from rangefetch import (
    ConnectionLostError,
    RemoteChangedError,
    RetryPolicy,
    Settings,
    StallError,
    Timeouts,
    TLSError,
    Trust,
    bodypath,
    download,
    make_client,
    ssl_context,
)
from rangefetch import transport as fast
from rangefetch.backend import DirectBackend, DirectStream
from rangefetch.client import translate_error

BIG = os.urandom(8 * 1024 * 1024 + 12345)
SMALL = os.urandom(1_000_000)
FAST_RETRY = RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4)
BODY_PATHS = [pytest.param(True, id="body_fast"), pytest.param(False, id="body_h11")]
CONTEXT = ssl_context(Trust())


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file("big", BIG)
    server.add_file("small", SMALL)
    return server


@pytest.fixture
async def direct(srv: RangeServer) -> AsyncIterator[DirectStream]:
    stream = await DirectBackend(read_size=1024 * 1024).connect_tcp("127.0.0.1", srv.port, timeout=5)
    yield stream
    await stream.aclose()


def client(body_fast_path: bool, *, stall: float = 10.0, read_size: int = 1024 * 1024) -> httpx.AsyncClient:
    transport = fast.FastTransport(
        limits=httpx.Limits(), read_size=read_size, ssl_context=CONTEXT, body_fast_path=body_fast_path
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0, read=stall))


def path(url: str) -> str:
    return url.split(str(url.split("/")[2]), 1)[1]


# --- the network backend ---------------------------------------------------------


async def test_stream_reads_a_response(srv: RangeServer, direct: DirectStream) -> None:
    await direct.write(f"GET {path(srv.url('big'))} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=5)
    got = bytearray()
    sizes = []
    while len(got) < len(BIG):
        chunk = await direct.read(65536, timeout=5)
        assert chunk
        sizes.append(len(chunk))
        got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    while len(body) < len(BIG):
        body += await direct.read(65536, timeout=5)
    assert head.startswith(b"HTTP/1.1 200") and body == BIG
    assert max(sizes) > 65536  # read() reads more than httpcore asks for when more is there


async def test_receive_honours_max_bytes(srv: RangeServer, direct: DirectStream) -> None:
    await direct.write(f"GET {path(srv.url('big'))} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=5)
    for _ in range(20):
        assert 0 < len(await direct.receive(1000, timeout=5)) <= 1000


async def test_stream_read_timeout(srv: RangeServer, direct: DirectStream) -> None:
    with pytest.raises(httpcore.ReadTimeout):
        await direct.read(65536, timeout=0.2)  # no request sent: nothing will come


async def test_stream_eof_after_close(srv: RangeServer, direct: DirectStream) -> None:
    await direct.write(f"GET {path(srv.url('small'))} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    total = 0
    while chunk := await direct.read(65536, timeout=5):
        total += len(chunk)
    assert total > len(SMALL)
    assert await direct.read(65536, timeout=5) == b""


async def test_stream_extra_info_and_tls_refusal(srv: RangeServer, direct: DirectStream) -> None:
    assert direct.get_extra_info("server_addr") == ("127.0.0.1", srv.port)
    assert direct.get_extra_info("socket") is not None
    assert direct.get_extra_info("is_readable") is False
    assert direct.get_extra_info("ssl_object") is None
    # The range server speaks plain HTTP: the handshake fails as a ConnectError
    # whose cause says why (client.translate_error makes it a TLSError).
    with pytest.raises(httpcore.ConnectError) as info:
        await direct.start_tls(CONTEXT, server_hostname="127.0.0.1", timeout=5)
    assert isinstance(info.value.__cause__, ssl.SSLError)


async def test_connect_refused(unused_tcp_port: int) -> None:
    with pytest.raises(httpcore.ConnectError):
        await DirectBackend(read_size=65536).connect_tcp("127.0.0.1", unused_tcp_port, timeout=5)


# --- the transport through httpx ---------------------------------------------------


@pytest.mark.parametrize("body_fast_path", BODY_PATHS)
async def test_large_body(srv: RangeServer, body_fast_path: bool) -> None:
    async with client(body_fast_path) as http:
        async with http.stream("GET", srv.url("big")) as response:
            assert response.status_code == 200
            chunks = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(chunks) == BIG
    assert max(map(len, chunks)) > 65536
    assert all(type(c) is bytes for c in chunks)


@pytest.mark.parametrize("body_fast_path", BODY_PATHS)
async def test_range_request_and_keepalive_reuse(srv: RangeServer, body_fast_path: bool) -> None:
    async with client(body_fast_path) as http:
        for start in (0, 3_000_000, 8_000_000):
            response = await http.get(srv.url("big"), headers={"Range": f"bytes={start}-{start + 99_999}"})
            assert response.status_code == 206 and response.content == BIG[start : start + 100_000]
        head = await http.head(srv.url("big"))
        assert head.status_code == 200 and head.content == b""
    gets = [r for r in srv.requests if r.name == "big"]
    assert len(gets) == 4 and len({r.client for r in gets}) == 1  # one connection, reused


@pytest.mark.parametrize("body_fast_path", BODY_PATHS)
@pytest.mark.parametrize("fault", [{"drop": 300_000}, {"short": 1}], ids=["drop", "short"])
async def test_connection_closed_mid_body(srv: RangeServer, body_fast_path: bool, fault: dict[str, Any]) -> None:
    url = srv.url("big", **fault)
    async with client(body_fast_path) as http:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            async with http.stream("GET", url) as response:
                async for _ in response.aiter_raw():
                    pass
        assert isinstance(translate_error(info.value, url=url), ConnectionLostError)
        # The broken connection is not reused: the next request works.
        assert (await http.get(srv.url("small"))).content == SMALL


@pytest.mark.parametrize("body_fast_path", BODY_PATHS)
async def test_stall_is_a_read_timeout(srv: RangeServer, body_fast_path: bool) -> None:
    url = srv.url("big", stall=2, stall_after=200_000)
    async with client(body_fast_path, stall=0.3) as http:
        with pytest.raises(httpx.ReadTimeout) as info:
            async with http.stream("GET", url) as response:
                async for _ in response.aiter_raw():
                    pass
    assert isinstance(translate_error(info.value, url=url), StallError)


async def test_refused_is_connection_lost(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/f/x"
    async with client(True) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url)
    assert isinstance(translate_error(info.value, url=url), ConnectionLostError)


async def test_https_to_a_plain_server_is_a_tls_error(srv: RangeServer) -> None:
    url = f"https://127.0.0.1:{srv.port}/f/small"
    async with client(True) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.get(url)
    error = translate_error(info.value, url=url)
    assert isinstance(error, TLSError) and "does not answer TLS" in str(error) and "use http://" in str(error)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_make_client_chooses_the_path(srv: RangeServer, fast_path: bool) -> None:
    async with make_client(Settings(fast_path=fast_path)) as http:
        response = await http.get(srv.url("small"))
    assert response.content == SMALL
    assert isinstance(response.extensions["network_stream"], DirectStream) is fast_path


def test_read_size_for() -> None:
    mib = 1024 * 1024
    assert fast.read_size_for(mib, 16) == 256 * 1024  # 16 connections x 2 reads x 256 KiB = 8 MiB
    assert fast.read_size_for(mib, 2) == mib
    assert fast.read_size_for(mib, 256) == fast.MIN_READ
    assert fast.read_size_for(100_000, 4) == 100_000
    # Under a rate limit: a quarter second of the rate over all connections.
    assert fast.read_size_for(mib, 16, rate=mib) == 16 * 1024
    assert fast.read_size_for(mib, 16, rate=64 * mib) == 256 * 1024  # the memory bound is lower
    assert fast.read_size_for(mib, 16, rate=1024) == fast.MIN_LIMITED_READ


# --- whole downloads, fast path on and off -------------------------------------------

DOWNLOAD_FAULTS = [
    pytest.param({}, id="clean"),
    pytest.param({"drop": 100_000, "times": 3}, id="drop"),
    pytest.param({"stall": 3, "stall_after": 50_000, "times": 2}, id="stall"),
    pytest.param({"norange": 1}, id="norange"),
    pytest.param({"status": 503, "retry_after": 1, "times": 1}, id="503"),
    pytest.param({"rate": 2_000_000}, id="trickle"),  # small reads: the coalescing delay
]


PATHS = ["fast", "fast_h11", "plain"]  # fast_h11: the fallback when the private-reach probe fails


def path_settings(monkeypatch: pytest.MonkeyPatch, which: str, **values: Any) -> Settings:
    if which == "fast_h11":
        monkeypatch.setattr(bodypath, "BODY_FAST_PATH", False)
    values = {"connections": 4, "chunk_size": 256 * 1024, "retry": FAST_RETRY, **values}
    return Settings(fast_path=which != "plain", **values)


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("faults", DOWNLOAD_FAULTS)
async def test_download_fault_modes(
    srv: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, faults: dict[str, Any]
) -> None:
    s = path_settings(monkeypatch, which, timeouts=Timeouts(stall=1))
    result = await download(srv.url("small", **faults), directory=tmp_path, settings=s)
    assert result.sha256 == hashlib.sha256(SMALL).hexdigest()
    assert result.path.read_bytes() == SMALL


@pytest.mark.parametrize("which", PATHS)
async def test_download_etag_change(
    srv: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    s = path_settings(monkeypatch, which)
    with pytest.raises(RemoteChangedError):
        await download(srv.url("small", etag_change_after=2), directory=tmp_path, settings=s)
    assert not (tmp_path / "small").exists()


# --- the private-reach probe -------------------------------------------------------------


def test_probe_passes_on_the_pinned_versions() -> None:
    assert bodypath.BODY_FAST_PATH, bodypath.UNAVAILABLE_BECAUSE
    assert httpcore.__version__ in bodypath.TESTED_HTTPCORE


def test_probe_reports_a_missing_private_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(httpcore.AsyncHTTP11Connection, "_receive_response_body")
    reader, why = bodypath._probe_body_fast_path()
    assert reader is None and why is not None and "_receive_response_body" in why


def test_probe_reports_an_untested_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpcore, "__version__", "1.0.99")
    reader, why = bodypath._probe_body_fast_path()
    assert reader is None and why is not None and "1.0.99" in why


def test_probe_reports_changed_h11_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    import h11._readers

    class Renamed:
        def __init__(self, length: int) -> None:
            self.length = length

    monkeypatch.setattr(h11._readers, "ContentLengthReader", Renamed)
    reader, why = bodypath._probe_body_fast_path()
    assert reader is None and why is not None and "AttributeError" in why


def test_forcing_an_unavailable_body_fast_path_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodypath, "BODY_FAST_PATH", False)
    with pytest.raises(ValueError, match="not available"):
        fast.FastTransport(limits=httpx.Limits(), read_size=65536, ssl_context=CONTEXT, body_fast_path=True)
    assert fast.FastTransport(limits=httpx.Limits(), read_size=65536, ssl_context=CONTEXT).body_fast_path is False


def test_import_falls_back_on_an_untested_version(srv: RangeServer, tmp_path: Path) -> None:
    # A fresh interpreter whose httpcore claims another version before
    # rangefetch is imported: the probe at import turns the body fast path
    # off, and a download still goes over the direct backend, correctly.
    script = f"""
import httpcore
httpcore.__version__ = "1.0.99"
import rangefetch, rangefetch.bodypath as t
assert not t.BODY_FAST_PATH and "1.0.99" in t.UNAVAILABLE_BECAUSE
s = rangefetch.Settings(connections=4, chunk_size=256 * 1024)
r = rangefetch.download_sync({srv.url("small")!r}, {str(tmp_path / "out")!r}, settings=s)
print(r.sha256)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(SMALL).hexdigest()


async def test_a_reused_connection_closed_by_the_server_is_retried_at_once() -> None:
    # A server (tinyproxy does this) that answers HTTP/1.1 without
    # "Connection: close" and then closes: the next request reuses a
    # connection that is already gone.  GET goes again on a new connection,
    # at once, instead of failing.
    body = os.urandom(1000)
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await asyncio.sleep(0.05)  # the client's next request is on its way by now
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, client(True) as http:
        for _ in range(3):
            response = await http.get(f"http://127.0.0.1:{port}/x")
            assert response.content == body
    assert connections == 3


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("UNSUPPORTED_PROTOCOL", "no TLS version in common"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "no TLS version in common"),
        ("WRONG_VERSION_NUMBER", "does not answer TLS"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "--ca-certificate FILE"),
    ],
)
def test_tls_handshake_failures_name_their_cause(reason: str, says: str) -> None:
    cause = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    cause.reason = reason
    try:
        raise httpx.ConnectError("handshake failed") from cause
    except httpx.ConnectError as exc:
        error = translate_error(exc, url="https://mirror.example:8443/f")
    assert isinstance(error, TLSError) and says in str(error) and "mirror.example:8443" in str(error)
