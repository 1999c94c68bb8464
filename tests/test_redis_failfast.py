"""Redis that cannot be used fails fast, in one line; Redis that goes away after contact is ridden out.

Real dead peers: a closed port, a real redis-server with ``--requirepass``
(wrong password, none given), and the session redis-server killed and
started again under a running worker.  Every command runs as a real
subprocess; the subprocess timeouts are hang guards, not the behaviour
under test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from arq.connections import ArqRedis
from distributed_helpers import (
    WorkerProcess,
    arq_pool,
    file_sha256,
    start_download,
    wait_finished,
    wait_for,
    worker_env,
)
from rangeserver import RangeServer
from redis.exceptions import AuthenticationError, BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redisserver import RedisServer, free_port

from rangefetch import QueueError, Settings
from rangefetch.distributed import connections
from rangefetch.distributed.connections import FIRST_CONTACT_TIMEOUT, RedisLink, open_redis, redis_settings
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store

PASSWORD = "pw-s3cret-4f5e"
SOME_ID = "0123456789abcdef"
KiB = 1024
DATA = os.urandom(600 * KiB)
SHA = hashlib.sha256(DATA).hexdigest()


# -- the link on its own: what it says, and when it gives up ---------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rangefetch.distributed.connections"]


def test_a_reached_link_says_lost_and_back_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    link = RedisLink(f"redis://:{PASSWORD}@127.0.0.1:6379/0", outage=10, clock=Clock())
    link.reached = True
    refused = RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    link.failed(refused, in_a_row=1)  # one stale connection: a reconnect mends it, nothing to say
    link.ok()
    assert _lines(caplog) == []
    for attempt in range(1, 6):
        link.failed(refused, in_a_row=attempt)
    link.ok()
    link.ok()
    assert _lines(caplog) == [
        "lost Redis at redis://REDACTED@127.0.0.1:6379/0 (connection refused); retrying until it answers",
        "Redis at redis://REDACTED@127.0.0.1:6379/0 is back",
    ]
    assert PASSWORD not in caplog.text


def test_an_unreached_link_says_nothing_and_gives_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    link = RedisLink("redis://127.0.0.1:6379/0", outage=10, clock=clock)
    refused = RedisConnectionError("refused")
    link.failed(refused, in_a_row=3)
    assert _lines(caplog) == []
    assert link.gives_up(refused)
    assert not link.gives_up(BusyLoadingError("loading"))  # Redis is there, only busy
    clock.now += 10
    assert link.gives_up(BusyLoadingError("loading"))


def test_a_reached_link_retries_within_its_outage_budget_but_never_a_wrong_password() -> None:
    clock = Clock()
    link = RedisLink("redis://127.0.0.1:6379/0", outage=10, clock=clock)
    link.reached = True
    refused = RedisConnectionError("refused")
    link.failed(refused)
    clock.now += 9.9
    assert not link.gives_up(refused)
    clock.now += 0.1
    assert link.gives_up(refused)
    link.ok()
    assert not link.gives_up(refused)
    assert link.gives_up(AuthenticationError("invalid username-password pair"))


async def test_a_reconnect_that_fails_inside_the_retry_is_one_more_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pub/sub's error callback reconnects; while Redis restarts that reconnect
    # fails too (refused, or reset during AUTH/SELECT).  The call goes on.
    monkeypatch.setattr(connections, "BACKOFF_BASE", 0.0)
    link = RedisLink("redis://127.0.0.1:1/0", outage=60)
    link.reached = True
    retry = connections._LinkRetry(link)
    tries: list[int] = []

    async def do() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise RedisConnectionError("Error while reading from 127.0.0.1:1 : (104, 'Connection reset by peer')")
        return "ok"

    async def fail(error: Exception) -> None:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    assert await retry.call_with_retry(do, fail) == "ok"
    assert len(tries) == 3 and link.away_since is None


def test_every_connection_of_a_pool_reports_to_one_link(tmp_path: Path) -> None:
    link = RedisLink("redis://127.0.0.1:6379/0", outage=10)
    rs = redis_settings(Settings(redis_url="redis://127.0.0.1:6379/0", download_dir=tmp_path), link=link)
    assert rs.conn_retries == 0  # arq's own loop would warn once per attempt
    assert copy.deepcopy(rs.retry).link is link  # type: ignore[union-attr]  # redis-py copies it per connection


# -- real dead peers: each command exits 1 with one line ---------------------------


class PasswordRedis:
    """A redis-server that requires ``PASSWORD``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (tests/run.sh installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rangefetch-redis-auth-")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server with --requirepass did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def password_redis() -> Iterator[PasswordRedis]:
    srv = PasswordRedis()
    yield srv
    srv.stop()


COMMANDS = {
    "enqueue": ["enqueue", "http://127.0.0.1:9/data.bin"],
    "status": ["status"],
    "status --watch": ["status", "--watch"],
    "wait": ["wait", SOME_ID],
    "cancel": ["cancel", SOME_ID],
    "workers": ["workers"],
    "get --redis": ["get", "http://127.0.0.1:9/data.bin"],
    "worker": ["worker"],
}


def _env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RANGEFETCH_")}
    (tmp_path / "dl").mkdir(exist_ok=True)
    env.update(RANGEFETCH_REDIS_URL=redis_url, RANGEFETCH_DOWNLOAD_DIR=str(tmp_path / "dl"))
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _case(case: str, password_redis: PasswordRedis) -> tuple[str, str]:
    """The Redis URL for ``case`` and the error line every command must print."""
    if case == "refused":
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        return url, f"rangefetch: error: cannot connect to Redis at {url}: connection refused"
    where = f"127.0.0.1:{password_redis.port}/0"
    if case == "wrong password":
        return (
            f"redis://:wrong-{PASSWORD}@{where}",
            f"rangefetch: error: cannot connect to Redis at redis://REDACTED@{where}: "
            "authentication failed: wrong password (or user name)",
        )
    assert case == "no password"
    return (
        f"redis://{where}",
        f"rangefetch: error: cannot connect to Redis at redis://{where}: "
        "no password given, and this Redis requires one (redis://:PASSWORD@host:port/db)",
    )


@pytest.mark.redis
@pytest.mark.parametrize("case", ["refused", "wrong password", "no password"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_redis_that_cannot_be_used_fails_in_one_line(
    command: str, case: str, password_redis: PasswordRedis, tmp_path: Path
) -> None:
    url, expected = _case(case, password_redis)
    done = _run(COMMANDS[command], _env(url, tmp_path))
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [expected]
    assert done.stdout == ""
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr


async def test_a_server_that_accepts_and_never_answers_fails_at_first_contact(tmp_path: Path) -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with pytest.raises(QueueError) as caught:
            await asyncio.wait_for(open_redis(Settings(redis_url=url, download_dir=tmp_path)), timeout=30)
    assert str(caught.value) == f"cannot connect to Redis at {url}: no answer within {FIRST_CONTACT_TIMEOUT:.0f} s"


@pytest.mark.redis
def test_the_right_password_works(password_redis: PasswordRedis, tmp_path: Path) -> None:
    done = _run(["workers"], _env(f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/0", tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "no live workers\n", "")


# -- a running worker rides out a Redis restart and says so once -----------------


@pytest.mark.redis
async def test_a_running_worker_rides_out_a_redis_restart_and_says_so_once(
    server: RangeServer, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    download_dir = tmp_path / "dl"
    download_dir.mkdir()
    worker = WorkerProcess(worker_env(redis_url, download_dir), tmp_path / "worker.log")

    async def said_back() -> bool:
        assert worker.proc.poll() is None, worker.output()
        return any(line.endswith(" is back") for line in worker.output().splitlines())

    try:
        probe = await arq_pool(redis_url)
        try:
            await wait_for(lambda: _has_workers(probe), timeout=20)
        finally:
            await probe.aclose()
        await asyncio.to_thread(redis_server.restart, down_for=2.0)
        await wait_for(said_back, timeout=30)
        assert worker.proc.poll() is None

        server.add_file("after-restart", DATA)
        pool = await arq_pool(redis_url)
        try:
            spec = await start_download(pool, server.url("after-restart"), download_dir, chunk_size=100 * KiB)
            assert await wait_finished(Store(pool), spec.id, timeout=30) is DownloadState.COMPLETE
        finally:
            await pool.aclose()
        assert file_sha256(download_dir / spec.path) == SHA
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    out = worker.output()
    lines = out.splitlines()
    lost = [i for i, line in enumerate(lines) if "lost Redis at" in line]
    back = [i for i, line in enumerate(lines) if line.endswith(" is back")]
    assert len(lost) == 1 and len(back) == 1 and lost[0] < back[0], out
    assert "retrying" in lines[lost[0]] and "connection refused" in lines[lost[0]], out
    assert "worker stopped" not in out and "Traceback" not in out, out


async def _has_workers(pool: ArqRedis) -> bool:
    return bool(await Store(pool).workers())
