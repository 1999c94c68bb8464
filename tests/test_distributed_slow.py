"""Slow peers and visible retries in distributed mode, with real workers, a real Redis and the range server.

The same rules as embedded mode (tests/test_slow.py): a worker's range job
re-opens a trickling range from its last byte, gives it up after
``max_tries`` trips in each of ``jobs.max_attempts`` runs, and records its
retry waits on the download for ``status`` and ``get --redis`` to show.
``--max-time`` bounds ``get --redis`` and ``wait``; the download goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from distributed_helpers import WorkerProcess, worker_env
from rangeserver import RangeServer, RequestRecord
from redis.asyncio import Redis
from test_cli import assert_clean_failure

from rangefetch.distributed.store import Store
from rangefetch.producer.monitor import format_status, statuses

pytestmark = pytest.mark.redis

StartWorker = Callable[..., WorkerProcess]
DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
ONE = DATA[:50_000]  # one range of CHUNK
CHUNK = "100K"
RULE = {"RANGEFETCH_SPEED_LIMIT": "1000", "RANGEFETCH_SPEED_TIME": "1"}  # a 100 B/s trickle trips it


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def first_byte(rec: RequestRecord) -> int:
    return int(rec.headers["range"].removeprefix("bytes=").partition("-")[0])


@pytest.fixture
def env(redis_url: str, download_dir: Path) -> dict[str, str]:
    """The commands' environment: the workers' Redis and download directory."""
    return worker_env(redis_url, download_dir)


def rangefetch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True, text=True, timeout=90, check=False
    )


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = Redis.from_url(redis_url)
    yield Store(client)
    await client.aclose()


def test_a_worker_reopens_a_trickling_range(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("t.bin", DATA)
    start_worker(**RULE)
    url = server.url("t.bin", slow_rate=100, skip=1, times=1)  # the first range GET trickles
    get = rangefetch("get", url, "--chunk-size", CHUNK, "-c", "1", "-q", env=env)
    assert get.returncode == 0, get.stderr
    assert get.stdout == f"{SHA}  {download_dir / 't.bin'}\n"
    assert hashlib.sha256((download_dir / "t.bin").read_bytes()).hexdigest() == SHA
    gets = range_gets(server.requests_for("t.bin"))
    assert len(gets) == 3 + 1
    slow = gets[0]  # the first range a worker took, whichever it was
    again = next(r for r in gets[1:] if r.headers["range"].endswith(slow.headers["range"].partition("-")[2]))
    assert 0 < first_byte(again) - first_byte(slow) < 1000  # resumed from the trickle's last byte
    assert again.client != slow.client  # on a fresh connection


def test_a_worker_gives_up_on_a_trickle_that_never_ends(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # Each try brings some bytes; neither the tries nor the job runs may count that as progress.
    server.add_file("never.bin", ONE)
    start_worker(**RULE, RANGEFETCH_RETRY__MAX_TRIES="2", RANGEFETCH_DISTRIBUTED__JOBS__MAX_ATTEMPTS="2")
    url = server.url("never.bin", slow_rate=100, skip=1, times=1000)
    get = rangefetch("get", url, "--chunk-size", CHUNK, "-q", env=env)
    line = assert_clean_failure(get, 1, download_dir / "never.bin")
    assert "range 0-49999 failed 2 times in a row: gave up after 2 tries: below 1000 B/s for 1 s" in line
    assert len(range_gets(server.requests_for("never.bin"))) == 2 * 2  # max_tries in each of max_attempts runs


def test_a_trickle_fails_even_when_a_job_run_is_shorter_than_the_rule(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # Runs of 1 s never see the 5 s window trip; each still brings less than the rule asks for its time.
    server.add_file("short.bin", ONE)
    start_worker(
        RANGEFETCH_SPEED_LIMIT="1000", RANGEFETCH_SPEED_TIME="5",
        RANGEFETCH_DISTRIBUTED__JOBS__BUDGET="1", RANGEFETCH_DISTRIBUTED__JOBS__MAX_ATTEMPTS="2",
    )  # fmt: skip
    url = server.url("short.bin", slow_rate=100, skip=1, times=1000)
    get = rangefetch("get", url, "--chunk-size", CHUNK, "-q", env=env)
    line = assert_clean_failure(get, 1, download_dir / "short.bin")
    assert "range 0-49999 made no progress in 2 runs" in line
    assert len(range_gets(server.requests_for("short.bin"))) == 2  # one per run


async def test_status_and_get_redis_say_when_a_range_is_retrying(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker, store: Store
) -> None:
    server.add_file("busy.bin", ONE)
    start_worker()
    url = server.url("busy.bin", status=503, retry_after=4, skip=1, times=1)  # the range GET: 503, Retry-After: 4
    get = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rangefetch", "get", url, "--chunk-size", CHUNK, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while not (seen := [r for r in await statuses(store) if r["retryReason"]]):
                await asyncio.sleep(0.1)
            out, err = await get.communicate()
    finally:
        if get.returncode is None:
            get.kill()
            await get.wait()
    record = seen[0]
    assert record["retryReason"] == "HTTP 503" and 0 < record["retryIn"] <= 4
    assert re.search(r"retrying in [1-4] s \(HTTP 503\)", format_status(record).splitlines()[0])
    assert get.returncode == 0, err
    assert out.decode() == f"{hashlib.sha256(ONE).hexdigest()}  {download_dir / 'busy.bin'}\n"
    # stderr is a pipe: a plain progress line said it while the worker waited.
    assert re.search(r"^rangefetch: 0 B / 48\.8 KiB \(0%\), retrying in [1-4] s \(HTTP 503\)$", err.decode(), re.M), err


def test_max_time_bounds_get_redis_and_wait_and_the_download_goes_on(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("long.bin", DATA)
    start_worker()
    # Three ranges of 4 s, one at a time: `wait --max-time 0.5` gives up long
    # before the end, however slowly its process starts on a loaded machine.
    url = server.url("long.bin", rate=25_000)
    get = rangefetch("get", url, "--chunk-size", CHUNK, "-c", "1", "-q", "--max-time", "1", env=env)
    line = assert_clean_failure(get, 1, download_dir / "long.bin")
    found = re.fullmatch(
        r"rangefetch: error: gave up after 1 s \(--max-time\); download (\w+) continues on the workers: "
        r"`rangefetch wait \1` follows it, `rangefetch cancel \1` stops it",
        line,
    )
    assert found, line
    gid = found[1]
    short = rangefetch("wait", gid, "--max-time", "0.5", env=env)
    assert "gave up after 0.5 s (--max-time)" in assert_clean_failure(short, 1, download_dir / "long.bin")
    done = rangefetch("wait", gid, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{SHA}  {download_dir / 'long.bin'}\n"
    assert hashlib.sha256((download_dir / "long.bin").read_bytes()).hexdigest() == SHA


def test_get_redis_refuses_the_workers_speed_flags(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    args = ["get", "http://127.0.0.1:9/x.bin", "--redis", "redis://127.0.0.1:9", "--speed-limit", "1K"]
    proc = subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "give --speed-limit and --speed-time to the workers" in assert_clean_failure(proc, 2)
