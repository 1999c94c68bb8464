"""End to end: `rangefetch get --redis`, enqueue, cancel and resume with real worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from distributed_helpers import WorkerProcess, worker_env
from rangeserver import RangeServer
from redisserver import RedisServer

from rangefetch import Range
from rangefetch.distributed.keys import WORKERS, download_key

pytestmark = pytest.mark.redis

CHUNK = "256K"


def rangefetch(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "dl"
    path.mkdir()
    return path


@pytest.fixture
def env(redis_url: str, folder: Path) -> dict[str, str]:
    return worker_env(redis_url, folder)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    procs = [WorkerProcess(env, tmp_path / f"worker{i}.log") for i in range(2)]
    client = redis.Redis.from_url(env["RANGEFETCH_REDIS_URL"])
    deadline = time.monotonic() + 20
    while client.zcard(WORKERS) < len(procs):  # both live, so both can take jobs
        assert time.monotonic() < deadline, logs(procs)
        time.sleep(0.1)
    client.close()
    yield procs
    for proc in procs:
        proc.stop()


def logs(workers: list[WorkerProcess]) -> str:
    return "\n".join(w.output()[-3000:] for w in workers)


def status(did: str, env: dict[str, str]) -> dict[str, object]:
    result = rangefetch("status", did, "--json", env=env)
    assert result.returncode == 0, result.stderr
    record: dict[str, object] = json.loads(result.stdout)
    return record


def test_get_redis_end_to_end(
    server: RangeServer, env: dict[str, str], folder: Path, redis_url: str, workers: list[WorkerProcess]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    server.add_file("big.bin", data)
    url = server.url("big.bin", rate=512 * 1024)
    client_env = {k: v for k, v in env.items() if k != "RANGEFETCH_REDIS_URL"}
    get = rangefetch("get", url, "--redis", redis_url, "--chunk-size", CHUNK, "-c", "8", env=client_env)
    assert get.returncode == 0, get.stderr + logs(workers)
    digest = hashlib.sha256(data).hexdigest()
    assert get.stdout == f"{digest}  {folder / 'big.bin'}\n"
    assert hashlib.sha256((folder / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not (folder / "big.bin.part").exists()
    record = status(get.stderr.split("download ")[1].split()[0], env)
    assert (record["state"], record["completedLength"], record["sha256"]) == ("complete", len(data), digest)
    assert len(record["workers"]) == 2  # type: ignore[arg-type]


def test_get_redis_rides_out_a_redis_restart(
    server: RangeServer,
    env: dict[str, str],
    folder: Path,
    redis_url: str,
    redis_server: RedisServer,
    workers: list[WorkerProcess],
) -> None:
    data = os.urandom(1024 * 1024)
    server.add_file("restart.bin", data)
    url = server.url("restart.bin", rate=128 * 1024)  # four ranges of 2 s each
    get = subprocess.Popen(
        [sys.executable, "-m", "rangefetch", "get", url, "--chunk-size", CHUNK, "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 20
        while not any(client.hvals(k) for k in client.scan_iter(download_key("*", "progress"))):
            assert get.poll() is None and time.monotonic() < deadline, logs(workers)
            time.sleep(0.1)
        client.close()
        # Down longer than an impatient connection retries (under a second).
        redis_server.restart(down_for=2.0)
        out, err = get.communicate(timeout=60)
    finally:
        if get.poll() is None:
            get.kill()
            get.communicate()
    assert get.returncode == 0, err + logs(workers)
    digest = hashlib.sha256(data).hexdigest()
    assert out == f"{digest}  {folder / 'restart.bin'}\n"
    assert hashlib.sha256((folder / "restart.bin").read_bytes()).hexdigest() == digest


def test_cancel_then_resume(
    server: RangeServer, env: dict[str, str], folder: Path, redis_url: str, workers: list[WorkerProcess]
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    server.add_file("slow.bin", data)
    # Ranges of 8 s each: the cancel lands while the second wave is in flight,
    # however slowly `cancel` starts on a loaded machine (seconds, under xdist).
    url = server.url("slow.bin", rate=32 * 1024)
    enq = rangefetch("enqueue", url, "--chunk-size", CHUNK, "-c", "4", env=env)
    assert enq.returncode == 0, enq.stderr
    did = enq.stdout.strip()

    watcher = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 40
    while not watcher.scard(download_key(did, "done")):  # the first range is whole
        assert time.monotonic() < deadline, logs(workers)
        time.sleep(0.1)
    watcher.close()
    cancel = rangefetch("cancel", did, env=env)
    assert cancel.returncode == 0, cancel.stderr
    deadline = time.monotonic() + 10
    while (record := status(did, env))["rangesInFlight"]:
        assert time.monotonic() < deadline, logs(workers)
        time.sleep(0.2)
    assert record["state"] == "cancelled"
    assert 0 < record["completedLength"] < len(data)  # type: ignore[operator]
    assert (folder / "slow.bin.part").stat().st_size == len(data)
    wait = rangefetch("wait", did, env=env)
    assert wait.returncode == 1 and "cancelled" in wait.stderr

    client = redis.Redis.from_url(redis_url)
    done_before = [Range.parse(m.decode()) for m in client.smembers(download_key(did, "done"))]
    mark = len(server.requests_for("slow.bin"))

    again = rangefetch("enqueue", url, "--chunk-size", CHUNK, "-c", "4", env=env)
    assert again.stdout.strip() == did
    done = rangefetch("wait", did, env=env)
    assert done.returncode == 0, done.stderr + logs(workers)
    digest = hashlib.sha256(data).hexdigest()
    assert done.stdout == f"{digest}  {folder / 'slow.bin'}\n"
    assert hashlib.sha256((folder / "slow.bin").read_bytes()).hexdigest() == digest
    # What was on disk before the cancel was kept, not fetched again.
    assert int(client.hget(download_key(did), "resumed") or 0) == record["completedLength"]
    client.close()
    later = [r.headers["range"] for r in server.requests_for("slow.bin")[mark:] if "range" in r.headers]
    starts = [int(value.removeprefix("bytes=").split("-")[0]) for value in later]
    assert not [s for s in starts if s > 0 and any(r.start <= s <= r.end for r in done_before)]


def test_a_mistyped_checksum_keeps_the_download_and_the_right_one_only_verifies(
    server: RangeServer, env: dict[str, str], folder: Path, workers: list[WorkerProcess]
) -> None:
    data = os.urandom(1024 * 1024 + 333)
    server.add_file("sum.bin", data)
    url = server.url("sum.bin")
    digest = hashlib.sha256(data).hexdigest()

    def range_gets() -> int:  # the probe's bytes=0-0 aside
        return sum(r.method == "GET" and r.headers.get("range", "bytes=0-0") != "bytes=0-0"
                   for r in server.requests_for("sum.bin"))  # fmt: skip

    wrong = rangefetch("enqueue", url, "--chunk-size", CHUNK, "-c", "4", "--checksum", "sha256=" + "0" * 64, env=env)
    assert wrong.returncode == 0, wrong.stderr
    did = wrong.stdout.strip()
    failed = rangefetch("wait", did, env=env)
    assert failed.returncode == 1, failed.stderr + logs(workers)
    assert "sha256 mismatch" in failed.stderr and failed.stderr.count("\n") == 1
    assert "kept the downloaded sum.bin.part (1.0 MiB) and its finished ranges" in failed.stderr
    assert "--checksum" in failed.stderr
    assert hashlib.sha256((folder / "sum.bin.part").read_bytes()).hexdigest() == digest
    assert not (folder / "sum.bin").exists()
    fetched = range_gets()
    assert fetched >= 5  # 1 MiB in 256 KiB ranges

    right = rangefetch("enqueue", url, "--chunk-size", CHUNK, "-c", "4", "--checksum", f"sha256={digest}", env=env)
    assert right.returncode == 0 and right.stdout.strip() == did, right.stderr
    done = rangefetch("wait", did, env=env)
    assert done.returncode == 0, done.stderr + logs(workers)
    assert done.stdout == f"{digest}  {folder / 'sum.bin'}\n"
    assert hashlib.sha256((folder / "sum.bin").read_bytes()).hexdigest() == digest
    assert not (folder / "sum.bin.part").exists()
    assert range_gets() == fetched  # only verified: no range fetched again
