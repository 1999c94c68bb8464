"""Downloads through a real forward proxy (tinyproxy, tests/proxyserver.py), on both data paths.

https:// goes through a CONNECT tunnel, http:// as absolute-form requests.
tinyproxy's log shows every request line it got, and it marks each request it
forwards with ``X-Tinyproxy``, so a test can tell that the origin was reached
through the proxy, and only through it.  A proxy that is configured but cannot
be reached is a ``ProxyError``; it is never bypassed.  Every download is
checked by sha256 against the served bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxyserver import TinyProxy
from rangeserver import RangeServer
from test_cli import assert_clean_failure, assert_success, run
from test_download import assert_ok, range_gets
from test_downloader import assemble
from tlsproxy_helpers import (
    CHUNK,
    DATA,
    HANG_GUARD,
    NAME,
    RANGED,
    SHA,
    alternating,
    fetch,
    host_port,
    path_env,
    settings,
)

from rangefetch import Downloader, ProxyError, Settings, download
from rangefetch.settings import DEFAULT_RETRY

OTHER = os.urandom(300_000)


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


@pytest.fixture(params=["https", "http"])
def origin(request: pytest.FixtureRequest, srv: RangeServer, tls_srv: RangeServer) -> RangeServer:
    """The HTTPS and the plain range server, each with the test files.

    A test picks one with ``parametrize(("origin", ...), ..., indirect=["origin"])``.
    """
    chosen: RangeServer = tls_srv if request.param == "https" else srv
    return chosen


def assert_proxied(proxy: TinyProxy, mark: int, origin: RangeServer) -> None:
    """Everything the origin saw since the test began came through the proxy, and nothing else did.

    https: one CONNECT per TCP connection the origin accepted, no request in
    absolute form.  http: one absolute-form request per request the origin
    saw, each forwarded (``X-Tinyproxy``) in origin form (``/f/...``).
    """
    seen = proxy.requests_since(mark, host_port(origin))
    log = proxy.log_since(mark)
    if origin.tls is not None:
        assert origin.accepted_connections >= 1
        assert [r.method for r in seen] == ["CONNECT"] * origin.accepted_connections, log
    else:
        requests = origin.requests
        assert requests
        assert sorted(r.method for r in seen) == sorted(r.method for r in requests), log
        assert proxy.gets_since(mark, host_port(origin)) == sum(r.method == "GET" for r in requests)
        assert all(r.headers.get("x-tinyproxy") == "127.0.0.1" for r in requests)
        assert all(r.path.startswith("/f/") for r in requests)


def assert_direct(proxy: TinyProxy, mark: int, origin: RangeServer) -> None:
    """The proxy saw nothing for the origin; the origin's requests came straight from the client."""
    assert proxy.requests_since(mark, host_port(origin)) == [], proxy.log_since(mark)
    assert origin.requests
    assert not any("x-tinyproxy" in r.headers for r in origin.requests)


def assert_never_reached(origin: RangeServer, tmp_path: Path) -> None:
    """Not one connection reached the origin, and nothing was written."""
    assert origin.accepted_connections == 0
    assert origin.requests == []
    assert list(tmp_path.iterdir()) == []


def trusting(fast_path: bool, ca_file: Path, **overrides: Any) -> Settings:
    """``settings()`` that trusts the test CA, so one call serves both origins."""
    return settings(fast_path, ca_certificate=ca_file, **overrides)


# --- the proxy fixture itself ----------------------------------------------------------


def test_tinyproxy_tunnels_and_logs_connect(tinyproxy: TinyProxy, tls_srv: RangeServer, ca_file: Path) -> None:
    mark = tinyproxy.mark()
    with httpx.Client(proxy=tinyproxy.url, verify=ssl.create_default_context(cafile=str(ca_file))) as client:
        assert client.get(tls_srv.url(NAME)).content == DATA
    assert tinyproxy.connects_since(mark, host_port(tls_srv)) == 1
    assert_proxied(tinyproxy, mark, tls_srv)


def test_tinyproxy_forwards_absolute_form_and_logs_it(tinyproxy: TinyProxy, srv: RangeServer) -> None:
    mark = tinyproxy.mark()
    with httpx.Client(proxy=tinyproxy.url) as client:
        resp = client.get(srv.url(NAME), headers={"Range": "bytes=10-19"})
    assert (resp.status_code, resp.content) == (206, DATA[10:20])
    assert tinyproxy.gets_since(mark, host_port(srv)) == 1
    assert srv.requests[0].headers["range"] == "bytes=10-19"
    assert_proxied(tinyproxy, mark, srv)


