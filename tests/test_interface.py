"""``--interface ADDR``: every connection comes from the local address given, on both data paths.

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2
and 127.0.0.3 are addresses of this host that the range server (on
127.0.0.1) sees as the client's (``RequestRecord.client``): each stands for
another host.  Through a proxy the origin sees the proxy; tinyproxy logs
the address of every client that connects (``Connect (file descriptor N):
ADDR``), and the test proxy allows all of 127.0.0.0/8.  An address that is
not this host's, or a name instead of an address, fails at once with one
line and exit 2, before any request.  Every download is checked by sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from distributed_helpers import WorkerProcess, worker_env
from proxyserver import TinyProxy
from rangeserver import RangeServer
from redis.asyncio import Redis
from test_cli import assert_clean_failure, assert_success, range_gets, run

from rangefetch import UsageError
from rangefetch.distributed.store import Store
from rangefetch.network import check_interface

StartWorker = Callable[..., WorkerProcess]
DATA = os.urandom(700_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "iface.bin"
RANGED = ["--chunk-size", "64K", "-c", "4"]
NOT_OURS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never an address of this host
_CONNECT = re.compile(r"Connect \(file descriptor \d+\): (\S+)")


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


def path_env(fast_path: bool) -> dict[str, str]:
    return {"RANGEFETCH_FAST_PATH": "1" if fast_path else "0"}


def clients(server: RangeServer) -> set[str]:
    """The client addresses of every request the server saw for the test file."""
    return {r.client[0] for r in server.requests_for(NAME)}


def test_get_connects_from_the_interface(srv: RangeServer, tmp_path: Path, fast_path: bool) -> None:
    out = tmp_path / "out.bin"
    proc = run("get", srv.url(NAME), "-o", str(out), *RANGED, "--interface", "127.0.0.2",
               cwd=tmp_path, env=path_env(fast_path))  # fmt: skip
    assert_success(proc, out, SHA)
    assert len(range_gets(srv.requests_for(NAME))) >= 4
    assert clients(srv) == {"127.0.0.2"}


def test_get_keeps_its_connections_from_range_to_range(server: RangeServer, tmp_path: Path, fast_path: bool) -> None:
    # A mirror that limits connections per address (bench/, per-address scenario) sees
    # -c connections, reused for range after range: not a new one per range (each
    # would be a fresh connection for the limit, and a fresh rate budget at nginx).
    data = os.urandom(40 * 64 * 1024)
    server.add_file("many.bin", data)
    out = tmp_path / "many.bin"
    proc = run("get", server.url("many.bin"), "-o", str(out), *RANGED, "--interface", "127.0.0.2",
               cwd=tmp_path, env=path_env(fast_path))  # fmt: skip
    assert_success(proc, out, hashlib.sha256(data).hexdigest())
    gets = range_gets(server.requests_for("many.bin"))
    assert len(gets) >= 40
    # 4 connections plus the probe's; a range stolen near the end drops its victim's connection.
    assert server.accepted_connections <= len(gets) // 3, (server.accepted_connections, len(gets))


def test_the_setting_is_read_from_the_environment(srv: RangeServer, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    proc = run("get", srv.url(NAME), "-o", str(out), *RANGED, cwd=tmp_path, env={"RANGEFETCH_INTERFACE": "127.0.0.2"})
    assert_success(proc, out, SHA)
    assert clients(srv) == {"127.0.0.2"}


def test_without_it_the_system_chooses(srv: RangeServer, tmp_path: Path) -> None:
    # The counterpart of the tests above: they would pass if 127.0.0.2 were the default.
    out = tmp_path / "out.bin"
    assert_success(run("get", srv.url(NAME), "-o", str(out), *RANGED, cwd=tmp_path), out, SHA)
    assert clients(srv) == {"127.0.0.1"}


# --- bad addresses: one line, exit 2, nothing sent -------------------------------


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        (NOT_OURS, f"--interface {NOT_OURS} is not an address of this host (Cannot assign requested address)"),
        ("eth0", "--interface 'eth0' is not an IP address"),
        ("localhost", "--interface 'localhost' is not an IP address"),
        ("if!lo", "--interface 'if!lo' is not an IP address"),
    ],
)
def test_get_refuses_a_bad_interface_at_once(
    srv: RangeServer, tmp_path: Path, fast_path: bool, interface: str, message: str
) -> None:
    out = tmp_path / "out.bin"
    began = time.monotonic()
    proc = run("get", srv.url(NAME), "-o", str(out), "--interface", interface, cwd=tmp_path, env=path_env(fast_path))
    line = assert_clean_failure(proc, 2, out)
    assert message in line
    assert srv.requests == [] and srv.accepted_connections == 0
    assert not list(tmp_path.glob("out.bin*"))
    assert time.monotonic() - began < 30  # a hang guard: it is not retried


def test_a_bad_interface_from_the_environment(srv: RangeServer, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    proc = run("get", srv.url(NAME), "-o", str(out), cwd=tmp_path, env={"RANGEFETCH_INTERFACE": NOT_OURS})
    assert "is not an address of this host" in assert_clean_failure(proc, 2, out)
    assert srv.requests == []


def test_check_interface() -> None:
    assert check_interface(" 127.0.0.2 ") == "127.0.0.2"
    assert check_interface("0.0.0.0") == "0.0.0.0"  # any IPv4 address: the system picks, over IPv4
    with pytest.raises(UsageError, match="is not an address of this host"):
        check_interface(NOT_OURS)
    with pytest.raises(UsageError, match="is not an IP address"):
        check_interface("127.0.0.2:80")


# --- through a proxy: the connection to the proxy comes from the interface ---------


class OpenTinyProxy(TinyProxy):
    """The test tinyproxy, taking clients from all of 127.0.0.0/8 (the stock one allows 127.0.0.1 only)."""

    def _config(self) -> str:
        return super()._config().replace("Allow 127.0.0.1\n", "Allow 127.0.0.0/8\n")


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[TinyProxy]:
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy; tests/run.sh does it as root)")
    with OpenTinyProxy() as proxy:
        yield proxy


@pytest.fixture
def tls_srv(tls_server: RangeServer) -> RangeServer:
    tls_server.add_file(NAME, DATA)
    return tls_server


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_get_through_a_proxy_connects_from_the_interface(
    srv: RangeServer, tls_srv: RangeServer, open_proxy: TinyProxy, ca_file: Path, tmp_path: Path,
    fast_path: bool, scheme: str,
) -> None:  # fmt: skip
    origin = tls_srv if scheme == "https" else srv
    out = tmp_path / "out.bin"
    mark = open_proxy.mark()
    proc = run(
        "get", origin.url(NAME), "-o", str(out), *RANGED, "--interface", "127.0.0.2",
        "--proxy", open_proxy.url, "--ca-certificate", str(ca_file), cwd=tmp_path, env=path_env(fast_path),
    )  # fmt: skip
    assert_success(proc, out, SHA)
    log = open_proxy.log_since(mark)
    seen = _CONNECT.findall(log)
    assert seen and set(seen) == {"127.0.0.2"}, log
    if scheme == "https":  # the tunnel (CONNECT) and TLS over it
        assert open_proxy.requests_since(mark) and {r.method for r in open_proxy.requests_since(mark)} == {"CONNECT"}
    else:  # absolute-form requests, forwarded
        assert all(r.headers.get("x-tinyproxy") for r in srv.requests_for(NAME))


# --- a worker ----------------------------------------------------------------------


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = Redis.from_url(redis_url)
    yield Store(client)
    await client.aclose()


def rangefetch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True, text=True, timeout=90, check=False
    )


@pytest.mark.redis
async def test_a_worker_connects_from_its_interface(
    srv: RangeServer, redis_url: str, download_dir: Path, start_worker: StartWorker, store: Store
) -> None:
    worker = start_worker("--interface", "127.0.0.3", "-c", "4")
    env = worker_env(redis_url, download_dir)
    deadline = time.monotonic() + 30
    while not (live := await store.workers()):
        assert worker.proc.poll() is None and time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
    assert [w.interface for w in live] == ["127.0.0.3"]  # its heartbeat says where it connects from
    listed = rangefetch("workers", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [w["interface"] for w in json.loads(listed.stdout)] == ["127.0.0.3"]

    get = rangefetch("get", srv.url(NAME), *RANGED, "-q", env=env)  # with Redis set: enqueue + wait
    assert get.returncode == 0, get.stderr
    assert get.stdout == f"{SHA}  {download_dir / NAME}\n"
    assert hashlib.sha256((download_dir / NAME).read_bytes()).hexdigest() == SHA
    gets = range_gets(srv.requests_for(NAME))
    assert len(gets) >= 700_000 // (64 * 1024)  # every range, from the worker
    assert {r.client[0] for r in gets} == {"127.0.0.3"}


@pytest.mark.redis
def test_a_worker_refuses_a_bad_interface_at_start(redis_url: str, download_dir: Path) -> None:
    proc = rangefetch("worker", "--interface", NOT_OURS, env=worker_env(redis_url, download_dir))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"rangefetch: error: --interface {NOT_OURS} is not an address of this host (Cannot assign requested address)"
    ]
