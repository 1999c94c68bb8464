"""Distributed mode over HTTPS and through proxies: trust travels with the download, proxies are the worker's.

Whoever enqueues a download decides how its server is verified
(``--ca-certificate``, whose PEM text is stored with it, and ``--insecure``);
each worker reaches servers through its own proxies and trusts its own
default store.  The first part checks the pieces in-process (fakeredis, the
real HTTPS range server); the rest runs real ``rangefetch enqueue``,
``wait``, ``status`` and ``rangefetch worker`` processes against a real
Redis, the HTTPS range server (a certificate from the test CA) and
tinyproxy.  The workers are started without any CA setting unless a test
says otherwise.  Every download is checked by the sha256 of the final file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from distributed_helpers import file_sha256, worker_env
from proxyserver import TinyProxy
from rangeserver import RangeServer

from rangefetch import Settings, UsageError, make_client
from rangefetch.distributed.keys import download_key
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.producer.enqueue import enqueue
from rangefetch.producer.monitor import format_status, status
from rangefetch.worker.runtime import Runtime

KiB = 1024
DATA = os.urandom(320 * KiB)  # 5 ranges of 64 KiB
SHA = hashlib.sha256(DATA).hexdigest()
RANGES = 5
PEM_MARK = "BEGIN CERTIFICATE"


# --- in-process: the spec, the producer, the worker's clients ------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


def a_spec(**changes: Any) -> DownloadSpec:
    values: dict[str, Any] = {
        "id": "0123456789abcdef", "url": "https://127.0.0.1:1/f/x", "final_url": "https://127.0.0.1:1/f/x",
        "size": 10, "path": "x", "chunk_size": 5, "ranges": 2, "connections": 4, "etag": '"e"',
    }  # fmt: skip
    values.update(changes)
    return DownloadSpec(**values)


async def test_spec_round_trips_its_trust_and_status_never_shows_the_pem(
    fake: fakeredis.FakeAsyncRedis, ca_file: Path
) -> None:
    pem = ca_file.read_text()
    store = Store(fake)
    spec = a_spec(insecure=True, ca_pem=pem)
    assert await store.create(spec)
    assert await store.spec(spec.id) == spec
    assert pem not in repr(spec)
    fields = await fake.hgetall(download_key(spec.id))
    assert PEM_MARK.encode() not in b"".join([*fields.keys(), *fields.values()])  # the polled hash stays small
    record = await status(store, spec.id)
    assert PEM_MARK not in format_status(record)
    assert PEM_MARK not in json.dumps(record)

    # A re-enqueue without them takes them away again.
    plain = a_spec()
    await store.update_spec(plain)
    assert await store.spec(spec.id) == plain
    assert await fake.exists(download_key(spec.id, "ca")) == 0


async def test_records_from_before_load_with_the_defaults(fake: fakeredis.FakeAsyncRedis) -> None:
    spec = a_spec()
    assert await Store(fake).create(spec)
    await fake.hdel(download_key(spec.id), "insecure")  # as an older producer wrote it
    loaded = await Store(fake).spec(spec.id)
    assert loaded is not None and (loaded.insecure, loaded.ca_pem) == (False, None)


@pytest.mark.parametrize("how", ["flag", "ssl_cert_file", "insecure"])
async def test_enqueue_stores_only_the_trust_it_was_told(
    fake: fakeredis.FakeAsyncRedis, tls_server: RangeServer, ca_file: Path, tmp_path: Path, how: str
) -> None:
    """``--ca-certificate`` and ``--insecure`` go with the download; the producer's own SSL_CERT_FILE does not."""
    tls_server.add_file("data.bin", DATA)
    trust: dict[str, dict[str, Any]] = {
        "flag": {"ca_certificate": ca_file},
        "ssl_cert_file": {"ssl_cert_file": ca_file},
        "insecure": {"insecure": True},
    }
    settings = Settings(download_dir=tmp_path / "dl", chunk_size=64 * KiB, **trust[how])
    result = await enqueue(tls_server.url("data.bin"), settings=settings, redis=fake)  # the probe verifies
    spec = await Store(fake).spec(result.id)
    assert spec is not None
    assert spec.ca_pem == (ca_file.read_text() if how == "flag" else None)
    assert spec.insecure is (how == "insecure")