def test_dead_proxy_refuses(dead_proxy_url: str) -> None:
    port = httpx.URL(dead_proxy_url).port
    assert port is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# --- downloads through the proxy -----------------------------------------------------------


async def test_download_through_the_proxy(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    mark = tinyproxy.mark()
    result = await fetch(origin.url(NAME), tmp_path, trusting(fast_path, ca_file, proxy=tinyproxy.url))
    assert_ok(result, DATA)
    assert len(range_gets(origin.requests)) == 3
    assert_proxied(tinyproxy, mark, origin)


FAULTS: dict[str, tuple[dict[str, Any], str, bytes]] = {
    "drop": ({"drop": 100_000, "times": 3}, NAME, DATA),
    "redirect_chain": ({"redirect": 3}, NAME, DATA),
    "norange": ({"norange": 1}, NAME, DATA),
    "redirect_to": ({"redirect_to": "other.bin"}, "other.bin", OTHER),
}


@pytest.mark.parametrize(
    ("fault", "fast_path"), alternating(("drop",), ("drop",), ("redirect_chain",), ("norange",), ("redirect_to",))
)
async def test_faults_through_the_proxy(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, fault: str
) -> None:
    faults, name, data = FAULTS[fault]
    mark = tinyproxy.mark()
    s = trusting(fast_path, ca_file, proxy=tinyproxy.url, connections=2)
    result = await fetch(origin.url(NAME, **faults), tmp_path, s)
    assert result.path.name == name
    assert_ok(result, data)
    assert_proxied(tinyproxy, mark, origin)
    if fault == "drop":
        starts = [int(r.headers["range"].removeprefix("bytes=").partition("-")[0]) for r in range_gets(origin.requests)]
        assert any(start % CHUNK for start in starts)  # a dropped range resumed mid-way, through the proxy


@pytest.mark.parametrize(
    ("proxied_scheme", "proxied_first", "fast_path"),
    alternating(("http", True), ("http", False), ("https", True), ("https", False)),
)
async def test_each_redirect_hop_takes_the_route_of_its_url(
    tinyproxy: TinyProxy,
    srv: RangeServer,
    tls_srv: RangeServer,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    proxied_scheme: str,
    proxied_first: bool,
) -> None:
    # A proxy for one scheme only: a redirect to the other scheme leaves it, or enters it.
    proxied, direct = (srv, tls_srv) if proxied_scheme == "http" else (tls_srv, srv)
    first, then = (proxied, direct) if proxied_first else (direct, proxied)
    s = trusting(fast_path, ca_file, **{f"{proxied_scheme}_proxy": tinyproxy.url})
    mark = tinyproxy.mark()
    headers = {"Authorization": "Bearer t0ken-first", "X-Trace": "trace-1"}
    async with asyncio.timeout(HANG_GUARD):
        result = await download(
            first.url(NAME, redirect_url=then.url(NAME)), directory=tmp_path, settings=s, headers=headers
        )
    assert_ok(result, DATA)
    assert_proxied(tinyproxy, mark, proxied)
    assert_direct(tinyproxy, mark, direct)
    assert range_gets(then.requests) and not range_gets(first.requests)
    # Another scheme is another origin: the credentials stayed with the first.
    assert all(r.headers.get("authorization") == "Bearer t0ken-first" for r in first.requests)
    assert all("authorization" not in r.headers and r.headers["x-trace"] == "trace-1" for r in then.requests)


@pytest.mark.parametrize(("origin", "fast_path"), alternating(("https",), ("http",)), indirect=["origin"])
async def test_downloader_through_the_proxy(
    tinyproxy: TinyProxy, origin: RangeServer, ca_file: Path, fast_path: bool
) -> None:
    mark = tinyproxy.mark()
    s = trusting(fast_path, ca_file, proxy=tinyproxy.url)
    async with asyncio.timeout(HANG_GUARD), Downloader(origin.url(NAME), 4, 64 * 1024, settings=s) as downloader:
        assert await downloader.get_size() == len(DATA)
        chunks = [chunk async for chunk in downloader.start()]
    assert hashlib.sha256(assemble(chunks, len(DATA))).hexdigest() == SHA
    assert_proxied(tinyproxy, mark, origin)


# --- proxies from the environment ------------------------------------------------------------

# Each variable once, on alternating data paths; RANGEFETCH_PROXY twice, so it runs on both.
ENV_FOR = {
    "https": ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "RANGEFETCH_PROXY", "RANGEFETCH_PROXY"],
    "http": ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "RANGEFETCH_PROXY", "RANGEFETCH_PROXY"],
}


