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
* **Time budget** (``Settings.jobs.budget``, 40 s): the fetch is stopped,
  its bytes fsynced and recorded, and ``Retry(defer=0)`` continues the range
  in a fresh job at the same queue position.  arq treats a job timeout as a
  permanent failure, so a slow but healthy range must never reach one; the
  budget keeps every run far below ``Settings.jobs.timeout`` (120 s), and a
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
  and ``Settings.jobs.max_attempts`` of them fail the download.  While
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
import math
import os
import random
import time
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from arq import Retry

from rangefetch import (
    Backoff,
    FileWriter,
    ProtocolError,
    QueueError,
    RangefetchError,
    RemoteFile,
    RetriesExhaustedError,
    TransientError,
    fetch_range,
)
from rangefetch.distributed import keys
from rangefetch.distributed.queue import enqueue_finalizer
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec
from rangefetch.errors import leaves
from rangefetch.plan import Range, ranges_in

from .downloads import active_spec, fail, log_started
from .files import RangeDigest, hash_prefix, hash_range, open_part, part_path
from .handoff import MAX_HANDOFFS, TICK, RunPace
from .runtime import HARD_STOP_MARGIN, Lease, LeaseLost, Runtime
from .verifier import start_verifier

__all__ = ["fetch_range_job", "host_key"]

log = logging.getLogger(__name__)

# Each running range job has its own writer: a worker running 8 jobs keeps
# 8 x this queued at most, so its memory stays near embedded mode's.
JOB_WRITE_BUDGET = 1024 * 1024
NOTE_TIMEOUT = 2.0  # seconds a retry note may take to reach Redis before it is skipped


class _End(Enum):
    DONE = "done"
    BUDGET = "budget"
    HANDOFF = "handoff"  # a straggler: the range goes on over another connection
    STOPPED = "stopped"


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
    timeout = rt.settings.jobs.timeout
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
            added = await enqueue_finalizer(rt.redis, rt.settings.queue_name, spec.id)
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
                deadline = asyncio.get_running_loop().time() + rt.settings.jobs.budget
                try:
                    await _fetch_all(rt, lease, spec, todo, _Target(part, fd), deadline, batch, slot, current)
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
    target: _Target,
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
            if end is not _End.DONE:
                return
        if digest is None:  # found done (a lost mark_done), or written out of order: read it back
            digest = await hash_range(target.path, rng)
        lease.check()
        batch.add(rng, digest)
        slot.finished.add(rng)
        current.clear()
        if batch.due() and not await batch.flush():
            return  # the download stopped (cancelled, failed elsewhere, gone)


class _Target(NamedTuple):
    """The ``.part`` file a range job writes: its path and its open descriptor."""

    path: Path
    fd: int


class _Slot:
    """A run's connection slot, taken once for all its ranges, and its ranges noted in flight."""

    def __init__(self, rt: Runtime, lease: Lease, spec: DownloadSpec, span: Range, ranges: list[Range]) -> None:
        self.rt, self.lease, self.spec, self.span, self.ranges = rt, lease, spec, span, ranges
        host = host_key(spec.final_url)
        self.host = host
        self.limits = {
            keys.sem_host(host): rt.settings.per_host_connections,
            keys.sem_download(spec.id): spec.connections,
        }
        # This run's own token ("DOWNLOAD:START-END#RUN"), so that renewing it tells
        # whether this run still holds the slots (``Lease``), not just the job.
        self.token = f"{keys.range_job_id(spec.id, span.start, span.end)}#{lease.token}"
        self.finished: set[Range] = set()

    async def __aenter__(self) -> _Slot:
        rt, jobs = self.rt, self.rt.settings.jobs
        taken = await rt.store.acquire_fair(
            self.token, self.spec.id, self.limits, waiters=keys.sem_waiters(self.host),
            ttl=jobs.lease, wait_ttl=max(5.0, 5 * jobs.slot_wait),
        )  # fmt: skip
        if not taken:
            raise Retry(defer=_jitter(jobs.slot_wait))
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
    rt: Runtime, lease: Lease, spec: DownloadSpec, rng: Range, target: _Target, done: int, deadline: float
) -> tuple[_End, str | None]:
    """Fetch the rest of ``rng`` on the run's slot: how the run ended, and the range's digest if known."""
    transfer = _Transfer(rt, lease, spec, rng, target, done, deadline)
    with rt.metrics.connection():
        end = await transfer.run()
    return end, transfer.digest()


