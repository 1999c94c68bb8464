"""HTTPS: downloads from the range server over TLS, certificates from a test CA (trustme).

The first part checks the TLS range server itself (every fault mode answers
over TLS exactly as over plain HTTP).  The rest runs rangefetch against it on
both data paths (the fast path and httpx's stock transport): every download is
checked by sha256 against the served bytes, and TLS failures must be one
``TLSError``, never retried.  A failed handshake sends no HTTP request at all,
so attempts are counted as the TCP connections the server accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from rangeserver import RangeServer
from test_cli import assert_clean_failure, assert_success, run
from test_download import assert_ok, planned, range_gets, wait_for_done_ranges
from test_downloader import assemble
from tlsproxy_helpers import CHUNK, DATA, HANG_GUARD, NAME, RANGED, SHA, alternating, fetch, path_env, settings

from rangefetch import (
    Downloader,
    HTTPStatusError,
    PermanentError,
    ProtocolError,
    RemoteChangedError,
    RetriesExhaustedError,
    Settings,
    Timeouts,
    TLSError,
    download_sync,
)

OTHER = os.urandom(300_000)


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: trusts ``ca_file``, else only the default store."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    server.add_file("other.bin", OTHER)
    return server


@pytest.fixture
def tls_srv(tls_server: RangeServer) -> RangeServer:
    tls_server.add_file(NAME, DATA)
    tls_server.add_file("other.bin", OTHER)
    return tls_server


@pytest.fixture(scope="module")
def other_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificate of a CA that issued nothing the servers use."""
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


# --- the TLS range server itself ------------------------------------------------