@pytest.mark.parametrize(
    ("origin", "variable", "fast_path"),
    alternating(*[(scheme, name) for scheme, names in ENV_FOR.items() for name in names]),
    indirect=["origin"],
)
async def test_proxy_from_the_environment(
    tinyproxy: TinyProxy,
    origin: RangeServer,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, tinyproxy.url)
    mark = tinyproxy.mark()
    result = await fetch(origin.url(NAME), tmp_path, trusting(fast_path, ca_file))  # Settings built after setenv
    assert_ok(result, DATA)
    assert_proxied(tinyproxy, mark, origin)


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("HTTP_PROXY", "http_proxy"),
        ("http_proxy", "http_proxy"),
        ("HTTPS_PROXY", "https_proxy"),
        ("https_proxy", "https_proxy"),
        ("ALL_PROXY", "all_proxy"),
        ("all_proxy", "all_proxy"),
        ("NO_PROXY", "no_proxy"),
        ("no_proxy", "no_proxy"),
        ("RANGEFETCH_NO_PROXY", "no_proxy"),
        ("RANGEFETCH_PROXY", "proxy"),
    ],
)
def test_settings_read_the_standard_variables(monkeypatch: pytest.MonkeyPatch, variable: str, field: str) -> None:
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    assert getattr(Settings(), field) == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("origin", "variable", "fast_path"),
    alternating(("http", "HTTPS_PROXY"), ("https", "HTTP_PROXY")),
    indirect=["origin"],
)
async def test_a_proxy_for_the_other_scheme_is_not_used(
    origin: RangeServer,
    dead_proxy_url: str,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, dead_proxy_url)
    result = await fetch(origin.url(NAME), tmp_path, trusting(fast_path, ca_file))
    assert_ok(result, DATA)
    assert not any("x-tinyproxy" in r.headers for r in origin.requests)


@pytest.mark.parametrize(("how", "fast_path"), alternating(("setting",), ("RANGEFETCH_PROXY",)))
async def test_the_rangefetch_proxy_wins_over_the_environment(
    tinyproxy: TinyProxy,
    origin: RangeServer,
    dead_proxy_url: str,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy_url)
    if how == "RANGEFETCH_PROXY":
        monkeypatch.setenv("RANGEFETCH_PROXY", tinyproxy.url)
        s = trusting(fast_path, ca_file)
    else:
        s = trusting(fast_path, ca_file, proxy=tinyproxy.url)
    mark = tinyproxy.mark()
    result = await fetch(origin.url(NAME), tmp_path, s)
    assert_ok(result, DATA)
    assert_proxied(tinyproxy, mark, origin)