async def test_enqueue_fails_fast_on_an_unreadable_ca_file(
    fake: fakeredis.FakeAsyncRedis, tls_server: RangeServer, tmp_path: Path
) -> None:
    tls_server.add_file("data.bin", DATA)
    settings = Settings(download_dir=tmp_path / "dl", ca_certificate=tmp_path / "missing.pem")
    with pytest.raises(UsageError, match="missing.pem"):
        await enqueue(tls_server.url("data.bin"), settings=settings, redis=fake)
    assert tls_server.requests == []


async def test_runtime_clients_per_trust(fake: fakeredis.FakeAsyncRedis, ca_file: Path, tmp_path: Path) -> None:
    """The default client for downloads that bring nothing; one client per distinct trust, closed with the runtime."""
    settings = Settings(download_dir=tmp_path, distributed={"worker_concurrency": 3})
    default = make_client(settings)
    rt = Runtime(settings, fake, Store(fake), default, "w", tmp_path)  # type: ignore[arg-type]
    rt.stack.push_async_callback(default.aclose)
    pem = ca_file.read_text()
    assert rt.client_for(a_spec()) is default
    own = rt.client_for(a_spec(ca_pem=pem))
    assert own is not default and rt.client_for(a_spec(id="another", ca_pem=pem)) is own
    loose = rt.client_for(a_spec(insecure=True))
    assert loose not in (default, own)
    with pytest.raises(UsageError, match="cannot load CA certificates"):
        rt.client_for(a_spec(ca_pem="not a certificate"))
    await rt.stack.aclose()
    assert default.is_closed and own.is_closed and loose.is_closed


async def test_a_download_client_verifies_with_the_download_ca(
    fake: fakeredis.FakeAsyncRedis, tls_server: RangeServer, ca_file: Path, tmp_path: Path
) -> None:
    tls_server.add_file("data.bin", DATA)
    settings = Settings(download_dir=tmp_path)
    async with make_client(settings) as default:
        rt = Runtime(settings, fake, Store(fake), default, "w", tmp_path)  # type: ignore[arg-type]
        async with rt.stack:
            with pytest.raises(httpx.ConnectError):
                await default.get(tls_server.url("data.bin"))
            response = await rt.client_for(a_spec(ca_pem=ca_file.read_text())).get(tls_server.url("data.bin"))
            assert hashlib.sha256(response.content).hexdigest() == SHA


# --- real processes: rangefetch enqueue / wait / status and rangefetch worker -------------------


@pytest.fixture
def env(redis_url: str, download_dir: Path) -> dict[str, str]:
    """The producer commands' environment: no CA and no proxy of their own."""
    return worker_env(redis_url, download_dir, RANGEFETCH_CHUNK_SIZE="64K")


