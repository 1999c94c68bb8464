"""The range job: fetch a run of consecutive ranges of a download into the shared ``.part`` file.

``fetch_range_job(ctx, download_id, start, end)`` is thin: bytes
``start``-``end`` are a job cell, one range or a run of
``DownloadSpec.job_ranges`` consecutive ranges (``queue.job_cells``; a job
per range would cost arq's some 20 Redis commands per range).  It checks
the download's state, reads its ranges' progress in one call, opens the
``.part`` file the producer created (never creating it), takes one
connection slot, and fetches each range not done in turn with the core's
``fetch_range`` and the download's client (``Runtime.client_for``: the
download's trust, the worker's proxies) from the range's recorded
progress, digesting the bytes as it writes them.  Each finished range is
fsynced at once; its done mark, with that digest, goes with the others of
the run in one call per checkpoint interval (``_DoneBatch``); the batch
that finishes the last range enqueues the finalizer, the others make sure
the download has an early verifier (``worker.verifier``).

How a run ends
--------------
* **Done**: fsync, then (batched per checkpoint interval and at the run's
  end, ``_DoneBatch``: one ``Store.mark_done_many`` for the run's finished
  ranges) the done mark with the range's ``RangeDigest``
  (CRC-32) of the bytes as written (bytes written by earlier runs of the
  range are read back once to seed it); when every range is done, the
  finalizer is enqueued.
* **Time budget** (``Settings.distributed.jobs.budget``, 40 s): the fetch is stopped,
  its bytes fsynced and recorded, and ``Retry(defer=0)`` continues the range
  in a fresh job at the same queue position.  arq treats a job timeout as a
  permanent failure, so a slow but healthy range must never reach one; the
  budget keeps every run far below ``Settings.distributed.jobs.timeout`` (120 s), and a
  hard stop shortly before the timeout turns even a run that overran
  (a stalled disk or Redis) into a retry.  Yielding also lets other
  downloads have the connection slot.
* **Handed off** (a straggler, ``worker.handoff``): a run far slower than
  the other runs of its download in this worker (checked every
  ``handoff.TICK`` seconds, without Redis) stops as at the end of its budget:
  its connection is closed, its bytes fsynced and recorded, and
  ``Retry(defer=0)`` gives the range, at its place in the queue, to the next
  run on another connection, which resumes from the recorded bytes.  At
  most ``handoff.MAX_HANDOFFS`` times per range.
* **No free slot**: ``Retry(defer=slot_wait * U(0.5, 1.5))`` without
  holding a worker slot; the jitter spreads the retries out.  The wait
  ends: every slot is a lease that its holder renews only while it holds
  it (``scripts.RENEW``), so the slot of a run that died or lost its lease
  is free again one lease later.
* **Transient failure** (``RetriesExhaustedError`` after ``fetch_range``'s
  own backoff): progress is recorded and the job retried with
  backoff.  arq's try counter also counts budget continuations and slot
  waits, so it is set out of reach and the count that decides failure is
  ours: ``Store.count_attempt`` counts runs in a row that made no progress,
  and ``Settings.distributed.jobs.max_attempts`` of them fail the download.  While
  the low-speed rule is on, a run made progress only if it brought what the
  rule asks for the time it ran (``LowSpeed``: 1 KiB a second, at most one
  window of 30 KiB): a trickle that sends a few bytes per run still fails.
  Each retry wait, in the run or between runs, is noted on the download
  (``Store.note_retry``) for ``status`` and ``get --redis`` to show.
* **Permanent failure** (the remote changed, a protocol violation, a
  4xx, a certificate that cannot be verified (``TLSError``), an unsafe
  path, a missing ``.part``): the range and the download are marked failed
  with a one-line reason (shown by ``status``), never retried, and the
  error is raised for arq to log.
* **Cancelled** (SIGTERM stops the worker, arq cancels its jobs): the bytes
  written so far are fsynced and recorded, the slots released, and the
  ``CancelledError`` re-raised, so arq puts the job back and the next run
  resumes from exactly the recorded bytes.  Progress is an absolute count
  of fsynced bytes, so nothing is lost or counted twice.
* **Download stopped** (cancelled, failed elsewhere, gone): the job saves
  its progress and returns without error.
* **Lease lost** (the run's claims lapsed, say while its process was
  stopped, or another run holds them: ``worker.runtime``): not one more
  byte is written (``FileWriter`` asks ``Lease.valid`` before each
  ``pwrite``), no progress and no finished range recorded; the run gives
  the range up and its job comes back one lease later
  (``Lease.give_up``), by when the run that took it over holds it or has
  finished it.
* **Redis failing** (``QueueError``): retried with a growing delay;
  ``jobs.max_attempts`` such runs in a row give the job up, and the sweep
  enqueues it again once Redis answers (``Runtime.redis_retry``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from arq import Retry

from rangefetch import (
    QueueError,
)
from rangefetch.distributed import keys
from rangefetch.distributed.queue import enqueue_finalizer
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec
from rangefetch.plan import Range, ranges_in

from .downloads import active_spec, fail, log_started
from .files import hash_range, open_part, part_path
from .lease import HARD_STOP_MARGIN, Lease, LeaseLost
from .runtime import Runtime
from .transfer import End, Target, Transfer, host_key, jitter
from .verifier import start_verifier

__all__ = ["fetch_range_job"]

log = logging.getLogger(__name__)


async def fetch_range_job(ctx: dict[str, Any], download_id: str, start: int, end: int) -> None:
    """arq job ``fetch_range``: fetch the ranges in bytes ``start``-``end`` of download ``download_id``.

    A job covers one range or a run of consecutive ranges (a job cell,
    ``rangefetch.distributed.queue.job_cells``): its ranges are the plan's
    ranges of ``spec.chunk_size`` bytes from ``start``, fetched one after
    another on one connection slot, each with its own progress (absolute
    fsynced bytes) and digest; the done marks are batched (``_DoneBatch``).

    Raises:
        arq.Retry: continue later (time budget, no free slot, transient failure).
        RangefetchError: a permanent failure, already recorded on the download.
    """
    rt = Runtime.of(ctx)
    span = Range(start, end)
    timeout = rt.settings.distributed.jobs.timeout
    async with rt.job(ctx) as lease:
        try:
            async with asyncio.timeout(timeout * (1 - HARD_STOP_MARGIN)) as deadline:
                await _run(rt, lease, download_id, span)
        except LeaseLost as exc:
            log.warning("range %s of %s: %s; giving the range up", span, download_id, exc)
            raise lease.give_up() from None
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("range %s of %s overran; continuing in a new job", span, download_id)
            raise Retry(defer=0) from None
        except QueueError as exc:
            if not lease.valid():
                log.warning("range %s of %s: %s; its lease lapsed meanwhile: giving it up", span, download_id, exc)
                raise lease.give_up() from exc
            retry = rt.redis_retry(lease)
            if retry is None:
                log.debug("range %s of %s: %s; too often in a row: the sweep enqueues it again", span, download_id, exc)
                return
            log.debug("range %s of %s: %s; retrying", span, download_id, exc)  # the link says Redis is away, once
            raise retry from exc


class _DoneBatch:
    """The finished ranges of a run not yet marked done: recorded together every ``checkpoint_interval``.

    A range fetched to its end is fsynced at once, but its done mark waits
    for the next flush (at most one checkpoint interval, and the run's end):
    a crash loses at most that much work, as it loses the bytes since a
    range's last progress checkpoint.  One flush is one script call
    (``Store.mark_done_many``) whatever its size, and reads the download's
    state, so the run learns whether the download still wants it.
    """

    def __init__(self, rt: Runtime, lease: Lease, spec: DownloadSpec) -> None:
        self.rt, self.lease, self.spec = rt, lease, spec
        self.pending: list[tuple[Range, str]] = []
        self.flushed = time.monotonic()

    def add(self, rng: Range, digest: str) -> None:
        self.pending.append((rng, digest))

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.flushed >= self.rt.settings.checkpoint_interval

    async def flush(self) -> bool:
        """Mark the pending ranges done; whether the download still wants the run's other ranges."""
        self.flushed = time.monotonic()
        if not self.pending:
            return True
        self.lease.check()  # the ranges may be another run's now: that one records them
        rt, spec, batch = self.rt, self.spec, self.pending
        count, state = await rt.store.mark_done_many(spec.id, batch)
        self.pending = []
        for _ in batch:
            rt.metrics.range_done()
        log.debug("ranges %s-%s of %s done (%d of %d)", batch[0][0], batch[-1][0], spec.id, count, spec.ranges)
        if count >= spec.ranges:
            added = await enqueue_finalizer(rt.redis, rt.settings.distributed.queue_name, spec.id)
            how = "enqueued" if added else "already queued"
            log.debug("download %s: all %d ranges done; finalizer %s", spec.id, count, how)
        else:
            await start_verifier(rt, spec)
        return state is not None and not state.finished


async def _run(rt: Runtime, lease: Lease, download_id: str, span: Range) -> None:
    store = rt.store
    found = await active_spec(store, download_id, rt.specs)
    if found is None:
        return
    spec, state = found
    batch = _DoneBatch(rt, lease, spec)
    current: list[Range] = []  # the range being fetched, for the failure record
    try:
        if state is DownloadState.QUEUED:
            if await store.set_state(download_id, DownloadState.RUNNING) is DownloadState.QUEUED:
                log_started(spec)  # the run that started it: once per download
        ranges = ranges_in(span, spec.chunk_size)
        progress = await store.progress_of(download_id, ranges)
        todo = [(r, p) for r, p in zip(ranges, progress, strict=True) if p is not None]
        if not todo:
            return
        part = part_path(rt.download_dir, spec)
        fd = await asyncio.to_thread(open_part, part, spec.size)
        try:
            async with _Slot(rt, lease, spec, span, [r for r, _ in todo]) as slot:
                deadline = asyncio.get_running_loop().time() + rt.settings.distributed.jobs.budget
                try:
                    await _fetch_all(rt, lease, spec, todo, Target(part, fd), deadline, batch, slot, current)
                except BaseException:
                    if lease.valid() and batch.pending:
                        try:
                            await batch.flush()
                        except (QueueError, LeaseLost) as exc:
                            log.debug("ranges of %s: done marks not recorded: %s", download_id, exc)
                    raise
                else:
                    await batch.flush()
        finally:
            os.close(fd)
    except (Retry, QueueError, LeaseLost, asyncio.CancelledError):
        raise
    except Exception as exc:
        lease.check()  # the error of a run that lost its lease (its writes refused) fails nothing
        if await fail(store, download_id, exc, rng=current[0] if current else None):
            rt.metrics.range_failed()
            raise
        return


async def _fetch_all(
    rt: Runtime,
    lease: Lease,
    spec: DownloadSpec,
    todo: list[tuple[Range, int]],
    target: Target,
    deadline: float,
    batch: _DoneBatch,
    slot: _Slot,
    current: list[Range],
) -> None:
    """Fetch the run's ranges one after another; return early when one ends short or the download stops."""
    for rng, done in todo:
        current[:] = [rng]
        digest = None
        if done < rng.length:
            end, digest = await _fetch(rt, lease, spec, rng, target, done, deadline)
            if end is not End.DONE:
                return
        if digest is None:  # found done (a lost mark_done), or written out of order: read it back
            digest = await hash_range(target.path, rng)
        lease.check()
        batch.add(rng, digest)
        slot.finished.add(rng)
        current.clear()
        if batch.due() and not await batch.flush():
            return  # the download stopped (cancelled, failed elsewhere, gone)


class _Slot:
    """A run's connection slot, taken once for all its ranges, and its ranges noted in flight."""

    def __init__(self, rt: Runtime, lease: Lease, spec: DownloadSpec, span: Range, ranges: list[Range]) -> None:
        self.rt, self.lease, self.spec, self.span, self.ranges = rt, lease, spec, span, ranges
        host = host_key(spec.final_url)
        self.host = host
        self.limits = {
            keys.sem_host(host): rt.settings.distributed.per_host_connections,
            keys.sem_download(spec.id): spec.connections,
        }
        # This run's own token ("DOWNLOAD:START-END#RUN"), so that renewing it tells
        # whether this run still holds the slots (``Lease``), not just the job.
        self.token = f"{keys.range_job_id(spec.id, span.start, span.end)}#{lease.token}"
        self.finished: set[Range] = set()

    async def __aenter__(self) -> _Slot:
        rt, jobs = self.rt, self.rt.settings.distributed.jobs
        taken = await rt.store.acquire_fair(
            self.token, self.spec.id, self.limits, waiters=keys.sem_waiters(self.host),
            ttl=jobs.lease, wait_ttl=max(5.0, 5 * jobs.slot_wait),
        )  # fmt: skip
        if not taken:
            raise Retry(defer=jitter(jobs.slot_wait))
        self.lease.slots = (self.token, list(self.limits))
        try:
            await rt.store.start_ranges(self.spec.id, self.ranges, rt.worker_id)
        except BaseException:
            await self._release([])
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._release([r for r in self.ranges if r not in self.finished])

    async def _release(self, unfinished: list[Range]) -> None:
        self.lease.slots = None
        try:
            await self.rt.store.release_slots(self.token, list(self.limits))
            # finished ranges left the in-flight list with their done marks
            await self.rt.store.stop_ranges(self.spec.id, unfinished, self.rt.worker_id)
        except QueueError as exc:  # the leases lapse by themselves
            log.debug("range %s of %s: %s", self.span, self.spec.id, exc)


async def _fetch(
    rt: Runtime, lease: Lease, spec: DownloadSpec, rng: Range, target: Target, done: int, deadline: float
) -> tuple[End, str | None]:
    """Fetch the rest of ``rng`` on the run's slot: how the run ended, and the range's digest if known."""
    transfer = Transfer(rt, lease, spec, rng, target, done, deadline)
    with rt.metrics.connection():
        end = await transfer.run()
    return end, transfer.digest()


