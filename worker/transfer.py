"""One run of one range in a range job: ``fetch_range`` plus checkpoints, the budget, hand-off and the stop check.

``Transfer.run`` fetches the rest of a range on the job's connection slot
from its recorded progress, through ``Bounded`` (which refuses writes once
the run's lease is lost and digests the bytes in order), and ends as the
range job's docstring (``worker.jobs``) tells: done, out of budget, handed
off, stopped, or a failure to retry or to record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from enum import Enum
from pathlib import Path
from typing import NamedTuple
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
from rangefetch.distributed.store import DownloadSpec
from rangefetch.errors import leaves
from rangefetch.plan import Range

from .files import RangeDigest, hash_prefix
from .handoff import MAX_HANDOFFS, TICK, RunPace
from .lease import Lease, LeaseLost
from .runtime import Runtime

__all__ = ["Bounded", "End", "Target", "Transfer", "host_key", "jitter"]

log = logging.getLogger(__name__)

# Each running range job has its own writer: a worker running 8 jobs keeps
# 8 x this queued at most, so its memory stays near embedded mode's.
JOB_WRITE_BUDGET = 1024 * 1024
NOTE_TIMEOUT = 2.0  # seconds a retry note may take to reach Redis before it is skipped


class End(Enum):
    DONE = "done"
    BUDGET = "budget"
    HANDOFF = "handoff"  # a straggler: the range goes on over another connection
    STOPPED = "stopped"


class Target(NamedTuple):
    """The ``.part`` file a range job writes: its path and its open descriptor."""

    path: Path
    fd: int


class _RecordingBackoff(Backoff):
    """``Backoff`` that remembers the last failure, for the report when a range gives up."""

    last: TransientError | None = None

    async def wait(self, exc: TransientError) -> None:
        self.last = exc
        await super().wait(exc)


class Transfer:
    """One run of a range: ``fetch_range`` plus checkpoints, the budget and the stop check."""

    def __init__(
        self, rt: Runtime, lease: Lease, spec: DownloadSpec, rng: Range, target: Target, done: int, deadline: float
    ) -> None:
        self.rt, self.lease, self.spec, self.rng, self.target = rt, lease, spec, rng, target
        self.deadline = deadline  # loop time the run's budget ends at (shared by the run's ranges)
        self.started = self.written = self.saved = done
        self.began = time.monotonic()
        self.backoff = _RecordingBackoff(rt.settings.retry, on_retry=self._note_retry)
        self.bounded: Bounded | None = None
        # The download's --limit-rate and the host's cap, over the cluster (rangefetch.ratelimit).
        host_rate = rt.settings.distributed.per_host_rate
        self.throttle = rt.store.throttle(spec, host_key(spec.final_url), host_rate=host_rate)
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

    async def run(self) -> End:
        """Fetch until done, out of budget or stopped; always fsync and record what was written.

        Raises:
            arq.Retry: out of budget, or a transient failure to retry later.
            RetriesExhaustedError: too many runs in a row without progress.
            RangefetchError: a permanent failure.
        """
        failure: TransientError | RetriesExhaustedError | None = None
        end = End.DONE
        # The range's digest is taken from the bytes as they are written;
        # bytes written by earlier runs are read back once to start it.
        digest = await hash_prefix(self.target.path, self.rng, self.written)
        async with FileWriter(self.target.fd, budget=JOB_WRITE_BUDGET, allowed=self.lease.valid) as writer:
            self.bounded = Bounded(writer, self.lease, self.rng, digest, self.rng.start + self.written)
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
                await self._save(writer, record=end is not End.DONE or self.written != self.rng.length)
        if failure is not None:
            await self._retry_later(failure)
        return await self._settle(end)

    async def _retry_later(self, exc: TransientError | RetriesExhaustedError) -> None:
        """Raise ``Retry`` with backoff, or ``RetriesExhaustedError`` after too many runs without progress."""
        self.lease.check()  # a run that lost its lease counts nothing: the range may be another run's
        rng, jobs = self.rng, self.rt.settings.distributed.jobs
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

    async def _loop(self, writer: Bounded) -> End:
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
        end = End.DONE
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
                        end = End.BUDGET
                        task.cancel()
                        break
                    await asyncio.wait([task], timeout=max(0.0, min(TICK, checkpoint - now, left)))
                    if task.done():
                        break
                    if await self._straggling():
                        end = End.HANDOFF
                        task.cancel()
                        break
                    if loop.time() >= checkpoint:
                        if not await self._checkpoint(writer.inner):
                            end = End.STOPPED
                            task.cancel()
                            break
                        checkpoint = loop.time() + interval
            sample = end is not End.HANDOFF
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

    async def _settle(self, end: End) -> End:
        self.lease.check()
        rng, jobs = self.rng, self.rt.settings.distributed.jobs
        if end is End.BUDGET or end is End.HANDOFF:
            attempts = await self.rt.store.count_attempt(self.spec.id, rng, progressed=self._progressed())
            last = self.backoff.last
            if attempts >= jobs.max_attempts:
                why = f": {last}" if last else ""
                raise RetriesExhaustedError(f"range {rng} made no progress in {attempts} runs{why}", range=rng)
            # A run that made progress continues at once, keeping its place;
            # one that spent its budget failing waits as the last failure asks.
            delay = self._delay(attempts, last) if attempts and last else 0
            why = "budget used" if end is End.BUDGET else "far slower than its peers, handed to another connection"
            log.debug("range %s of %s: %s at byte %d of %d", rng, self.spec.id, why, self.saved, rng.length)
            if delay and last:
                await self._note_retry(delay, last)
            raise Retry(defer=delay)
        if end is End.DONE and self.saved != rng.length:
            raise ProtocolError(f"range {rng} ended after {self.saved} of {rng.length} bytes", range=rng)
        return end


class Bounded:
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


def jitter(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.5)


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error of a two-task group (the fetch and its checkpoints)."""
    found = leaves(group)
    ours = [e for e in found if not isinstance(e, asyncio.CancelledError)]
    return (ours or found)[0]