def exchange(
    srv: RangeServer,
    url: str,
    headers: dict[str, str],
    method: str = "GET",
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> tuple[Any, ...]:
    """One request on a fresh connection, as a comparable outcome.

    Status, the headers that must not depend on the scheme (``Location`` with
    the server's base URL taken out) and the body's sha256; or the exception
    type and, for a truncated body, how much arrived.
    """
    parts = httpx.URL(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.host, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.host, parts.port, timeout=timeout)
    try:
        target = parts.raw_path.decode()
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except http.client.IncompleteRead as exc:
        return ("IncompleteRead", len(exc.partial))
    except OSError as exc:
        return (type(exc).__name__,)
    finally:
        conn.close()
    kept = ("content-length", "content-range", "accept-ranges", "content-encoding", "transfer-encoding", "etag")
    shown = {k.lower(): v for k, v in resp.getheaders() if k.lower() in kept}
    if location := resp.getheader("Location"):
        shown["location"] = location.replace(srv.base_url, "BASE")
    if retry_after := resp.getheader("Retry-After"):
        shown["retry-after"] = retry_after if retry_after.isdigit() else "date"
    return (resp.status, shown, hashlib.sha256(body).hexdigest())


SAME_AS_PLAIN: list[tuple[dict[str, Any], dict[str, str], str]] = [
    ({}, {}, "GET"),
    ({}, {"Range": "bytes=10-99"}, "GET"),
    ({}, {"Range": "bytes=-5"}, "GET"),
    ({}, {"Range": "bytes=999999999-"}, "GET"),
    ({}, {}, "HEAD"),
    ({"norange": 1}, {"Range": "bytes=10-99"}, "GET"),
    ({"acceptranges_none": 1}, {"Range": "bytes=10-99"}, "GET"),
    ({"nolength": 1}, {}, "GET"),
    ({"nolength": 1, "chunked": 1}, {}, "GET"),
    ({"nohead": 405}, {}, "HEAD"),
    ({"headlies": 1}, {}, "HEAD"),
    ({"gzip": 1}, {"Accept-Encoding": "gzip"}, "GET"),
    ({"weak_etag": 1}, {"Range": "bytes=0-9"}, "GET"),
    ({"no_validators": 1}, {"Range": "bytes=0-9"}, "GET"),
    ({}, {"Range": "bytes=0-9", "If-Range": '"stale"'}, "GET"),
    ({"drop": 1000}, {}, "GET"),
    ({"short": 1}, {"Range": "bytes=0-9999"}, "GET"),
    ({"wrong_range": 1}, {"Range": "bytes=100-199"}, "GET"),
    ({"status": 503, "retry_after": 7}, {}, "GET"),
    ({"status": 429, "retry_after_date": 1}, {}, "GET"),
    ({"status": 404}, {}, "GET"),
    ({"redirect": 1}, {}, "GET"),
    ({"redirect": 2}, {}, "GET"),
    ({"redirect_to": "other.bin"}, {}, "GET"),
    ({"etag_change_after": 0}, {}, "GET"),
    ({"cd": "x.bin"}, {}, "GET"),
    ({"rate": 4_000_000}, {"Range": "bytes=0-99999"}, "GET"),
    ({"stall": 1, "stall_after": 1000}, {}, "GET"),
    ({"slow_headers": 1}, {}, "GET"),
]


@pytest.mark.parametrize(
    ("faults", "headers", "method"),
    SAME_AS_PLAIN,
    ids=["-".join([m, *(f"{k}{v}" for k, v in f.items()), *h.values()]) for f, h, m in SAME_AS_PLAIN],
)
def test_every_fault_mode_answers_as_over_plain_http(
    srv: RangeServer,
    tls_srv: RangeServer,
    ca_file: Path,
    faults: dict[str, Any],
    headers: dict[str, str],
    method: str,
) -> None:
    timeout = 0.3 if {"stall", "slow_headers"} & set(faults) else 5.0
    plain = exchange(srv, srv.url(NAME, **faults), headers, method, timeout)
    tls = exchange(tls_srv, tls_srv.url(NAME, **faults), headers, method, timeout, client_context(ca_file))
    assert tls == plain
    assert tls_srv.tls_handshakes == 1
    assert [r.path for r in tls_srv.requests] == [r.path for r in srv.requests]


def test_base_url_and_redirects_are_https(tls_srv: RangeServer, ca_file: Path) -> None:
    assert tls_srv.base_url == f"https://127.0.0.1:{tls_srv.port}"
    with httpx.Client(verify=client_context(ca_file), follow_redirects=True) as client:
        resp = client.get(tls_srv.url(NAME, redirect=4))
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == SHA
    assert [str(r.url).split(":")[0] for r in resp.history] == ["https"] * 4
    assert str(resp.url) == tls_srv.url(NAME, redirect=0)


def test_keep_alive_over_tls(tls_srv: RangeServer, ca_file: Path) -> None:
    with httpx.Client(verify=client_context(ca_file)) as client:
        for first in (0, 1000, 2000):
            resp = client.get(tls_srv.url(NAME), headers={"Range": f"bytes={first}-{first + 999}"})
            assert resp.status_code == 206 and resp.content == DATA[first : first + 1000]
    assert len({r.client for r in tls_srv.requests}) == 1
    assert tls_srv.accepted_connections == tls_srv.tls_handshakes == 1


def raw_tls(tls_srv: RangeServer, ca_file: Path, query: dict[str, Any]) -> tuple[bytes, str]:
    """GET over a socket that reports a missing close_notify; returns what came and how it ended."""
    context = client_context(ca_file)
    with socket.create_connection(("127.0.0.1", tls_srv.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as sock:
            target = tls_srv.url(NAME, **query).removeprefix(tls_srv.base_url)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            received = bytearray()
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ssl.SSLEOFError:
                return bytes(received), "eof without close_notify"
            return bytes(received), "close_notify"


def test_close_notify_on_a_normal_close_not_on_a_drop(tls_srv: RangeServer, ca_file: Path) -> None:
    body, how = raw_tls(tls_srv, ca_file, {"nolength": 1})
    assert how == "close_notify"  # a close-delimited body ends cleanly
    assert body.endswith(DATA)
    body, how = raw_tls(tls_srv, ca_file, {"drop": 1000})
    assert how == "eof without close_notify"  # a drop is a truncation, as TLS sees it
    assert body.endswith(DATA[:1000])


def test_a_rejected_certificate_is_counted_and_quiet(tls_srv: RangeServer, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        exchange_ssl(tls_srv.port, client_context())
    assert wait_until(lambda: tls_srv.tls_failures == 1)
    assert (tls_srv.accepted_connections, tls_srv.tls_handshakes, tls_srv.requests) == (1, 0, [])
    assert capfd.readouterr().err == ""


def exchange_ssl(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
    """A TLS handshake with 127.0.0.1:``port``, verifying the certificate for ``host``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            pass


def test_wrong_host_certificate(tls_wrong_host_server: RangeServer, ca_file: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        exchange_ssl(tls_wrong_host_server.port, client_context(ca_file))
    exchange_ssl(tls_wrong_host_server.port, client_context(ca_file), host="example.invalid")
    assert wait_until(lambda: tls_wrong_host_server.tls_handshakes == 1)
    assert tls_wrong_host_server.tls_failures == 1


def test_tls_to_the_plain_server_is_a_protocol_error(srv: RangeServer, plain_port: int, ca_file: Path) -> None:
    with pytest.raises(ssl.SSLError):
        exchange_ssl(plain_port, client_context(ca_file))
    assert srv.accepted_connections == 1
    assert srv.requests == []  # the ClientHello never parses as a request


def test_a_silent_client_does_not_block_accepts(tls_srv: RangeServer, ca_file: Path) -> None:
    with socket.create_connection(("127.0.0.1", tls_srv.port)):  # connects, never says hello
        with httpx.Client(verify=client_context(ca_file), timeout=5) as client:
            assert client.get(tls_srv.url(NAME)).content == DATA
    assert tls_srv.accepted_connections == 2


def test_stop_ends_tls_connections(
    tls_range_server: RangeServer, ca_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    srv = RangeServer(tls=tls_range_server.tls).start()  # its own server, same certificate
    srv.add_file(NAME, DATA)
    silent = socket.create_connection(("127.0.0.1", srv.port))  # stuck before its handshake
    idle = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=client_context(ca_file))
    idle.request("GET", f"/f/{NAME}")
    assert idle.getresponse().read() == DATA  # now an idle keep-alive connection
    stalled = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=client_context(ca_file))
    stalled.request("GET", f"/f/{NAME}?stall=30&stall_after=1000")
    resp = stalled.getresponse()
    assert wait_until(lambda: srv.open_connections == 3)

    started = time.monotonic()
    srv.stop()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()  # woken by the stop, not after 30 s
    assert time.monotonic() - started < 5  # hang guard
    assert wait_until(lambda: srv.open_connections == 0)
    assert silent.recv(1) == b""
    for sock in (silent, idle, stalled):
        sock.close()
    assert capfd.readouterr().err == ""


# --- downloads over TLS -----------------------------------------------------------


async def test_ranged_download(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_srv.url(NAME), tmp_path, s)
    assert_ok(result, DATA)
    gets = range_gets(tls_srv.requests)
    assert sorted(r.headers["range"] for r in gets) == sorted(f"bytes={a}-{b}" for a, b in planned(len(DATA)))
    assert all(r.status == 206 for r in gets)
    assert tls_srv.max_concurrent <= 4
    assert tls_srv.tls_handshakes >= 1
    assert tls_srv.accepted_connections <= 6  # the pool's limit: connections + 2


def test_download_sync(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool) -> None:
    result = download_sync(
        tls_srv.url(NAME), tmp_path / "sync.bin", settings=settings(fast_path, ca_certificate=ca_file)
    )
    assert_ok(result, DATA)


@pytest.mark.parametrize("size", [0, 1, CHUNK + 1])
async def test_edge_sizes(tls_server: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, size: int) -> None:
    data = os.urandom(size)
    tls_server.add_file(f"size{size}", data)
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_server.url(f"size{size}"), tmp_path, s)
    assert_ok(result, data)


@pytest.mark.parametrize(
    "faults",
    [{"norange": 1}, {"acceptranges_none": 1}, {"nolength": 1}, {"nolength": 1, "chunked": 1}],
    ids=["norange", "acceptranges_none", "nolength", "nolength_chunked"],
)
async def test_single_stream_fallback(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, faults: dict[str, Any]
) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_srv.url(NAME, **faults), tmp_path, s)
    assert_ok(result, DATA)
    assert not result.remote.ranges
    assert range_gets(tls_srv.requests) == []


@pytest.mark.parametrize(
    "faults",
    [{"nohead": 405}, {"nohead": 501}, {"headlies": 1}, {"weak_etag": 1}, {"gzip": 1}, {"rate": 4_000_000}],
    ids=["nohead405", "nohead501", "headlies", "weak_etag", "gzip", "rate"],
)
async def test_odd_servers_still_ranged(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, faults: dict[str, Any]
) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_srv.url(NAME, **faults), tmp_path, s)
    assert_ok(result, DATA)
    # Each planned range, and nothing else (a range sent again whole, when a
    # kept-alive connection was closed under it on a loaded machine, is fine).
    assert sorted({r.headers["range"] for r in range_gets(tls_srv.requests)}) == sorted(
        f"bytes={a}-{b}" for a, b in planned(len(DATA))
    )
    assert all(r.headers.get("accept-encoding") == "identity" for r in tls_srv.requests)


async def test_drop_resumes_from_last_byte(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    s = settings(fast_path, ca_certificate=ca_file, connections=2)
    result = await fetch(tls_srv.url(NAME, drop=100_000, times=3), tmp_path, s)
    assert_ok(result, DATA)
    starts = [int(r.headers["range"].removeprefix("bytes=").partition("-")[0]) for r in range_gets(tls_srv.requests)]
    resumed = [start for start in starts if start % CHUNK]
    assert len(resumed) == 2
    assert all(0 < start % CHUNK <= 100_000 for start in resumed)


@pytest.mark.parametrize(
    "faults",
    [{"stall": 5, "stall_after": 50_000, "times": 2}, {"slow_headers": 5, "times": 1}],
    ids=["stall_mid_body", "slow_headers"],
)
async def test_stall_is_retried(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, faults: dict[str, Any]
) -> None:
    s = settings(fast_path, ca_certificate=ca_file, timeouts=Timeouts(stall=0.5))
    result = await fetch(tls_srv.url(NAME, **faults), tmp_path, s)
    assert_ok(result, DATA)
    if "stall_after" in faults:
        starts = [
            int(r.headers["range"].removeprefix("bytes=").partition("-")[0]) for r in range_gets(tls_srv.requests)
        ]
        assert 50_000 in [start % CHUNK for start in starts]  # resumed where the stalled body stopped


async def test_server_busy_is_retried(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_srv.url(NAME, status=503, retry_after=1), tmp_path, s)
    assert_ok(result, DATA)
    assert [r.status for r in tls_srv.requests if r.method == "GET"].count(503) == 1


async def test_permanent_status(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool) -> None:
    with pytest.raises(HTTPStatusError):
        await fetch(tls_srv.url(NAME, status=404), tmp_path, settings(fast_path, ca_certificate=ca_file))
    assert len([r for r in tls_srv.requests if r.method == "GET"]) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("faults", "error"),
    [({"wrong_range": 1}, ProtocolError), ({"short": 1}, RetriesExhaustedError)],
    ids=["wrong_range", "short"],
)
async def test_bad_bodies_fail(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, faults: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await fetch(tls_srv.url(NAME, **faults), tmp_path, settings(fast_path, ca_certificate=ca_file))
    assert not (tmp_path / NAME).exists()


async def test_remote_changes_during_download(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    with pytest.raises(RemoteChangedError):
        await fetch(tls_srv.url(NAME, etag_change_after=2), tmp_path, s)
    assert not (tmp_path / NAME).exists()
    result = await fetch(tls_srv.url(NAME, key="fresh"), tmp_path, s)
    assert_ok(result, DATA)


@pytest.mark.parametrize(
    ("faults", "name", "data"),
    [({"redirect": 3}, NAME, DATA), ({"redirect_to": "other.bin"}, "other.bin", OTHER)],
    ids=["chain", "other_name"],
)
async def test_redirects(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, faults: dict[str, Any], name: str, data: bytes
) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    result = await fetch(tls_srv.url(NAME, **faults), tmp_path, s)
    assert result.path == (tmp_path / name).resolve()
    assert_ok(result, data)
    assert all(r.status == 206 for r in range_gets(tls_srv.requests))


async def test_resume_after_cancel(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool) -> None:
    s = settings(fast_path, ca_certificate=ca_file, connections=2, chunk_size=128 * 1024, checkpoint_interval=0.05)
    url = tls_srv.url(NAME, rate=512 * 1024)
    task = asyncio.create_task(fetch(url, tmp_path, s))
    await wait_for_done_ranges(tmp_path / f"{NAME}.part.json")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / NAME).exists()

    result = await fetch(url, tmp_path, s)
    assert_ok(result, DATA)
    assert 0 < result.resumed < len(DATA)


# --- where trust comes from ------------------------------------------------------


async def test_ssl_cert_file_is_honoured(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    result = await fetch(tls_srv.url(NAME), tmp_path, settings(fast_path))
    assert_ok(result, DATA)


async def test_ssl_cert_dir_is_honoured(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to name the CA file by its subject hash")
    subject_hash = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(ca_file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca_file, certs / f"{subject_hash}.0")
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    result = await fetch(tls_srv.url(NAME), tmp_path / "dl", settings(fast_path))
    assert_ok(result, DATA)


async def test_ca_certificate_from_the_environment(
    tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANGEFETCH_CA_CERTIFICATE", str(ca_file))
    assert Settings().ca_certificate == ca_file
    result = await fetch(tls_srv.url(NAME), tmp_path, settings(fast_path))
    assert_ok(result, DATA)


async def test_ca_certificate_replaces_the_default_store(
    tls_srv: RangeServer,
    tmp_path: Path,
    ca_file: Path,
    other_ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Like curl --cacert: the file given is all that is trusted, SSL_CERT_FILE included.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with pytest.raises(TLSError):
        s = settings(fast_path, ca_certificate=other_ca_file)
        await fetch(tls_srv.url(NAME), tmp_path, s)
    assert tls_srv.accepted_connections == 1
    assert tls_srv.requests == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["setting", "environment"])
async def test_insecure_needs_no_ca(
    tls_srv: RangeServer, tmp_path: Path, fast_path: bool, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "environment":
        monkeypatch.setenv("RANGEFETCH_INSECURE", "1")
        s = settings(fast_path)
    else:
        s = settings(fast_path, insecure=True)
    assert s.insecure
    result = await fetch(tls_srv.url(NAME), tmp_path, s)
    assert_ok(result, DATA)


async def test_insecure_accepts_a_wrong_host(
    tls_wrong_host_server: RangeServer, tmp_path: Path, fast_path: bool
) -> None:
    tls_wrong_host_server.add_file(NAME, DATA)
    result = await fetch(tls_wrong_host_server.url(NAME), tmp_path, settings(fast_path, insecure=True))
    assert_ok(result, DATA)


# --- TLS failures: one TLSError, not retried, nothing on disk -------------------------


def assert_tls_failure(exc: BaseException, server: RangeServer, tmp_path: Path) -> None:
    """A permanent TLSError after one connection; no HTTP request was made, nothing was written."""
    assert isinstance(exc, TLSError)
    assert isinstance(exc, PermanentError)
    assert "\n" not in str(exc)
    assert server.accepted_connections == 1  # not retried
    assert server.requests == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trust", ["default_store", "other_ca"])
async def test_unknown_ca(
    tls_srv: RangeServer, tmp_path: Path, other_ca_file: Path, fast_path: bool, trust: str
) -> None:
    s = settings(fast_path, ca_certificate=other_ca_file if trust == "other_ca" else None)
    with pytest.raises(TLSError) as info:
        await fetch(tls_srv.url(NAME), tmp_path, s)
    assert_tls_failure(info.value, tls_srv, tmp_path)


async def test_hostname_mismatch(
    tls_wrong_host_server: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    tls_wrong_host_server.add_file(NAME, DATA)
    s = settings(fast_path, ca_certificate=ca_file)
    with pytest.raises(TLSError) as info:
        await fetch(tls_wrong_host_server.url(NAME), tmp_path, s)
    assert_tls_failure(info.value, tls_wrong_host_server, tmp_path)


async def test_tls_to_a_plain_http_port(
    srv: RangeServer, plain_port: int, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    s = settings(fast_path, ca_certificate=ca_file, timeouts=Timeouts(connect=10, stall=10))
    with pytest.raises(TLSError) as info:
        await fetch(f"https://127.0.0.1:{plain_port}/f/{NAME}", tmp_path, s)
    assert_tls_failure(info.value, srv, tmp_path)


# --- the seed API over TLS ------------------------------------------------------------


async def test_downloader_over_tls(tls_srv: RangeServer, ca_file: Path, fast_path: bool) -> None:
    s = settings(fast_path, ca_certificate=ca_file)
    async with asyncio.timeout(HANG_GUARD), Downloader(tls_srv.url(NAME), 4, 64 * 1024, settings=s) as downloader:
        assert await downloader.get_size() == len(DATA)
        chunks = [chunk async for chunk in downloader.start()]
    assert hashlib.sha256(assemble(chunks, len(DATA))).hexdigest() == SHA
    assert range_gets(tls_srv.requests) != []
    assert tls_srv.tls_handshakes >= 1


async def test_downloader_unknown_ca(tls_srv: RangeServer, fast_path: bool) -> None:
    async with (
        asyncio.timeout(HANG_GUARD),
        Downloader(tls_srv.url(NAME), 4, settings=settings(fast_path)) as downloader,
    ):
        with pytest.raises(TLSError):
            await downloader.get_size()
    assert tls_srv.accepted_connections == 1
    assert tls_srv.requests == []


# --- the CLI ------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "fast_path"), alternating(("--ca-certificate",), ("--cacert",)))
def test_cli_ca_certificate(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, flag: str) -> None:
    proc = run(
        "get", *RANGED, flag, str(ca_file), "-o", "out.bin", tls_srv.url(NAME), cwd=tmp_path, env=path_env(fast_path)
    )
    assert_success(proc, tmp_path / "out.bin", SHA)


@pytest.mark.parametrize(
    "how",
    ["--insecure", "-k", "SSL_CERT_FILE"],
)
def test_cli_other_ways_to_trust(tls_srv: RangeServer, tmp_path: Path, ca_file: Path, how: str) -> None:
    flags = [how] if how.startswith("-") else []
    env = path_env(True) if flags else path_env(True, **{how: str(ca_file)})
    proc = run("get", *RANGED, *flags, "-o", "out.bin", tls_srv.url(NAME), cwd=tmp_path, env=env)
    assert_success(proc, tmp_path / "out.bin", SHA)


def assert_cli_tls_failure(proc: subprocess.CompletedProcess[str], server: RangeServer, tmp_path: Path) -> None:
    line = assert_clean_failure(proc, 1, tmp_path / "out.bin")
    assert "--ca-certificate" in line and "--insecure" in line
    assert list(tmp_path.iterdir()) == []  # neither out.bin nor a stray .part
    assert server.accepted_connections == 1
    assert server.requests == []


def test_cli_unknown_ca(tls_srv: RangeServer, tmp_path: Path, fast_path: bool) -> None:
    proc = run("get", *RANGED, "-o", "out.bin", tls_srv.url(NAME), cwd=tmp_path, env=path_env(fast_path))
    assert_cli_tls_failure(proc, tls_srv, tmp_path)


def test_cli_hostname_mismatch(tls_wrong_host_server: RangeServer, tmp_path: Path, ca_file: Path) -> None:
    tls_wrong_host_server.add_file(NAME, DATA)
    url = tls_wrong_host_server.url(NAME)
    proc = run("get", *RANGED, "--cacert", str(ca_file), "-o", "out.bin", url, cwd=tmp_path, env=path_env(True))
    assert_cli_tls_failure(proc, tls_wrong_host_server, tmp_path)


def test_cli_tls_to_a_plain_http_port(srv: RangeServer, plain_port: int, tmp_path: Path, ca_file: Path) -> None:
    url = f"https://127.0.0.1:{plain_port}/f/{NAME}"
    proc = run("get", *RANGED, "--cacert", str(ca_file), "-o", "out.bin", url, cwd=tmp_path, env=path_env(True))
    # The cause and its fix: not a certificate, a server that does not speak TLS.
    line = assert_clean_failure(proc, 1, tmp_path / "out.bin")
    assert "does not answer TLS" in line and "use http://" in line
    assert list(tmp_path.iterdir()) == [] and srv.accepted_connections == 1 and srv.requests == []
