"""The one way rangefetch puts arq jobs on the queue: in bulk, in a fair order; and takes them back out.

Bulk
----
arq's ``ArqRedis.enqueue_job`` costs three round trips a job (WATCH and
EXISTS, then MULTI/EXEC), so a 10,000-range download would take 30,000 round
trips to enqueue.  ``enqueue_jobs`` writes the same keys arq writes,
``arq:job:<id>`` (``serialize_job``'s pickle, with an expiry) plus a ZADD to
the queue, from one Lua script per batch of ``BATCH`` jobs: one round trip
per thousand jobs, and each batch is atomic.

Like ``enqueue_job`` with a ``_job_id``, a job whose ``arq:job:`` key exists
(queued, or running right now) is skipped.  Unlike it, an ``arq:result:`` key
does not block a job: the caller only asks for ranges that are not in the
download's ``done`` set (checked again inside the script, so a range that
finishes while we enqueue is not fetched twice), and a range that is not done
must run again whatever an earlier try left as its result.  Old result and
retry counters are deleted so the new job starts at try 1.

Fair scores
-----------
arq workers poll ``ZRANGEBYSCORE queue -inf now`` and take jobs in score
order; the score is the time (unix ms) from which a job may run, and
``enqueue_job`` scores every job "now".  With that, a small download enqueued
behind a 10,000-range one waits until every one of those ranges has been
taken: one huge download starves everything after it.

So the k-th job of a download gets the score ``head + k`` (``fair_scores``),
where ``head = min(now_ms, lowest score in the queue)`` (``queue_head``).
Two downloads then hold the scores ``head, head+1, head+2, ...`` in turn and
the workers alternate between them; a third that comes later starts from the
queue's head as it is then, so it interleaves with what is left of the
others.  Jobs of one download keep their order (low offsets first, which
suits players and ``tail``).  Equal scores sort by job id, which does not
matter.  The price: a download enqueued into an empty queue has its k-th
range due k milliseconds from now; 10,000 ranges spread over 10 s, far less
than the time the workers need to take them.  Retries are scored by arq
itself (``now + defer``) and go behind whatever is waiting.

Jobs that finish a download go to the front instead: ``front=True`` scores
them ``head - n, ..., head - 1``, before everything queued.  These are the
finalizer and the ranges a finalizer sends back (they failed verification,
or were missing): a download that is one step from done should not wait
behind another download's backlog of ten thousand ranges whose scores lie
in the past.  They are few, and a range is redone only
``max_verify_retries`` times, so nothing is starved for long.  Lost ranges
the sweep finds again get fair scores like any others.

Running jobs
------------
arq leaves a running job in the queue (it removes it when the job ends),
and every worker with a free slot reads the due head of the queue on each
poll and checks each job there (WATCH, EXISTS, ZSCORE, UNWATCH): with the
in-flight jobs at the head, every poll of every free worker walks all of
them, a cost that grows with the number of workers.  So each renewal of a
job's lease (``worker.lease.Lease``) also moves the job's score to when
its in-progress key lapses (one lease on; ``ZADD XX``, so a job that has
ended and left the queue is not put back): polls do not see a running job,
and the job of a worker that died is due again as its in-progress key
lapses.  A run that ends in an exception (a retry, a cancel) first puts the
job back at the score it started with (``restore_place``), since arq moves
a retried job on from there; one that ends well is removed by arq.  The
score is the worker host's clock: a skew between hosts delays a takeover by
that much.

Job keys expire ``JOB_TTL_MS`` after their score rather than arq's one day: a
range may wait in a long queue for longer than that, and an expired job would
be a range that is never fetched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import QueueError
from ..plan import Range
from . import scripts
from .keys import download_key, finalize_job_id, range_job_id

__all__ = [
    "BATCH",
    "FETCH_RANGE",
    "FINALIZE",
    "JOB_TTL_MS",
    "Job",
    "enqueue_finalizer",
    "enqueue_jobs",
    "enqueue_ranges",
    "fair_scores",
    "finalize_job",
    "job_cells",
    "job_ids_of",
    "now_ms",
    "queue_head",
    "range_job",
    "remove_jobs",
    "restore_place",
]

FETCH_RANGE = "fetch_range"  # arq function names, as the worker registers them
FINALIZE = "finalize"
BATCH = 1000
RESTORE_TIMEOUT = 2.0  # seconds a job's end may wait to give its queue place back
JOB_TTL_MS = 7 * 86_400_000
# Multi-range jobs: a download's ranges go to at most ``Settings.distributed.jobs.per_download``
# jobs, each a run of consecutive ranges (a job cell) fetched one after another
# on one connection slot, so arq's cost of a job (some 20 commands) and the slot
# claim are paid once per run, not once per range.
MAX_JOB_BYTES = 64 * 1024 * 1024  # a cell is at most this long (unless one range is longer)


@dataclass(frozen=True, slots=True)
class Job:
    """One arq job to enqueue: its id, function and primitive arguments.

    ``done_member`` names the range (``"start-end"``) whose presence in the
    download's ``done`` set makes the job unnecessary; ``None`` for the finalizer.
    """

    id: str
    function: str
    args: tuple[str | int, ...]
    done_member: str | None = None

    def payload(self, enqueue_time_ms: int) -> bytes:
        """The job as arq stores it at ``arq:job:<id>``."""
        return serialize_job(self.function, self.args, {}, None, enqueue_time_ms)


def range_job(download_id: str, rng: Range) -> Job:
    """The ``fetch_range(download_id, start, end)`` job of one range."""
    return Job(range_job_id(download_id, rng.start, rng.end), FETCH_RANGE, (download_id, rng.start, rng.end), str(rng))


def ranges_per_job(ranges: int, chunk_size: int, jobs: int) -> int:
    """How many consecutive ranges one job of a download fetches, for ``ranges`` ranges in at most ``jobs`` jobs.

    Decided once, at enqueue, and kept in the download's spec
    (``DownloadSpec.job_ranges``), so every producer, the sweep and
    ``cancel`` cut the download into the same cells (``job_cells``) and a
    cell's job id is the same whoever enqueues it.
    """
    return max(1, min(-(-ranges // jobs), MAX_JOB_BYTES // chunk_size))


def job_cells(size: int, cell: int, ranges: Iterable[Range]) -> list[tuple[Range, list[Range]]]:
    """``ranges`` grouped by the job cell they fall in: (the cell's span, its ranges in ``ranges``), in order.

    Cells are fixed runs of ``cell`` bytes (``DownloadSpec.job_bytes``) from
    byte 0, the last one cut at ``size``; a cell's job covers its span and
    skips what is done.
    """
    found: dict[int, list[Range]] = {}
    for r in ranges:
        found.setdefault(r.start // cell, []).append(r)
    return [(Range(c * cell, min(size, (c + 1) * cell) - 1), rs) for c, rs in sorted(found.items())]


def cell_job(download_id: str, span: Range, todo: Sequence[Range]) -> Job:
    """The ``fetch_range(download_id, start, end)`` job of a cell: every range of ``span`` not done."""
    member = str(todo[-1]) if len(todo) == 1 else ""
    job_id = range_job_id(download_id, span.start, span.end)
    return Job(job_id, FETCH_RANGE, (download_id, span.start, span.end), member)


def job_ids_of(download_id: str, size: int, cell: int, rng: Range) -> list[str]:
    """The ids of the jobs that may fetch ``rng``: its cell's, and its own (a range sent back alone)."""
    ((span, _),) = job_cells(size, cell, [rng])
    ids = [range_job_id(download_id, span.start, span.end)]
    if span != rng:
        ids.append(range_job_id(download_id, rng.start, rng.end))
    return ids


def finalize_job(download_id: str) -> Job:
    """The ``finalize(download_id)`` job that verifies and renames the file."""
    return Job(finalize_job_id(download_id), FINALIZE, (download_id,))


def now_ms() -> int:
    """The current time as arq scores it."""
    return round(time.time() * 1000)


def fair_scores(head: int, count: int) -> list[int]:
    """Scores for a download's ``count`` jobs: one a millisecond from ``head``."""
    return [head + k for k in range(count)]


async def queue_head(redis: Redis, queue: str, *, now: int | None = None) -> int:
    """``min(now, lowest score in queue)``: where a new download's jobs start.

    Raises:
        QueueError: Redis failed.
    """
    now = now_ms() if now is None else now
    try:
        first = await redis.zrange(queue, 0, 0, withscores=True)
    except RedisError as exc:
        raise QueueError(f"cannot read the queue {queue}: {exc}") from exc
    return min(now, int(first[0][1])) if first else now


async def enqueue_jobs(
    redis: Redis,
    queue: str,
    jobs: Sequence[Job],
    *,
    done_key: str,
    head: int | None = None,
    front: bool = False,
    now: int | None = None,
    batch: int = BATCH,
) -> int:
    """Put ``jobs`` on ``queue`` with fair scores from ``head``; returns how many were added.

    Jobs already queued or running, and ranges already in ``done_key``, are
    skipped, so calling this again is harmless.

    Args:
        head: the first score; by default the queue's head (``queue_head``).
        front: score the jobs just before ``head``, so they run next.

    Raises:
        QueueError: Redis failed (batches written before the failure stay).
    """
    now = now_ms() if now is None else now
    if head is None:
        head = await queue_head(redis, queue, now=now)
    if front:
        head -= len(jobs)
    script = redis.register_script(scripts.ENQUEUE)
    scores = fair_scores(head, len(jobs))
    prefix = [job_key_prefix, result_key_prefix, retry_key_prefix, str(now), str(JOB_TTL_MS)]
    added = 0
    try:
        for first in range(0, len(jobs), batch):
            args: list[Any] = list(prefix)
            for job, score in zip(jobs[first : first + batch], scores[first : first + batch], strict=True):
                args += [job.id, job.done_member or "", str(score), job.payload(now)]
            added += int(await script(keys=[queue, done_key], args=args))
    except RedisError as exc:
        raise QueueError(f"cannot enqueue jobs on {queue}: {exc}") from exc
    return added


async def enqueue_ranges(
    redis: Redis,
    queue: str,
    download_id: str,
    ranges: Sequence[Range],
    *,
    front: bool = False,
    cells: tuple[int, int] | None = None,
) -> int:
    """Enqueue the range jobs of ``ranges`` that are not done, queued or running; returns how many.

    With ``cells`` (the download's size and ``DownloadSpec.job_bytes``), one
    job per job cell (``job_cells``); without, one job per range (ranges sent back).

    Raises:
        QueueError: Redis failed.
    """
    if cells is None:
        jobs = [range_job(download_id, r) for r in ranges]
    else:
        jobs = [cell_job(download_id, span, todo) for span, todo in job_cells(*cells, ranges)]
    return await enqueue_jobs(redis, queue, jobs, done_key=download_key(download_id, "done"), front=front)


async def enqueue_finalizer(redis: Redis, queue: str, download_id: str) -> bool:
    """Enqueue the download's finalizer at the front of the queue; ``False`` if one is queued or running.

    Raises:
        QueueError: Redis failed.
    """
    done_key = download_key(download_id, "done")
    return bool(await enqueue_jobs(redis, queue, [finalize_job(download_id)], done_key=done_key, front=True))


async def remove_jobs(redis: Redis, queue: str, job_ids: Iterable[str], *, batch: int = BATCH) -> int:
    """Take the jobs ``job_ids`` off ``queue`` unless a worker is running them; returns how many went.

    Raises:
        QueueError: Redis failed.
    """
    script = redis.register_script(scripts.REMOVE)
    ids = list(job_ids)
    removed = 0
    try:
        for first in range(0, len(ids), batch):
            args = [job_key_prefix, in_progress_key_prefix, retry_key_prefix, *ids[first : first + batch]]
            removed += int(await script(keys=[queue], args=args))
    except RedisError as exc:
        raise QueueError(f"cannot remove jobs from {queue}: {exc}") from exc
    return removed


async def restore_place(redis: Redis, queue: str, job_id: str, score: object) -> None:
    """Put a running job back at the score arq started it with (``score``, from arq's ctx): see "Running jobs".

    Never raises: a place not given back only makes the job due one lease later.
    """
    if not isinstance(score, int):
        return
    try:
        async with asyncio.timeout(RESTORE_TIMEOUT):
            await redis.zadd(queue, {job_id: score}, xx=True)
    except (RedisError, TimeoutError) as exc:
        logging.getLogger(__name__).debug("job %s: queue place not restored: %s", job_id, exc)
