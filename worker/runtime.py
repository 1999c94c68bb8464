"""What a worker process keeps in arq's ``ctx``: its clients, one store, leases, a heartbeat, verifiers.

``startup`` (arq's ``on_startup``) builds one ``Runtime`` per process and
``shutdown`` closes it; jobs find it with ``Runtime.of(ctx)``.  It also keeps
the speeds of the process's range runs (``Runtime.pace``), which the
straggler rule compares a run with (``worker.handoff``).

Clients
-------
Proxies and the default trust store are the worker's own (its flags and
environment: each worker may sit on a different network), so one client,
``Runtime.client``, serves every download that brings nothing of its own.
How a server is verified is decided by whoever enqueued the download
(``DownloadSpec.insecure``, ``DownloadSpec.ca_pem``): ``Runtime.client_for``
gives such downloads a client of their own, one per distinct choice, made on
first use and closed with the runtime.

Leases (``worker.lease``): everything a running job claims in Redis lapses
unless renewed, and its holder stops once it cannot be sure it holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from arq import Retry
from arq.connections import ArqRedis

from rangefetch import QueueError, Settings, Trust, make_client
from rangefetch.distributed.queue import restore_place
from rangefetch.distributed.store import DownloadSpec, Store, WorkerInfo

from .downloads import SpecCache
from .handoff import Pace
from .lease import Lease
from .metrics import WorkerMetrics
from .metrics import current as current_metrics

__all__ = [
    "HEARTBEAT_INTERVAL",
    "Runtime",
    "background",
    "shutdown",
    "startup",
]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0  # seconds; workers.HEARTBEAT_TTL (30 s) is the grace period
SETTINGS_KEY = "rangefetch_settings"  # ctx key the worker settings put the Settings under
RUNTIME_KEY = "rangefetch"


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], *, name: str) -> AsyncIterator[None]:
    """Run ``coro`` alongside the block; it is cancelled, and awaited, when the block ends.

    Not a ``TaskGroup``: a task group wraps the block's own exceptions in an
    ``ExceptionGroup``, and arq recognises ``Retry`` and ``CancelledError``
    by their type.  ``coro`` is expected to handle its own errors; anything
    it still raises is logged.
    """
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", name, task.exception())


@dataclass
class Runtime:
    """One worker process's shared state, kept in arq's ``ctx``."""

    settings: Settings
    redis: ArqRedis
    store: Store
    client: httpx.AsyncClient
    worker_id: str
    download_dir: Path
    running: set[str] = field(default_factory=set)
    verifiers: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # download id -> early verifier
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    # (insecure, ca_pem) of downloads that bring their own trust -> their client
    clients: dict[tuple[bool, str | None], httpx.AsyncClient] = field(default_factory=dict)
    redis_failures: dict[str, int] = field(default_factory=dict)  # job id -> its runs in a row that Redis failed
    pace: Pace = field(default_factory=Pace)  # range runs' speeds, for the straggler rule (``worker.handoff``)
    metrics: WorkerMetrics = field(default_factory=current_metrics)  # --metrics-port (``worker.metrics``)
    specs: SpecCache = field(default_factory=dict)  # the specs range runs loaded (``worker.downloads.active_spec``)

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> Runtime:
        """The runtime ``startup`` put in ``ctx``."""
        runtime = ctx[RUNTIME_KEY]
        assert isinstance(runtime, Runtime)
        return runtime

    def client_for(self, spec: DownloadSpec) -> httpx.AsyncClient:
        """The client to fetch ``spec``'s ranges with.

        ``client`` when the download brings no trust of its own; else one
        client per distinct (``insecure``, ``ca_pem``), through the worker's
        own proxies, kept until the runtime closes.

        Raises:
            UsageError: the download's CA certificates cannot be loaded.
        """
        if not spec.insecure and spec.ca_pem is None:
            return self.client
        key = (spec.insecure, spec.ca_pem)
        client = self.clients.get(key)
        if client is None:
            trust = Trust.from_settings(self.settings, ca_pem=spec.ca_pem, insecure=spec.insecure)
            client = self.clients[key] = make_client(_client_settings(self.settings), trust=trust)
            self.stack.push_async_callback(client.aclose)
            log.debug(
                "download %s brings its own trust (%s); a client for it",
                spec.id, "insecure" if spec.insecure else "its CA certificates",
            )  # fmt: skip
        return client

    @asynccontextmanager
    async def job(self, ctx: dict[str, Any]) -> AsyncIterator[Lease]:
        """Run one job: counted for the heartbeat, its leases renewed until it ends."""
        job_id = str(ctx["job_id"])
        lease = Lease(self, job_id, since=time.monotonic())  # arq has just set its in-progress key
        self.running.add(job_id)
        try:
            try:
                async with background(lease.keep(), name=f"lease {job_id}"):
                    yield lease
            except BaseException:
                # arq re-queues the job relative to its score (a retry, a cancelled run):
                # give back the place the renewals moved it from.  A job that ends well leaves the queue.
                await restore_place(self.redis, self.settings.distributed.queue_name, job_id, ctx.get("score"))
                raise
        finally:
            self.running.discard(job_id)
            if not lease.redis_failed:
                self.redis_failures.pop(job_id, None)

    def redis_retry(self, lease: Lease) -> Retry | None:
        """The ``Retry`` of a job whose run failed on Redis, backing off; ``None``: give the job up.

        ``jobs.max_attempts`` such runs in a row (in this worker) give it up,
        so a Redis that keeps failing a job's commands does not keep it
        cycling for ever.  That loses nothing: the sweep (``worker.finalize``)
        enqueues the range jobs and the finalizer a running download lacks
        once Redis answers again.
        """
        assert lease.job_id is not None
        jobs = self.settings.distributed.jobs
        lease.redis_failed = True
        failures = self.redis_failures.get(lease.job_id, 0) + 1
        if failures >= jobs.max_attempts:
            self.redis_failures.pop(lease.job_id, None)
            return None
        self.redis_failures[lease.job_id] = failures
        delay = min(jobs.slot_wait * 2**failures, jobs.lease)
        return Retry(defer=delay * random.uniform(0.5, 1.5))

    def run_verifier(self, download_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro``, the early verifier of ``download_id``, until it ends or ``stop_verifiers``."""
        task = asyncio.create_task(coro, name=f"verifier {download_id}")
        self.verifiers[download_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self.verifiers.get(download_id) is done:
                del self.verifiers[download_id]
            if not done.cancelled() and done.exception() is not None:
                log.error("verifier of %s failed: %r", download_id, done.exception())

        task.add_done_callback(forget)

    async def stop_verifiers(self) -> None:
        """Cancel the early verifiers and wait for them (each gives its lease back first)."""
        tasks = list(self.verifiers.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def heartbeat(self) -> None:
        """Announce this worker every ``HEARTBEAT_INTERVAL`` seconds until cancelled."""
        host, pid = socket.gethostname(), os.getpid()
        failing = False
        while True:
            info = WorkerInfo(self.worker_id, host, pid, len(self.running), time.time(), self.settings.interface)
            try:
                began = time.monotonic()
                await self.store.heartbeat(info)
                self.metrics.redis_roundtrip(time.monotonic() - began)
                if failing:
                    log.info("heartbeat recorded again")
                failing = False
            except QueueError as exc:
                if not failing:
                    log.warning("cannot record the heartbeat: %s", exc)
                failing = True
            await asyncio.sleep(HEARTBEAT_INTERVAL)


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: one httpx client, a ``Store`` on arq's pool, and the heartbeat."""
    settings: Settings = ctx[SETTINGS_KEY]
    redis: ArqRedis = ctx["redis"]
    client = make_client(_client_settings(settings))
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    runtime = Runtime(settings, redis, Store(redis), client, worker_id, settings.download_dir.resolve())
    await runtime.stack.enter_async_context(client)
    await runtime.stack.enter_async_context(background(runtime.heartbeat(), name="heartbeat"))
    runtime.stack.push_async_callback(runtime.stop_verifiers)
    ctx[RUNTIME_KEY] = runtime
    log.info(
        "worker %s: %d jobs at once, downloads in %s",
        worker_id, settings.distributed.worker_concurrency, runtime.download_dir,
    )


def _client_settings(settings: Settings) -> Settings:
    """``settings`` for a worker's client: one connection per concurrent job, so its pool is never the limit."""
    return settings.model_copy(update={"connections": settings.distributed.worker_concurrency})


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: stop the heartbeat, close the client, forget the worker.  Runs once."""
    runtime = ctx.pop(RUNTIME_KEY, None)
    if not isinstance(runtime, Runtime):
        return
    await runtime.stack.aclose()
    try:
        await runtime.store.forget_worker(runtime.worker_id)
    except QueueError as exc:
        log.warning("cannot remove worker %s: %s", runtime.worker_id, exc)
    log.info("worker %s stopped", runtime.worker_id)
