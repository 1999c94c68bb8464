"""The producer's commands as real subprocesses, against a real Redis and the range server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rangeserver import RangeServer
from redis.asyncio import Redis
from redisserver import RedisServer

from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store
from rangefetch.producer.enqueue import download_id

pytestmark = pytest.mark.redis

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
TOKEN = "tok-9f8e7d"
PASSWORD = "pw-1a2b3c"
BEARER = "Bearer-5e6f7a"


def rangefetch(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    (tmp_path / "dl").mkdir()
    return {
        **base,
        "RANGEFETCH_REDIS_URL": redis_url,
        "RANGEFETCH_DOWNLOAD_DIR": str(tmp_path / "dl"),
        "RANGEFETCH_CHUNK_SIZE": "64K",
    }


@pytest.fixture
def url(server: RangeServer) -> str:
    server.add_file("data.bin", DATA)
    return server.url("data.bin")


def set_state(redis_url: str, did: str, *states: DownloadState, **fields: str) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        try:
            for state in states:
                await Store(redis).set_state(did, state, **fields)
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_enqueue_prints_only_the_id(env: dict[str, str], url: str, tmp_path: Path) -> None:
    first = rangefetch("enqueue", url, env=env)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", first.stdout)
    did = first.stdout.strip()
    assert did == download_id(url, "data.bin")
    assert (tmp_path / "dl" / "data.bin.part").stat().st_size == len(DATA)
    again = rangefetch("enqueue", url, env=env)
    assert (again.returncode, again.stdout) == (0, first.stdout)


@pytest.mark.parametrize("args", [("-o", "../x"), ("-o", "/etc/x"), ("-d", "/tmp"), ("-o", "a", "-d", "b")], ids=str)
def test_enqueue_refuses_paths_outside(env: dict[str, str], url: str, args: tuple[str, ...]) -> None:
    result = rangefetch("enqueue", url, *args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("rangefetch: error: ") and result.stderr.count("\n") == 1


def test_server_named_file_is_confined(env: dict[str, str], server: RangeServer, tmp_path: Path) -> None:
    server.add_file("data.bin", DATA)
    result = rangefetch("enqueue", server.url("data.bin", cd="../../escape.bin"), "-d", "sub", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dl" / "sub" / "escape.bin.part").exists()
    assert not (tmp_path / "escape.bin.part").exists()


def test_undistributable_server(env: dict[str, str], server: RangeServer) -> None:
    server.add_file("plain", DATA)
    result = rangefetch("get", server.url("plain", norange=1), "-q", env=env)
    assert result.returncode == 1
    assert "embedded" in result.stderr and result.stderr.count("\n") == 1


def test_status_wait_cancel(env: dict[str, str], server: RangeServer, redis_url: str, tmp_path: Path) -> None:
    server.add_file("data.bin", DATA)
    host, port = server.base_url.removeprefix("http://").split(":")
    secret_url = f"http://user:{PASSWORD}@{host}:{port}/f/data.bin?token={TOKEN}"
    enq = rangefetch("enqueue", secret_url, "-H", f"Authorization: {BEARER}", env=env)
    assert enq.returncode == 0, enq.stderr
    did = enq.stdout.strip()

    status = rangefetch("status", did, "--json", env=env)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert (record["gid"], record["state"], record["status"]) == (did, "queued", "waiting")
    assert (record["totalLength"], record["completedLength"], record["numPieces"]) == (len(DATA), 0, 5)
    listing = rangefetch("status", env=env)
    for out in (status.stdout + status.stderr, listing.stdout + listing.stderr):
        for secret in (TOKEN, PASSWORD, BEARER):
            assert secret not in out
    assert did in listing.stdout and "queued" in listing.stdout

    cancel = rangefetch("cancel", did, env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert "5 queued jobs removed" in cancel.stderr
    wait = rangefetch("wait", did, env=env)
    assert wait.returncode == 1 and "cancelled" in wait.stderr and wait.stdout == ""

    # Enqueuing again resumes: same id, queued again.
    again = rangefetch("enqueue", secret_url, "-H", f"Authorization: {BEARER}", env=env)
    assert again.stdout.strip() == did
    set_state(redis_url, did, DownloadState.RUNNING, DownloadState.VERIFYING)
    (tmp_path / "dl" / "data.bin").write_bytes(DATA)
    set_state(redis_url, did, DownloadState.COMPLETE, sha256=SHA)
    done = rangefetch("wait", did, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{SHA}  {tmp_path / 'dl' / 'data.bin'}\n"


def test_unknown_id_and_workers(env: dict[str, str], redis_url: str) -> None:
    status = rangefetch("status", "0123456789abcdef", env=env)
    assert status.returncode == 2 and "no download" in status.stderr
    workers = rangefetch("workers", "--json", env=env)
    assert (workers.returncode, json.loads(workers.stdout)) == (0, [])


def test_failed_download_wait_prints_error(env: dict[str, str], url: str, redis_url: str) -> None:
    did = rangefetch("enqueue", url, env=env).stdout.strip()
    set_state(redis_url, did, DownloadState.FAILED, error="HTTP 404 Not Found from 127.0.0.1")
    wait = rangefetch("wait", did, env=env)
    assert wait.returncode == 1
    assert wait.stderr == f"rangefetch: error: download {did} failed: HTTP 404 Not Found from 127.0.0.1\n"


def test_wait_rides_out_a_redis_restart(
    env: dict[str, str], url: str, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    did = rangefetch("enqueue", url, env=env).stdout.strip()
    wait = subprocess.Popen(
        [sys.executable, "-m", "rangefetch", "wait", did],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(redis_url)
        ours = client.client_id()
        deadline = time.monotonic() + 20
        # wait's first contact (its PING) fails fast by design: restart only once
        # it has gone past it, reading the download (under load that takes a while).
        opening = {"NULL", "ping", "hello", "select", "client|setname", "client|setinfo"}
        while not any(c["id"] != str(ours) and c.get("cmd") not in opening for c in client.client_list()):
            assert wait.poll() is None and time.monotonic() < deadline, "wait never followed the download"
            time.sleep(0.05)
        client.close()
        # Down longer than an impatient connection retries (under a second).
        redis_server.restart(down_for=2.0)
        set_state(redis_url, did, DownloadState.RUNNING, DownloadState.VERIFYING)
        (tmp_path / "dl" / "data.bin").write_bytes(DATA)
        set_state(redis_url, did, DownloadState.COMPLETE, sha256=SHA)
        out, err = wait.communicate(timeout=60)
    finally:
        if wait.poll() is None:
            wait.kill()
            wait.communicate()
    assert wait.returncode == 0, err
    assert out == f"{SHA}  {tmp_path / 'dl' / 'data.bin'}\n"
    assert hashlib.sha256((tmp_path / "dl" / "data.bin").read_bytes()).hexdigest() == SHA
