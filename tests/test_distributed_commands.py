"""Redis commands per range of a real distributed download (``INFO commandstats``), and how they scale with workers.

Counts, not times: every command Redis executes between the enqueue and the
end of the download is counted (arq's enqueue, polls, starts and finishes,
ours, and the commands our Lua scripts run), over a file of many small
ranges, so the per-download costs (probe, finalizer) weigh little.

The target is at most 12 commands per range, all in, and little growth
with the workers.  A job fetches a run of consecutive ranges (``Settings.distributed.jobs.per_download``
jobs per download at most, 64 by default), so arq's cost of a job and the
slot claim are paid once per run: here 512 ranges go to 64 jobs of 8.
bench/overhead.py measures the same on a larger file, up to 16 workers.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from arq.constants import in_progress_key_prefix
from distributed_helpers import WorkerProcess, worker_env
from rangeserver import RangeServer

from rangefetch.distributed.keys import DEFAULT_QUEUE, WORKERS

pytestmark = pytest.mark.redis

CHUNK = 64 * 1024
RANGES = 512
CONNECTIONS = 8
MAX_PER_RANGE = 12
GROWTH = 1.5  # 8 workers against 2: at most this many times the commands per range (idle polls grow with workers)


def _calls(client: redis.Redis) -> int:
    stats: dict[str, dict[str, Any]] = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    return sum(int(v["calls"]) for v in stats.values())


def _per_range(server: RangeServer, redis_url: str, tmp_path: Path, workers: int) -> float:
    """Commands per range of one download of ``RANGES`` ranges by ``workers`` workers; checks its sha256."""
    folder = tmp_path / f"dl{workers}"
    folder.mkdir()
    env = worker_env(redis_url, folder)
    # The defaults, as in production.
    for name in ("RANGEFETCH_DISTRIBUTED__JOBS__LEASE", "RANGEFETCH_CHECKPOINT_INTERVAL"):
        env.pop(name)
    data = os.urandom(RANGES * CHUNK - 1234)
    server.add_file(f"many{workers}.bin", data)
    per_worker = max(1, CONNECTIONS // workers)
    procs = [WorkerProcess(env, tmp_path / f"w{workers}-{i}.log", "-c", str(per_worker)) for i in range(workers)]
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 60
        while cast(int, client.zcard(WORKERS)) < workers:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        before = _calls(client)
        enqueue = _cli("enqueue", server.url(f"many{workers}.bin"), "-c", str(CONNECTIONS),
                       "--chunk-size", str(CHUNK), env=env)  # fmt: skip
        assert enqueue.returncode == 0, enqueue.stderr
        done = _cli("wait", enqueue.stdout.strip(), env=env)
        commands = _calls(client) - before
        assert done.returncode == 0, done.stderr + "".join(p.output()[-2000:] for p in procs)
    finally:
        client.close()
        for proc in procs:
            proc.stop()
    assert hashlib.sha256((folder / f"many{workers}.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    return commands / RANGES


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rangefetch", *args], env=env, capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip


def test_commands_per_range_stay_bounded_and_flat_from_2_to_8_workers(
    server: RangeServer, redis_url: str, tmp_path: Path
) -> None:
    two = _per_range(server, redis_url, tmp_path, 2)
    assert two <= MAX_PER_RANGE, f"{two:.1f} Redis commands per range with 2 workers"
    eight = _per_range(server, redis_url, tmp_path, 8)
    print(f"Redis commands per range: {two:.1f} with 2 workers, {eight:.1f} with 8")
    assert eight <= GROWTH * two, f"{eight:.1f} commands per range with 8 workers, {two:.1f} with 2"


def test_running_jobs_are_not_due_so_polls_do_not_walk_them(
    server: RangeServer, redis_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    env = worker_env(redis_url, folder)
    data = os.urandom(4 * CHUNK)
    server.add_file("slow.bin", data)
    worker = WorkerProcess(env, tmp_path / "worker.log", "-c", "4")
    client = redis.Redis.from_url(redis_url)
    try:
        enqueue = _cli("enqueue", server.url("slow.bin", rate=32 * 1024), "-c", "4",
                       "--chunk-size", str(CHUNK), env=env)  # fmt: skip
        assert enqueue.returncode == 0, enqueue.stderr
        deadline = time.monotonic() + 60
        running: list[bytes] = []
        while len(running) < 4:  # all four ranges running, each for about two seconds
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.05)
            running = [k[len(in_progress_key_prefix) :] for k in client.scan_iter(in_progress_key_prefix + "*")]
        time.sleep(0.3)  # past every job's first renewal
        now_ms = time.time() * 1000
        due = cast(list[bytes], client.zrangebyscore(DEFAULT_QUEUE, "-inf", now_ms))
        assert not set(running) & set(due), (running, due)
        for job_id in running:
            score = cast(float | None, client.zscore(DEFAULT_QUEUE, job_id))
            assert score is not None and score > now_ms  # still queued (arq removes it at its end), but not due
        done = _cli("wait", enqueue.stdout.strip(), env=env)
        assert done.returncode == 0, done.stderr + worker.output()[-3000:]
    finally:
        client.close()
        worker.stop()
    assert hashlib.sha256((folder / "slow.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
