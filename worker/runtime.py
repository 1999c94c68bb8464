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

Leases
------
Everything a running job claims in Redis is a lease that lapses unless it is
renewed: arq's ``arq:in-progress:<job id>`` key, the job's connection slots
and the finalizer guard (an early verifier's claims: its verifier lease and,
while it finishes, the guard).  ``Lease`` holds one run's claims and renews
them together every quarter lease (``Runtime.job()`` for jobs), so when a
worker is SIGKILLed its jobs, slots and guard are free again
``Settings.jobs.lease`` seconds later, whatever the jobs' timeouts are
(``worker.settings`` explains why arq's own in-progress expiry is shortened
to the lease).  The early verifiers (``worker.verifier``) run as tasks of
the runtime beside the jobs, each with a ``Lease`` of its own, and are
stopped before the client closes.

A lease is also what its holder may act on, and the holder stops once it
cannot be sure it still holds it:

* **Checked on renew.**  Each run has its own token (``Lease.token``): its
  slots hold it (``scripts.RENEW`` refuses a lapsed one) and so does the
  finalizer guard.  A renewal that finds a claim lapsed or taken loses the
  lease for good.
* **Known locally.**  ``Lease.valid()`` is true until one lease after the
  last renewal that Redis confirmed was *sent*, by this process's
  monotonic clock: Redis lets the claims lapse no earlier than that.  A
  process that was stopped (SIGSTOP, a frozen VM) past its lease, or lost
  Redis for that long, knows it at once on waking, before its next renewal.
* **Stops.**  A range job's writes pass ``valid()`` (``rangefetch.FileWriter``
  asks it before every ``pwrite``, bytes queued before the lapse
  included), and it records no progress or finished range once it is
  false; a finalizer checks it before it renames, completes, fails or
  sends ranges back.  The run raises ``LeaseLost`` and its job comes back
  one lease later (``Lease.give_up``) to find the range taken over, done,
  or free again.

While a job runs, each renewal also moves its score in the queue to when
its lease lapses, and a run that ends in an exception gives its place back
(``rangefetch.distributed.queue``, "Running jobs"): polls do not walk running jobs.

arq deletes a job's in-progress key whenever the job ends, the run that
lost it included, even while another run of the job (the one that took it
over) is going.  That run puts the key back at its next renewal while it
holds its slots, and the lost run's ``Retry`` defers the job by a whole
lease meanwhile, so arq does not start it a third time.
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
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

from rangefetch import QueueError, Settings, Trust, make_client
from rangefetch.distributed.queue import restore_place
from rangefetch.distributed.store import DownloadSpec, Store, WorkerInfo

from .downloads import SpecCache
from .handoff import Pace
from .metrics import WorkerMetrics
from .metrics import current as current_metrics

__all__ = [
    "HARD_STOP_MARGIN",
    "HEARTBEAT_INTERVAL",
    "Lease",
    "LeaseLost",
    "Runtime",
    "background",
    "shutdown",
    "startup",
]

log = logging.getLogger(__name__)

HARD_STOP_MARGIN = 0.1  # a job's hard stop comes this share of its arq timeout before it
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


class LeaseLost(Exception):
    """A run's lease lapsed or went to another run: it must stop acting on what the lease covered.

    Not a ``RangefetchError``: it never fails a download.  The job gives its
    work up and comes back later (``Lease.give_up``).
    """


