"""The worker's new flags and ``enqueue``'s, with real workers, a real Redis and the range server.

``-A`` given to ``enqueue`` is stored with the download (as its
``User-Agent`` header) and wins over a worker's own ``-A``, which is the
default for downloads that bring none; ``worker --max-tries`` bounds a
range's tries in a run; a URL without a scheme is enqueued as ``http://``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from distributed_helpers import WorkerProcess, worker_env
from rangeserver import RangeServer
from redis.asyncio import Redis
from test_cli_flags import range_gets

from rangefetch.distributed.store import Store

pytestmark = pytest.mark.redis

StartWorker = Callable[..., WorkerProcess]
DATA = os.urandom(400_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def env(redis_url: str, download_dir: Path) -> dict[str, str]:
    return worker_env(redis_url, download_dir)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = Redis.from_url(redis_url)
    yield Store(client)
    await client.aclose()


def rangefetch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def test_the_downloads_user_agent_wins_over_the_workers(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("own.bin", DATA)
    server.add_file("default.bin", DATA)
    start_worker("-A", "worker-agent/1")
    own = rangefetch("get", server.url("own.bin"), "-A", "producer-agent/2", "--chunk-size", "100K", "-q", env=env)
    assert own.returncode == 0, own.stderr
    default = rangefetch("get", server.url("default.bin"), "--chunk-size", "100K", "-q", env=env)
    assert default.returncode == 0, default.stderr
    for name in ("own.bin", "default.bin"):
        assert hashlib.sha256((download_dir / name).read_bytes()).hexdigest() == SHA
    own_gets, default_gets = range_gets(server.requests_for("own.bin")), range_gets(server.requests_for("default.bin"))
    assert len(own_gets) == len(default_gets) == 4
    assert {r.headers["user-agent"] for r in own_gets} == {"producer-agent/2"}
    assert {r.headers["user-agent"] for r in default_gets} == {"worker-agent/1"}
    # The producer's probe sent the download's own too.
    probes = [r for r in server.requests_for("own.bin") if r not in own_gets]
    assert probes and {r.headers["user-agent"] for r in probes} == {"producer-agent/2"}


def test_worker_max_tries_bounds_a_ranges_tries(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # Every range GET answers 503; one run without progress fails the range
    # (jobs.max_attempts 1), after the worker's --max-tries 3 (the default is 8).
    server.add_file("busy.bin", DATA)
    start_worker("--max-tries", "3", "--retry-wait", "0.01", RANGEFETCH_DISTRIBUTED__JOBS__MAX_ATTEMPTS="1")
    url = server.url("busy.bin", status=503, skip=1, times=100)
    proc = rangefetch("get", url, "--chunk-size", "1M", "-q", env=env)
    assert proc.returncode == 1
    assert "gave up after 3 tries" in proc.stderr
    assert len(range_gets(server.requests_for("busy.bin"))) == 3
    assert not (download_dir / "busy.bin").exists()


async def test_enqueue_takes_a_url_without_a_scheme_as_http(
    store: Store, server: RangeServer, env: dict[str, str], download_dir: Path
) -> None:
    server.add_file("bare.bin", DATA)
    bare = server.url("bare.bin").removeprefix("http://")
    proc = rangefetch("enqueue", bare, env=env)
    assert proc.returncode == 0, proc.stderr
    spec = await store.spec(proc.stdout.strip())
    assert spec is not None
    assert spec.final_url == server.url("bare.bin")
    assert (download_dir / "bare.bin.part").stat().st_size == len(DATA)