# --- NO_PROXY: hosts that are reached directly ----------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "source", "fast_path"),
    # Each source and each scheme on both data paths.
    alternating(
        ("https", "NO_PROXY"),
        ("http", "NO_PROXY"),
        ("http", "no_proxy"),
        ("https", "no_proxy"),
        ("https", "RANGEFETCH_NO_PROXY"),
        ("http", "RANGEFETCH_NO_PROXY"),
        ("http", "setting"),
        ("https", "setting"),
    ),
    indirect=["origin"],
)
async def test_no_proxy_bypasses(
    tinyproxy: TinyProxy,
    origin: RangeServer,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    if source == "setting":
        s = trusting(fast_path, ca_file, proxy=tinyproxy.url, no_proxy="127.0.0.1")
    else:
        monkeypatch.setenv("ALL_PROXY", tinyproxy.url)
        monkeypatch.setenv(source, "127.0.0.1")
        s = trusting(fast_path, ca_file)
    mark = tinyproxy.mark()
    result = await fetch(origin.url(NAME), tmp_path, s)
    assert_ok(result, DATA)
    assert_direct(tinyproxy, mark, origin)


@pytest.mark.parametrize(
    ("value", "fast_path"), alternating(("*",), ("example.invalid,127.0.0.1",), (" example.invalid , 127.0.0.1 ",))
)
async def test_no_proxy_lists(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, value: str
) -> None:
    mark = tinyproxy.mark()
    s = trusting(fast_path, ca_file, proxy=tinyproxy.url, no_proxy=value)
    result = await fetch(origin.url(NAME), tmp_path, s)
    assert_ok(result, DATA)
    assert_direct(tinyproxy, mark, origin)


async def test_no_proxy_for_other_hosts_still_proxies(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    mark = tinyproxy.mark()
    s = trusting(fast_path, ca_file, proxy=tinyproxy.url, no_proxy="example.invalid,127.0.0.2")
    result = await fetch(origin.url(NAME), tmp_path, s)
    assert_ok(result, DATA)
    assert_proxied(tinyproxy, mark, origin)


# --- a proxy that cannot be reached: ProxyError, never a direct connection -----------------------


@pytest.mark.parametrize(("origin", "fast_path"), alternating(("https",), ("http",)), indirect=["origin"])
async def test_dead_proxy_fails_without_the_retry_budget(
    origin: RangeServer, dead_proxy_url: str, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    # With the default policy (8 tries, backoff up to 30 s) a ProxyError, not
    # RetriesExhaustedError, well inside the hang guard: an unreachable proxy
    # is not worth the retry budget (README: it fails after a second try).
    s = trusting(fast_path, ca_file, proxy=dead_proxy_url, retry=DEFAULT_RETRY)
    with pytest.raises(ProxyError):
        await fetch(origin.url(NAME), tmp_path, s)
    assert_never_reached(origin, tmp_path)


@pytest.mark.parametrize(("how", "fast_path"), alternating(("setting",), ("setting",), ("environment",)))
async def test_dead_proxy(
    origin: RangeServer,
    dead_proxy_url: str,
    tmp_path: Path,
    ca_file: Path,
    fast_path: bool,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    if how == "environment":
        monkeypatch.setenv("HTTPS_PROXY" if origin.tls is not None else "HTTP_PROXY", dead_proxy_url)
        s = trusting(fast_path, ca_file)
    else:
        s = trusting(fast_path, ca_file, proxy=dead_proxy_url)
    with pytest.raises(ProxyError) as info:
        await fetch(origin.url(NAME), tmp_path, s)
    message = str(info.value)
    assert "\n" not in message
    assert dead_proxy_url.removeprefix("http://") in message
    assert_never_reached(origin, tmp_path)


# --- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "flag", "fast_path"),
    alternating(("https", "--proxy"), ("http", "--proxy"), ("https", "-x"), ("http", "--all-proxy")),
    indirect=["origin"],
)
def test_cli_proxy(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, flag: str
) -> None:
    mark = tinyproxy.mark()
    args = ["--cacert", str(ca_file), flag, tinyproxy.url, "-o", "out.bin", origin.url(NAME)]
    proc = run("get", *RANGED, *args, cwd=tmp_path, env=path_env(fast_path))
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert_proxied(tinyproxy, mark, origin)


def test_cli_proxy_from_the_environment(
    tinyproxy: TinyProxy, tls_srv: RangeServer, tmp_path: Path, ca_file: Path
) -> None:
    mark = tinyproxy.mark()
    env = path_env(True, https_proxy=tinyproxy.url)
    proc = run("get", *RANGED, "--cacert", str(ca_file), "-o", "out.bin", tls_srv.url(NAME), cwd=tmp_path, env=env)
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert_proxied(tinyproxy, mark, tls_srv)


@pytest.mark.parametrize(
    ("origin", "flag", "value", "fast_path"),
    alternating(
        ("https", "--noproxy", "*"),
        ("http", "--no-proxy", "127.0.0.1"),
        ("https", "--noproxy", "example.invalid,127.0.0.1"),
    ),
    indirect=["origin"],
)
def test_cli_noproxy(
    tinyproxy: TinyProxy, origin: RangeServer, tmp_path: Path, ca_file: Path, fast_path: bool, flag: str, value: str
) -> None:
    mark = tinyproxy.mark()
    flags = ["--cacert", str(ca_file), "--proxy", tinyproxy.url, flag, value, "-o", "out.bin"]
    proc = run("get", *RANGED, *flags, origin.url(NAME), cwd=tmp_path, env=path_env(fast_path))
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert_direct(tinyproxy, mark, origin)


def test_cli_noproxy_star_beats_the_environment(
    tinyproxy: TinyProxy, srv: RangeServer, tmp_path: Path, ca_file: Path
) -> None:
    mark = tinyproxy.mark()
    env = path_env(True, ALL_PROXY=tinyproxy.url)
    proc = run("get", *RANGED, "--noproxy", "*", "-o", "out.bin", srv.url(NAME), cwd=tmp_path, env=env)
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert_direct(tinyproxy, mark, srv)


@pytest.mark.parametrize(("origin", "fast_path"), alternating(("https",), ("http",)), indirect=["origin"])
def test_cli_dead_proxy(
    origin: RangeServer, dead_proxy_url: str, tmp_path: Path, ca_file: Path, fast_path: bool
) -> None:
    args = ["--cacert", str(ca_file), "--proxy", dead_proxy_url, "-o", "out.bin", origin.url(NAME)]
    proc = run("get", *RANGED, *args, cwd=tmp_path, env=path_env(fast_path))
    line = assert_clean_failure(proc, 1, tmp_path / "out.bin")
    assert dead_proxy_url.removeprefix("http://") in line
    assert_never_reached(origin, tmp_path)