class _RecordingBackoff(Backoff):
    """``Backoff`` that remembers the last failure, for the report when a range gives up."""

    last: TransientError | None = None

    async def wait(self, exc: TransientError) -> None:
        self.last = exc
        await super().wait(exc)


class _Transfer:
    """One run of a range: ``fetch_range`` plus checkpoints, the budget and the stop check."""

    def __init__(
        self, rt: Runtime, lease: Lease, spec: DownloadSpec, rng: Range, target: _Target, done: int, deadline: float
    ) -> None:
        self.rt, self.lease, self.spec, self.rng, self.target = rt, lease, spec, rng, target
        self.deadline = deadline  # loop time the run's budget ends at (shared by the run's ranges)
        self.started = self.written = self.saved = done
        self.began = time.monotonic()
        self.backoff = _RecordingBackoff(rt.settings.retry, on_retry=self._note_retry)
        self.bounded: _Bounded | None = None
        # The download's --limit-rate and the host's cap, over the cluster (rangefetch.ratelimit).
        self.throttle = rt.store.throttle(spec, host_key(spec.final_url), host_rate=rt.settings.per_host_rate)
        self.pace: RunPace | None = None  # this run's speed, for the straggler rule (``worker.handoff``)
        self.asked = False  # whether this run asked to hand off (once at most: a yes ends it, a no stands)

    def digest(self) -> str | None:
        """The ``RangeDigest`` of the range as written, when the run wrote it to its end in order."""
        b = self.bounded
        if b is None or b.digest is None or b.next != self.rng.end + 1 or self.saved != self.rng.length:
            return None
        return b.digest.hexdigest()

    def _count(self, n: int) -> None:
        self.written += n
        self.rt.metrics.fetched(n)
        if self.pace is not None:
            self.pace.arrived(n)

    def _progressed(self) -> bool:
        """Whether this run moved the range on: the bytes the low-speed rule asks for its time (a window at most).

        Not just any byte: a trickle brings a few bytes to every run, and
        would start the count over forever, whether or not a run is long
        enough for the rule to trip in it.  With the rule off, any byte counts.
        """
        rule = self.rt.settings.low_speed
        asked = min(rule.window, math.ceil(rule.limit * (time.monotonic() - self.began - self._held())))
        return self.saved - self.started >= max(1, asked)

    async def _note_retry(self, delay: float, exc: TransientError) -> None:
        """Record a retry wait on the download, for ``status`` and ``get --redis``: "retrying in 4 s (HTTP 503)"."""
        self.rt.metrics.range_retried()
        try:
            async with asyncio.timeout(NOTE_TIMEOUT):
                await self.rt.store.note_retry(self.spec.id, exc.reason, time.time() + delay)
        except (QueueError, TimeoutError) as error:  # only shown, never worth holding up the retry
            log.debug("range %s of %s: retry not recorded: %s", self.rng, self.spec.id, error)

    async def run(self) -> _End:
        """Fetch until done, out of budget or stopped; always fsync and record what was written.

        Raises:
            arq.Retry: out of budget, or a transient failure to retry later.
            RetriesExhaustedError: too many runs in a row without progress.
            RangefetchError: a permanent failure.
        """
        failure: TransientError | RetriesExhaustedError | None = None
        end = _End.DONE
        # The range's digest is taken from the bytes as they are written;
        # bytes written by earlier runs are read back once to start it.
        digest = await hash_prefix(self.target.path, self.rng, self.written)
        async with FileWriter(self.target.fd, budget=JOB_WRITE_BUDGET, allowed=self.lease.valid) as writer:
            self.bounded = _Bounded(writer, self.lease, self.rng, digest, self.rng.start + self.written)
            try:
                end = await self._loop(self.bounded)
            except (TransientError, RetriesExhaustedError) as exc:
                failure = exc
                await self._save(writer, quiet=True)
            except BaseException:
                await self._save(writer, quiet=True)
                raise
            else:
                # A range fetched to its end is recorded by its mark_done (full
                # length, digest): recording its progress too would be a
                # command per range that only matters if mark_done is lost,
                # and then the next run fetches the range again.
                await self._save(writer, record=end is not _End.DONE or self.written != self.rng.length)
        if failure is not None:
            await self._retry_later(failure)
        return await self._settle(end)

    async def _retry_later(self, exc: TransientError | RetriesExhaustedError) -> None:
        """Raise ``Retry`` with backoff, or ``RetriesExhaustedError`` after too many runs without progress."""
        self.lease.check()  # a run that lost its lease counts nothing: the range may be another run's
        rng, jobs = self.rng, self.rt.settings.jobs
        attempts = await self.rt.store.count_attempt(self.spec.id, rng, progressed=self._progressed())
        if attempts >= jobs.max_attempts:
            raise RetriesExhaustedError(f"range {rng} failed {attempts} times in a row: {exc}", range=rng) from exc
        cause = exc if isinstance(exc, TransientError) else exc.__cause__
        why = cause if isinstance(cause, TransientError) else TransientError(str(exc))
        delay = self._delay(attempts, why)
        log.debug("range %s of %s: %s; retrying in %.1fs", rng, self.spec.id, exc, delay)
        await self._note_retry(delay, why)
        raise Retry(defer=delay) from exc

    def _delay(self, attempts: int, exc: TransientError) -> float:
        """The backoff after ``attempts`` runs without progress, honouring Retry-After."""
        backoff = Backoff(self.rt.settings.retry)
        backoff.tries = attempts
        return backoff.delay(exc)

    async def _loop(self, writer: _Bounded) -> _End:
        rt, spec, rng = self.rt, self.spec, self.rng
        loop = asyncio.get_running_loop()
        deadline = self.deadline
        remote = RemoteFile(
            url=spec.url,
            final_url=spec.final_url,
            size=spec.size,
            ranges=True,
            etag=spec.etag,
            last_modified=spec.last_modified,
        )
        end = _End.DONE
        client = rt.client_for(spec)
        interval = rt.settings.checkpoint_interval
        pace = self.pace = rt.pace.start(spec.id)
        sample = False  # whether this run's speed is one to compare others with
        try:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(
                    fetch_range(
                        client,
                        remote,
                        rng,
                        writer,
                        headers=spec.headers,
                        done=self.written,
                        backoff=self.backoff,
                        on_progress=self._count,
                        low_speed=rt.settings.low_speed,
                        throttle=self.throttle,
                    )  # fmt: skip
                )
                checkpoint = loop.time() + interval
                while not task.done():
                    now = loop.time()
                    left = deadline - now
                    if left <= 0:
                        end = _End.BUDGET
                        task.cancel()
                        break
                    await asyncio.wait([task], timeout=max(0.0, min(TICK, checkpoint - now, left)))
                    if task.done():
                        break
                    if await self._straggling():
                        end = _End.HANDOFF
                        task.cancel()
                        break
                    if loop.time() >= checkpoint:
                        if not await self._checkpoint(writer.inner):
                            end = _End.STOPPED
                            task.cancel()
                            break
                        checkpoint = loop.time() + interval
            sample = end is not _End.HANDOFF
        except BaseExceptionGroup as group:
            raise _single(group) from None
        finally:
            pace.held = self._held()
            rt.pace.finish(spec.id, pace, sample=sample)
        return end

    def _held(self) -> float:
        """Seconds this run waited for our own rate limit: time the server is not to blame for."""
        return self.throttle.waited if self.throttle is not None else 0.0

    async def _straggling(self) -> bool:
        """Whether this run is far slower than its peers and may hand its range off (``worker.handoff``).

        The rule is local; only a yes costs a Redis command (the count that
        bounds hand-offs per range), and a run asks it once.
        """
        pace = self.pace
        if self.asked or pace is None:
            return False
        if self.throttle is not None and self.throttle.held_back():
            return False  # our rate limit holds the download back: another connection would bring no byte more
        pace.held = self._held()
        if not self.rt.pace.slow(self.spec.id, pace, left=self.rng.length - self.written):
            return False
        self.asked = True
        try:
            asked = await self.rt.store.count_handoff(self.spec.id, self.rng)
        except QueueError as exc:  # Redis is away: stay on this connection
            log.debug("range %s of %s: hand-off not counted: %s", self.rng, self.spec.id, exc)
            return False
        if asked > MAX_HANDOFFS:
            log.debug(
                "range %s of %s: slow, but handed off %d times already; it stays on its connection",
                self.rng, self.spec.id, MAX_HANDOFFS,
            )  # fmt: skip
            return False
        return True

    async def _checkpoint(self, writer: FileWriter) -> bool:
        """Fsync and record progress; whether the download still wants this range.

        Raises:
            LeaseLost: the run lost its lease (its writes are refused already).
        """
        self.lease.check()
        try:
            await self._save(writer)
            state = await self.rt.store.state(self.spec.id)
        except QueueError as exc:  # Redis is away (the link says so, once): keep fetching, record later
            log.debug("range %s of %s: %s", self.rng, self.spec.id, exc)
            return True
        return state is not None and not state.finished

    async def _save(self, writer: FileWriter, *, quiet: bool = False, record: bool = True) -> None:
        """Fsync what was handed to the writer and (with ``record``) record it as the range's progress."""
        written = self.written  # bytes queued before the flush below: on disk after it
        try:
            await writer.flush()
            if written != self.saved:
                self.lease.check()  # a run that lost its lease records nothing: the range may be another run's
                if record:
                    await self.rt.store.set_progress(self.spec.id, self.rng, written)
                self.saved = written
        except (RangefetchError, LeaseLost) as exc:
            if not quiet:
                raise
            log.debug("range %s of %s: progress not saved: %s", self.rng, self.spec.id, exc)

    async def _settle(self, end: _End) -> _End:
        self.lease.check()
        rng, jobs = self.rng, self.rt.settings.jobs
        if end is _End.BUDGET or end is _End.HANDOFF:
            attempts = await self.rt.store.count_attempt(self.spec.id, rng, progressed=self._progressed())
            last = self.backoff.last
            if attempts >= jobs.max_attempts:
                why = f": {last}" if last else ""
                raise RetriesExhaustedError(f"range {rng} made no progress in {attempts} runs{why}", range=rng)
            # A run that made progress continues at once, keeping its place;
            # one that spent its budget failing waits as the last failure asks.
            delay = self._delay(attempts, last) if attempts and last else 0
            why = "budget used" if end is _End.BUDGET else "far slower than its peers, handed to another connection"
            log.debug("range %s of %s: %s at byte %d of %d", rng, self.spec.id, why, self.saved, rng.length)
            if delay and last:
                await self._note_retry(delay, last)
            raise Retry(defer=delay)
        if end is _End.DONE and self.saved != rng.length:
            raise ProtocolError(f"range {rng} ended after {self.saved} of {rng.length} bytes", range=rng)
        return end