def rangefetch(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def enqueued(*args: str, env: dict[str, str]) -> str:
    done = rangefetch("enqueue", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def assert_complete(did: str, env: dict[str, str], path: Path) -> None:
    done = rangefetch("wait", did, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{SHA}  {path}\n"
    assert file_sha256(path) == SHA
    assert not path.with_name(path.name + ".part").exists()


@pytest.fixture
def https_url(tls_server: RangeServer) -> str:
    tls_server.add_file("data.bin", DATA)
    return tls_server.url("data.bin")


@pytest.mark.redis
def test_the_enqueued_ca_reaches_workers_that_lack_it(
    https_url: str, ca_file: Path, env: dict[str, str], download_dir: Path, start_worker: Any
) -> None:
    start_worker("--concurrency", "4")
    did = enqueued(https_url, "--ca-certificate", str(ca_file), env=env)
    assert_complete(did, env, download_dir / "data.bin")
    for extra in ((), ("--json",)):
        shown = rangefetch("status", did, *extra, env=env)
        assert shown.returncode == 0, shown.stderr
        assert PEM_MARK not in shown.stdout and "complete" in shown.stdout


@pytest.mark.redis
def test_a_server_no_worker_can_verify_fails_once_then_resumes_with_the_ca(
    https_url: str, tls_server: RangeServer, ca_file: Path, env: dict[str, str], download_dir: Path, start_worker: Any
) -> None:
    start_worker("--concurrency", "4")
    # The producer trusts the CA through its own SSL_CERT_FILE: its probe passes, but that trust stays on its host.
    did = enqueued(https_url, env={**env, "SSL_CERT_FILE": str(ca_file)})
    failed = rangefetch("wait", did, env=env)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith(f"rangefetch: error: download {did} failed: ")
    assert "certificate of 127.0.0.1" in failed.stderr and "--ca-certificate" in failed.stderr
    record = json.loads(rangefetch("status", did, "--json", env=env).stdout)
    assert record["state"] == DownloadState.FAILED.value
    assert not (download_dir / "data.bin").exists()
    # Permanent: no range was tried twice (a retried handshake would be 8 tries a range).
    assert tls_server.accepted_connections <= RANGES + 2  # + the producer's probe

    again = enqueued(https_url, "--ca-certificate", str(ca_file), env=env)
    assert again == did
    assert_complete(did, env, download_dir / "data.bin")


@pytest.mark.redis
def test_enqueue_insecure_and_get_redis_insecure(
    https_url: str, env: dict[str, str], download_dir: Path, start_worker: Any
) -> None:
    start_worker("--concurrency", "4")
    did = enqueued(https_url, "--insecure", env=env)
    assert_complete(did, env, download_dir / "data.bin")
    # `get` with Redis configured enqueues with the settings it built from its own flags.
    got = rangefetch("get", https_url, "-o", "got.bin", "--insecure", "-q", env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout == f"{SHA}  {download_dir / 'got.bin'}\n"
    assert file_sha256(download_dir / "got.bin") == SHA


@pytest.mark.redis
@pytest.mark.parametrize("whose_ca", ["download", "worker"])
def test_a_worker_fetches_through_its_own_proxy(
    https_url: str,
    tls_server: RangeServer,
    tinyproxy: TinyProxy,
    ca_file: Path,
    env: dict[str, str],
    download_dir: Path,
    start_worker: Any,
    whose_ca: str,
) -> None:
    """Through the worker's proxy, verifying with the download's CA, or with the worker's own (``--ca-certificate``)."""
    mark = tinyproxy.mark()
    if whose_ca == "download":
        start_worker("--concurrency", "4", "--proxy", tinyproxy.url)
        did = enqueued(https_url, "--ca-certificate", str(ca_file), env=env)  # the producer itself goes direct
    else:
        start_worker("--concurrency", "4", "--proxy", tinyproxy.url, "--ca-certificate", str(ca_file))
        did = enqueued(https_url, env={**env, "SSL_CERT_FILE": str(ca_file)})  # stores no CA
    assert_complete(did, env, download_dir / "data.bin")
    tunnels = tinyproxy.connects_since(mark, f"127.0.0.1:{tls_server.port}")
    assert tunnels >= 1, tinyproxy.log_since(mark)
    gets = [r for r in tls_server.requests_for("data.bin") if r.method == "GET" and r.headers.get("range")]
    assert len(gets) >= RANGES
    assert tunnels <= len(gets)  # kept alive: no more tunnels than requests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--proxy", "socks5://127.0.0.1:1080"), "unsupported proxy scheme socks5://"),
        (("--ca-certificate", "/nonexistent/ca.pem"), "cannot load CA certificates from /nonexistent/ca.pem"),
    ],
)
def test_a_worker_with_an_unusable_network_setting_does_not_start(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    """Checked before Redis is even tried: nothing listens at this one."""
    env = worker_env("redis://127.0.0.1:1/0", tmp_path)
    done = rangefetch("worker", *args, env=env, timeout=15)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rangefetch: error: ") and message in lines[0], done.stderr
