"""Helpers for the distributed tests: a stand-in producer and worker processes.

``start_download`` does what ``rangefetch enqueue`` does, in the simplest
way: probe, create the ``.part`` file at its size, record the
``DownloadSpec`` and enqueue its range jobs (``rangefetch.distributed.queue``, as the
producer does).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from arq.connections import ArqRedis, RedisSettings, create_pool

from rangefetch import PartFile, Settings, plan_ranges, probe
from rangefetch.distributed.queue import enqueue_ranges
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec, Store
from rangefetch.settings import Distributed

QUEUE = "rangefetch:queue"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def arq_pool(redis_url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=QUEUE)


async def start_download(
    pool: ArqRedis,
    url: str,
    directory: Path,
    *,
    name: str = "out.bin",
    chunk_size: int = 64 * 1024,
    connections: int = 16,
    checksum: str | None = None,
    headers: Mapping[str, str] | None = None,
    download_id: str | None = None,
    enqueue: bool = True,
    job_ranges: int = 1,
) -> DownloadSpec:
    """Record a download of ``url`` to ``directory/name`` and enqueue its range jobs (of ``job_ranges`` ranges)."""
    async with httpx.AsyncClient() as client:
        remote = await probe(client, url, headers=headers)
    assert remote.size is not None
    part = PartFile(directory / name).part
    with open(part, "wb") as f:
        f.truncate(remote.size)
    ranges = plan_ranges(remote.size, chunk_size)
    spec = DownloadSpec(
        id=download_id or hashlib.sha256(f"{url}\n{name}".encode()).hexdigest()[:16],
        url=url,
        final_url=remote.final_url,
        size=remote.size,
        path=name,
        chunk_size=chunk_size,
        ranges=len(ranges),
        connections=connections,
        etag=remote.etag,
        last_modified=remote.last_modified,
        checksum=checksum,
        headers=dict(headers or {}),
        job_ranges=job_ranges,
    )
    assert await Store(pool).create(spec)
    if enqueue:
        await enqueue_ranges(pool, QUEUE, spec.id, ranges, cells=(spec.size, spec.job_bytes))
    return spec


async def wait_finished(store: Store, download_id: str, *, timeout: float = 20.0) -> DownloadState:
    """Poll until the download is complete, failed or cancelled; its final state."""
    deadline = time.monotonic() + timeout
    while True:
        state = await store.state(download_id)
        if state is not None and state.finished:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"download {download_id} still {state} after {timeout}s")
        await asyncio.sleep(0.05)


async def wait_for(predicate: object, *, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll the async callable ``predicate`` until it returns true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def worker_env(redis_url: str, directory: Path, **extra: str) -> dict[str, str]:
    """Environment for a ``rangefetch worker`` subprocess with short test timings."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RANGEFETCH_")}
    env.update(
        RANGEFETCH_REDIS_URL=redis_url,
        RANGEFETCH_DOWNLOAD_DIR=str(directory),
        RANGEFETCH_RETRY__BACKOFF="0.05",
        RANGEFETCH_RETRY__BACKOFF_MAX="0.5",
        RANGEFETCH_CHECKPOINT_INTERVAL="0.2",
        RANGEFETCH_DISTRIBUTED__JOBS__LEASE="2",
        RANGEFETCH_DISTRIBUTED__JOBS__SLOT_WAIT="0.2",
        RANGEFETCH_TIMEOUTS__STALL="5",
    )
    env.update(extra)
    return env


def quick_settings(redis_url: str, directory: Path, **overrides: object) -> Settings:
    """``Settings`` with the same short timings, for in-process workers."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "download_dir": directory,
        "retry": {"backoff": 0.05, "backoff_max": 0.5},
        "checkpoint_interval": 0.2,
        "timeouts": {"stall": 5.0},
    }
    distributed: dict[str, object] = {"jobs": {"lease": 2.0, "slot_wait": 0.2}}
    for name, value in overrides.items():  # Settings.distributed's fields may be given flat
        (distributed if name in Distributed.model_fields else values)[name] = value
    return Settings(**values, distributed=distributed)  # type: ignore[arg-type]


class CommandProcess:
    """A ``rangefetch ARGS`` subprocess; its output is kept in a file for failing tests."""

    def __init__(self, env: Mapping[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rangefetch", *args],
            env=dict(env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, *, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class WorkerProcess(CommandProcess):
    """A ``rangefetch worker`` subprocess."""

    def __init__(self, env: Mapping[str, str], log: Path, *args: str) -> None:
        super().__init__(env, log, "worker", *args)
