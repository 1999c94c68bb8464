"""The finalizer job, and the sweep that makes sure every finished download gets one.

``finalize_job(ctx, download_id)`` runs once per download after its last
range is done.  When an early verifier (``worker.verifier``) holds the
download's lease, the job returns at once: the verifier has read the ranges
as they finished and runs the same steps (``finalize``) with what it found.

1. **Exactly once.**  Its job id is deterministic (``keys.finalize_job_id``),
   so arq holds at most one queued or running finalizer per download, and
   it takes the Redis guard (``Store.claim_finalizer``) before doing
   anything; a second finalizer that gets past the job id (a sweep right
   after the first finished, say) finds the guard taken or the download no
   longer running and returns.  The guard is a lease renewed while the
   finalizer runs, holding the run's own token (``Lease.token``), so a
   finalizer killed with its worker is redone, and one whose guard lapsed
   (its process stopped for longer than a lease, say) finds out: it
   renames, completes, fails or sends back nothing once its lease is in
   doubt (``Lease.check``), and leaves the download to the guard's holder.
2. **Verify.**  Every planned range must be in the ``done`` set.  The
   ``.part`` file must have the download's size.  One sequential pass over
   the file (in a thread; or the early verifier's, made as the ranges
   finished) yields each range's digest, the whole file's sha256 and, when
   ``spec.checksum`` asks for one, the digest it names.
3. **Ranges that fail verification** (their bytes on the shared volume no
   longer match the digest the range job recorded) are fetched again:
   ``Store.redo``, state back to ``running``, the guard released, and their
   range jobs enqueued.  A range redone more than
   ``Settings.distributed.max_verify_retries`` times fails the download instead.
4. **Checksum mismatch** fails the download: the remote file is not what
   the user asked for, or the ``--checksum`` was mistyped.  The verified
   ``.part`` file is kept with its ranges marked done, and the message says
   so, when enqueuing again can tell it is the same remote file (an ETag or
   Last-Modified to compare): enqueued again with the right ``--checksum``,
   the download is only verified, no range fetched again
   (``producer.enqueue``).  Without a validator it is removed.
5. **All good**: ``PartFile.commit()`` renames ``.part`` to the final name
   and fsyncs the directory; the download becomes ``complete`` with its
   sha256.  As in embedded mode, the rename never replaces a file that is
   already at the final name: the download fails instead (``OutputExistsError``),
   its verified ``.part`` kept.  If a finalizer dies between the rename and that state change,
   the next one verifies the renamed file against the range digests and
   completes it.

The finalizer and the ranges it sends back are enqueued at the front of the
queue (``rangefetch.distributed.queue``, ``front=True``): they finish a download, and
must not wait behind another download's backlog.

The sweep (an arq cron job every 30 s, deduplicated across workers) looks at
every running download: when all its ranges are done it enqueues the
finalizer (a worker may have died between the last ``mark_done`` and the
enqueue, or the enqueue may have met a finalizer that was just finishing),
and otherwise it re-enqueues range jobs that arq lost (expired, or dropped
after a timeout), so no download waits forever.  It does the same for a
download that has been queued for ``QUEUED_GRACE`` seconds: one whose jobs
were lost before any ran (say a resume raced the exit of a job of the
cancelled download, and its job id was still taken) would otherwise stay
queued forever.  The grace leaves a producer that is still writing the jobs
alone; were they to overlap, nothing would happen twice, as job ids are
deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from arq.constants import job_key_prefix
from redis.exceptions import RedisError

from rangefetch import (
    Checksum,
    DownloadError,
    PartFile,
    QueueError,
    StateError,
    VerificationError,
    plan_ranges,
    resolve_output,
)
from rangefetch.display import format_bytes
from rangefetch.distributed.queue import enqueue_finalizer, enqueue_ranges, job_ids_of
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import DownloadSpec
from rangefetch.plan import Range

from .downloads import active_spec, fail, log_started
from .files import Hashed, check_size, hash_file, open_for_reading
from .lease import HARD_STOP_MARGIN, Lease, LeaseLost
from .runtime import Runtime

__all__ = ["QUEUED_GRACE", "count_redos", "finalize", "finalize_job", "sweep_job"]

log = logging.getLogger(__name__)

QUEUED_GRACE = 60.0  # seconds a download may stay queued before the sweep looks for its lost jobs


async def finalize_job(ctx: dict[str, Any], download_id: str) -> None:
    """arq job ``finalize``: verify download ``download_id``, rename it into place, mark it complete.

    With a live early verifier (``worker.verifier``) the job leaves the
    download to it: the verifier finishes it with what it already hashed.

    Raises:
        arq.Retry: Redis failed, or the guard's lease was lost; try again later.
        RangefetchError: verification failed for good; already recorded on the download.
    """
    rt = Runtime.of(ctx)
    async with rt.job(ctx) as lease:
        try:
            if rt.settings.distributed.jobs.verify_early and await rt.store.verifier(download_id):
                log.debug("download %s: its verifier is finishing it", download_id)
                return
            await finalize(rt, lease, download_id)
        except LeaseLost as exc:
            log.warning("finalizer of %s: %s; leaving the download to the guard's holder", download_id, exc)
            raise lease.give_up() from None
        except QueueError as exc:
            retry = rt.redis_retry(lease)
            if retry is None:
                log.debug("finalizer of %s: %s; too often in a row: the sweep enqueues it again", download_id, exc)
                return
            log.debug("finalizer of %s: %s; retrying", download_id, exc)  # the link says Redis is away, once
            raise retry from exc


async def finalize(rt: Runtime, lease: Lease, download_id: str, *, hashed: Hashed | None = None) -> bool:
    """Verify ``download_id`` holding its guard, and rename it into place; ``False`` if the guard is taken.

    ``hashed``: the range and whole-file digests an early verifier already
    read from the file; without it, the file is hashed here in one pass.

    Raises:
        QueueError: Redis failed.
        LeaseLost: ``lease`` (with the guard) lapsed or was taken; nothing was changed since.
        RangefetchError: verification failed for good; already recorded on the download.
    """
    store = rt.store
    try:
        found = await active_spec(store, download_id)
        if found is None:
            return True
        if not await store.claim_finalizer(download_id, lease.token, ttl=rt.settings.distributed.jobs.lease):
            log.debug("download %s: another finalizer holds the guard", download_id)
            return False
        lease.guard = download_id
        try:
            limit = rt.settings.distributed.jobs.finalize_timeout * (1 - HARD_STOP_MARGIN)
            async with asyncio.timeout(limit) as deadline:
                await _finalize(rt, lease, *found, hashed)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise VerificationError(
                f"verifying took longer than {limit:.0f}s; raise RANGEFETCH_DISTRIBUTED__JOBS__FINALIZE_TIMEOUT"
            ) from exc
        finally:
            lease.guard = None
            await _release(rt, download_id, lease.token)
    except (QueueError, LeaseLost):
        raise
    except Exception as exc:
        lease.check()  # a finalizer that lost its guard leaves the verdict to the one that holds it
        if await fail(store, download_id, exc):
            raise
    return True


async def _finalize(rt: Runtime, lease: Lease, spec: DownloadSpec, state: DownloadState, hashed: Hashed | None) -> None:
    store = rt.store
    planned = plan_ranges(spec.size, spec.chunk_size)
    done = await store.done_ranges(spec.id)
    missing = [r for r in planned if r not in done]
    if missing:
        # A stale trigger, or a redo cut short: fetch what is missing.
        log.debug("download %s: %d ranges are not done yet", spec.id, len(missing))
        lease.check()
        if state is DownloadState.VERIFYING:
            await store.set_state(spec.id, DownloadState.RUNNING)
        await _release(rt, spec.id, lease.token)
        await enqueue_ranges(rt.redis, rt.settings.distributed.queue_name, spec.id, missing, front=True)
        return
    if state is not DownloadState.VERIFYING:
        if await store.set_state(spec.id, DownloadState.VERIFYING) is DownloadState.QUEUED:
            log_started(spec)  # nothing to fetch (an empty file, or every range kept): it starts here
    part = PartFile(resolve_output(rt.download_dir, spec.path, confine=True))
    source = await asyncio.to_thread(_source, part, renamed_ok=state is DownloadState.VERIFYING)
    checksum = Checksum.parse(spec.checksum) if spec.checksum else None
    algorithms = {"sha256"} | ({checksum.algorithm} if checksum else set())
    if hashed is not None and len(hashed.digests) == len(planned) and algorithms <= hashed.whole.keys():
        await asyncio.to_thread(_check_size, source, spec.size)
    else:
        hashed = await hash_file(source, spec.size, planned, algorithms)
    recorded = await store.digests(spec.id)
    bad = [r for r, digest in zip(planned, hashed.digests, strict=True) if recorded.get(r) != digest]
    lease.check()  # what follows acts on the verdict: only the guard's holder may
    if bad:
        await _redo(rt, lease, spec, bad)
        return
    whole = hashed.whole
    if checksum is not None:
        try:
            checksum.check(whole)
        except VerificationError as exc:
            kept = _kept(spec, part, source)
            if kept is None:
                await asyncio.to_thread(part.discard)
                raise
            raise VerificationError(f"{exc}; {kept}") from exc
    if source == part.part:
        await asyncio.to_thread(part.commit, last_modified=spec.last_modified)  # never over another file
    await store.set_state(spec.id, DownloadState.COMPLETE, sha256=whole["sha256"])
    log.info("download %s complete: %s (sha256 %s)", spec.id, spec.path, whole["sha256"])


def _kept(spec: DownloadSpec, part: PartFile, source: Path) -> str | None:
    """What to tell the user about the verified file a checksum mismatch leaves, or ``None``: remove it.

    It is kept, its ranges still marked done, when enqueuing again can tell
    it is the same remote file (``producer.enqueue`` compares the ETag or
    Last-Modified, else it starts over) and it is the ``.part`` file, not
    the final one a finalizer that died renamed.
    """
    if spec.size == 0 or source != part.part or not (spec.etag or spec.last_modified):
        return None
    return (
        f"kept the downloaded {spec.path}.part ({format_bytes(spec.size)}) and its finished ranges: "
        "enqueue it again with the right --checksum to verify it without downloading again"
    )


async def _redo(rt: Runtime, lease: Lease, spec: DownloadSpec, bad: list[Range]) -> None:
    """Send ``bad`` ranges back to be fetched, or fail once one was redone too often.

    Raises:
        VerificationError: a range failed verification more than ``max_verify_retries`` times.
    """
    await count_redos(rt, spec, bad)
    await rt.store.set_state(spec.id, DownloadState.RUNNING)
    # Released before the enqueue, so the finalizer those ranges trigger finds the guard free.
    await _release(rt, spec.id, lease.token)
    await enqueue_ranges(rt.redis, rt.settings.distributed.queue_name, spec.id, bad, front=True)


async def count_redos(rt: Runtime, spec: DownloadSpec, bad: list[Range]) -> None:
    """Forget that ``bad`` ranges were done, counting each redo; the caller enqueues them again.

    Raises:
        VerificationError: a range failed verification more than ``max_verify_retries`` times.
    """
    store, limit = rt.store, rt.settings.distributed.max_verify_retries
    worst: tuple[Range, int] | None = None
    for rng in bad:
        count = await store.redo(spec.id, rng)
        if count > limit and (worst is None or count > worst[1]):
            worst = (rng, count)
    if worst is not None:
        rng, count = worst
        raise VerificationError(f"range {rng} failed verification {count} times", range=rng)
    log.warning("download %s: %d ranges failed verification; fetching them again", spec.id, len(bad))


async def _release(rt: Runtime, download_id: str, owner: str) -> None:
    try:
        await rt.store.release_finalizer(download_id, owner)
    except QueueError as exc:  # it is a lease: it lapses by itself
        log.debug("finalizer of %s: %s", download_id, exc)


def _check_size(path: Path, size: int) -> None:
    fd = open_for_reading(path)
    try:
        check_size(fd, size, name=path.name)
    finally:
        os.close(fd)


def _source(part: PartFile, *, renamed_ok: bool) -> Path:
    """The file to verify: the ``.part``, or the final file a finalizer renamed before it died.

    Raises:
        DownloadError: neither exists.
    """
    if part.part.is_file():
        return part.part
    if renamed_ok and part.final.is_file():
        return part.final
    raise DownloadError(f"part file missing: {part.part.name}")


async def sweep_job(ctx: dict[str, Any]) -> None:
    """arq cron job ``sweep``: a finalizer for every finished download, and lost range jobs back."""
    rt = Runtime.of(ctx)
    async with rt.job(ctx):
        for download_id in await rt.store.list_ids():
            try:
                await _sweep_one(rt, download_id, now=time.time())
            except (QueueError, RedisError, StateError) as exc:
                log.warning("sweep: download %s: %s", download_id, exc)


async def _sweep_one(rt: Runtime, download_id: str, *, now: float) -> None:
    store, queue = rt.store, rt.settings.distributed.queue_name
    data = await store.get(download_id)
    if data is None:
        return
    state = DownloadState(data["state"])
    if state is DownloadState.QUEUED:
        since = float(data.get("updated") or data.get("created") or 0)
        if now - since < QUEUED_GRACE:
            return
    elif state not in (DownloadState.RUNNING, DownloadState.VERIFYING):
        return
    spec = await store.spec(download_id)
    if spec is None:
        return
    if await store.done_count(download_id) >= spec.ranges:
        if await enqueue_finalizer(rt.redis, queue, download_id):
            log.info("sweep: enqueued the finalizer of download %s", download_id)
        return
    if state is not DownloadState.VERIFYING:
        lost = await _lost_ranges(rt, spec)
        if lost:
            added = await enqueue_ranges(rt.redis, queue, download_id, lost, cells=(spec.size, spec.job_bytes))
            log.warning(
                "sweep: %s download %s: %d ranges had no job; %d enqueued", state, download_id, len(lost), added
            )


async def _lost_ranges(rt: Runtime, spec: DownloadSpec) -> list[Range]:
    """Ranges that are neither done nor have an arq job (queued, deferred or running)."""
    done = await rt.store.done_ranges(spec.id)
    todo = [r for r in plan_ranges(spec.size, spec.chunk_size) if r not in done]
    if not todo:
        return []
    async with rt.redis.pipeline(transaction=False) as pipe:
        for r in todo:
            pipe.exists(*(job_key_prefix + i for i in job_ids_of(spec.id, spec.size, spec.job_bytes, r)))
        exists = await pipe.execute()
    return [r for r, e in zip(todo, exists, strict=True) if not e]