class _Bounded:
    """A writer that refuses bytes outside its range (``fetch_range`` checks Content-Range too), or without its lease.

    It also digests what it writes: ``digest`` covers the range up to
    ``next``.  ``fetch_range`` writes in order, resuming where it stopped;
    should a write ever land elsewhere, ``digest`` is dropped and the range
    is read back instead.
    """

    def __init__(self, inner: FileWriter, lease: Lease, rng: Range, digest: RangeDigest, next_offset: int) -> None:
        self.inner, self.lease, self.rng = inner, lease, rng
        self.digest: RangeDigest | None = digest
        self.next = next_offset

    async def write(self, offset: int, data: bytes) -> None:
        if offset < self.rng.start or offset + len(data) - 1 > self.rng.end:
            raise ProtocolError(f"bytes at {offset}+{len(data)} fall outside range {self.rng}", range=self.rng)
        self.lease.check()  # the writer thread asks too, for what is queued already
        await self.inner.write(offset, data)
        if self.digest is not None and offset == self.next:
            self.digest.update(data)
            self.next += len(data)
        else:
            self.digest = None


def host_key(url: str) -> str:
    """``host:port`` of ``url``: what the cluster-wide connection cap counts."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.5)


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error of a two-task group (the fetch and its checkpoints)."""
    found = leaves(group)
    ours = [e for e in found if not isinstance(e, asyncio.CancelledError)]
    return (ours or found)[0]