class Lease:
    """The leased claims of one run of a job (or of an early verifier: no ``job_id``), renewed together.

    ``since``: when the claims were made (``time.monotonic()``), no later
    than Redis set them: arq sets a job's in-progress key just before the
    job starts, an early verifier claims its lease just before it starts.
    """

    def __init__(self, runtime: Runtime, job_id: str | None, *, since: float, verifier: str | None = None) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.token = secrets.token_hex(8)  # this run's own: its slots and the finalizer guard hold it
        self.slots: tuple[str, list[str]] | None = None  # (token, semaphore keys)
        self.guard: str | None = None  # download id whose finalizer guard the run holds
        self.verifier = verifier  # download id whose early verifier lease (owner: the worker) the run holds
        self.expires = since + runtime.settings.jobs.lease  # time.monotonic() the claims may lapse at
        self.lost = False
        self.redis_failed = False  # the run ended on a Redis failure (``Runtime.redis_retry``)

    @property
    def name(self) -> str:
        return f"job {self.job_id}" if self.job_id is not None else f"verifier of {self.verifier}"

    def valid(self) -> bool:
        """Whether the claims surely still hold: not lost, and not past one lease since the last confirmed renewal.

        Safe to call from any thread (``rangefetch.FileWriter`` asks it from its writer thread).
        """
        return not self.lost and time.monotonic() < self.expires

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the claims surely still hold."""
        if not self.valid():
            raise LeaseLost(f"{self.name} lost its lease")

    def give_up(self) -> Retry:
        """The ``Retry`` a job raises after ``LeaseLost``: it runs again one lease later.

        By then the run that took the job over, if any, has renewed its
        claims and put back the in-progress key that this run's end deletes
        (see the module docstring), so arq does not start the job a third time.
        """
        return Retry(defer=self.runtime.settings.jobs.lease)

    async def renew(self) -> bool:
        """Extend every claim by one lease; ``False`` (and the lease is lost for good) if one had lapsed or was taken.

        Raises:
            QueueError: Redis failed (the claims are not extended, nor known to be lost).
        """
        sent = time.monotonic()
        if self.lost:
            return False
        if await self._renew_all(self.runtime.settings.jobs.lease):
            self.expires = max(self.expires, sent + self.runtime.settings.jobs.lease)
            return True
        self.lost = True
        return False

    async def _renew_all(self, ttl: float) -> bool:
        # The run may give slots or the guard back while this renews them:
        # a claim found gone that the run no longer holds is not lost.
        rt = self.runtime
        if self.verifier is not None and not await rt.store.renew_verifier(self.verifier, rt.worker_id, ttl=ttl):
            return False
        slots = self.slots
        if slots is not None and not await rt.store.renew_slots(*slots, ttl=ttl) and self.slots is slots:
            return False
        if self.job_id is not None:
            key, ms = in_progress_key_prefix + self.job_id, max(1, round(ttl * 1000))
            try:
                async with rt.redis.pipeline(transaction=False) as pipe:
                    if slots is not None and self.slots is slots:
                        # The slots hold this run's token, so the job is this run's.  A run
                        # that lost it and ended since may have taken arq's key along: put it back.
                        pipe.set(key, b"1", px=ms)
                    else:
                        pipe.pexpire(key, ms)
                    # Out of the polls' sight while it runs (``rangefetch.distributed.queue``, "Running jobs").
                    pipe.zadd(rt.settings.queue_name, {self.job_id: round(time.time() * 1000) + ms}, xx=True)
                    held, _ = await pipe.execute()
                if not held:
                    return False
            except RedisError as exc:
                raise QueueError(f"cannot renew {self.name}: {exc}") from exc
        guard = self.guard
        if guard is None:
            return True
        return await rt.store.renew_finalizer(guard, self.token, ttl=ttl) or self.guard != guard

    async def keep(self) -> None:
        """Renew at once, then every quarter lease, until cancelled or lost.

        While Redis fails the renewal is retried (logged once in a row) until
        the lease would have lapsed: then the lease is lost too.
        """
        interval = self.runtime.settings.jobs.lease / 4
        failing = False
        while True:
            try:
                if not await self.renew():
                    log.warning("%s lost its lease (it lapsed, or another run holds it); it stops", self.name)
                    return
                if failing:
                    log.debug("%s renewed its lease again", self.name)
                failing = False
                await asyncio.sleep(interval)
            except QueueError as exc:
                left = self.expires - time.monotonic()
                if left <= 0:
                    self.lost = True
                    log.warning("%s: its lease lapsed while Redis failed (%s); it stops", self.name, exc)
                    return
                if not failing:  # per job: the link says once that Redis is away
                    log.debug("%s: %s", self.name, exc)
                failing = True
                await asyncio.sleep(min(interval, left / 2))


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
                await restore_place(self.redis, self.settings.queue_name, job_id, ctx.get("score"))
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
        jobs = self.settings.jobs
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
        "worker %s: %d jobs at once, downloads in %s", worker_id, settings.worker_concurrency, runtime.download_dir
    )


def _client_settings(settings: Settings) -> Settings:
    """``settings`` for a worker's client: one connection per concurrent job, so its pool is never the limit."""
    return settings.model_copy(update={"connections": settings.worker_concurrency})


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
