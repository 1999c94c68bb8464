"""The early verifier: checks a download's ranges in order as they finish, so the finalizer only confirms.

Without it, the finalizer reads the whole file once the last range is done:
about 0.7 s per GiB after the download, for the digest of every range and
the file's sha256 (``worker.finalize``).  With it, one worker per download
does that reading while the other ranges are still being fetched:

* **Who.**  The first range job to finish a range of a download (when
  ``Settings.distributed.jobs.verify_early``) takes the download's verifier lease
  (``Store.claim_verifier``) and runs a ``Verifier`` in its own worker
  process, beside the arq jobs, not in a job slot, so it never costs a
  connection.  The lease is renewed every quarter lease; a worker that is
  SIGKILLed loses it ``Settings.distributed.jobs.lease`` seconds later, and the next
  finished range starts a verifier elsewhere, from byte 0.
* **What.**  For the next range in file order whose digest is recorded
  (done and fsynced), it reads the range back from the shared volume in a
  thread, computes the range's sha256 and, in a second thread, feeds the
  same bytes to the whole-file digests (sha256, and the ``--checksum``
  algorithm).  A range whose bytes no longer match the digest its range
  job recorded is taken out of the whole-file digests again (they are
  copied before each range), counted, and fetched again at the front of
  the queue; ``Settings.distributed.max_verify_retries`` redos fail the download, as in
  the finalizer.  ``status`` shows the bytes verified so far.
* **The end.**  Once every range is verified, the verifier runs the
  finalizer's own steps (``worker.finalize.finalize``) with the digests it
  has, under the same guard: the finalizer checks the size, compares each
  range's digest with the recorded one, checks the checksum and renames.
  The finalizer job the last range enqueued sees the live lease and leaves
  the download to the verifier.  Should another finalizer hold the guard,
  the verifier waits for it at most ``FINISH_WAIT`` leases: enough for the
  guard of a finalizer that died to lapse; a live one finishes the
  download itself.
* **The lease** is a ``worker.runtime.Lease`` holding the verifier lease
  (and the guard while it finishes): renewed every quarter lease, lost
  when a renewal finds it lapsed or taken, or when one lease has passed
  since the last renewal Redis confirmed (Redis failing, the process
  stopped).  Then the verifier stops: it sends no range back and finishes
  nothing.
* **When it stops early** (the download was cancelled or failed, the lease
  was lost, the worker stops, or the file could not be read), it gives the
  lease back, or marks it stopped for one lease after an error so that it
  is not restarted at once, and if every range is done it enqueues the
  finalizer, which then reads the file itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import takewhile
from pathlib import Path

from rangefetch import Checksum, QueueError, RangefetchError, VerificationError, plan_ranges
from rangefetch.distributed import keys
from rangefetch.distributed.queue import enqueue_finalizer, enqueue_ranges
from rangefetch.distributed.store import DownloadSpec
from rangefetch.plan import Range

from .downloads import fail
from .files import Hashed, hash_window_at, part_path
from .finalize import count_redos, finalize
from .lease import Lease, LeaseLost
from .runtime import Runtime, background

__all__ = ["AHEAD", "FINISH_WAIT", "POLL", "Verifier", "start_verifier"]

log = logging.getLogger(__name__)

POLL = 0.05  # seconds before the first retry of a finalizer guard held by another
WAKE = 1.0  # seconds between looks for finished ranges when no message came (``keys.done_channel``)
AHEAD = 64  # recorded digests read per look
FINISH_WAIT = 2  # leases the verifier waits at most for a finalizer guard another holds


async def start_verifier(rt: Runtime, spec: DownloadSpec) -> None:
    """Start the early verifier of ``spec`` in this worker, unless one runs (or has just stopped) somewhere.

    Raises:
        QueueError: Redis failed.
    """
    if not rt.settings.distributed.jobs.verify_early or spec.id in rt.verifiers:
        return
    since = time.monotonic()
    if await rt.store.claim_verifier(spec.id, rt.worker_id, ttl=rt.settings.distributed.jobs.lease):
        log.debug("download %s: verifying finished ranges as they come", spec.id)
        rt.run_verifier(spec.id, Verifier(rt, spec, since=since).run())


class Verifier:
    """Follows one download's finished ranges in file order; see the module docstring.

    ``since``: when its verifier lease was claimed (``time.monotonic()``).
    """

    def __init__(self, rt: Runtime, spec: DownloadSpec, *, since: float) -> None:
        self.rt, self.spec = rt, spec
        self.lease = Lease(rt, None, since=since, verifier=spec.id)

    async def run(self) -> None:
        """Verify until the download is finished or there is nothing more to do; never raises but cancellation."""
        spec, lease = self.spec, self.lease
        stopped = False  # gave up after an error: keep others off for one lease
        try:
            async with background(lease.keep(), name=f"verifier lease {spec.id}"):
                hashed = await self._follow()
                if hashed is not None and lease.valid():
                    await self._finish(hashed)
        except LeaseLost as exc:
            log.warning("verifier of %s stops: %s", spec.id, exc)
        except RangefetchError as exc:  # a failure of the download itself is already recorded (and logged)
            log.debug("verifier of %s stops: %s", spec.id, exc)
            stopped = True
        finally:
            await asyncio.shield(self._leave(stopped=stopped))

    async def _follow(self) -> Hashed | None:
        """Hash the ranges in order as they finish; ``None`` if the download stopped wanting it."""
        rt, spec, store = self.rt, self.spec, self.rt.store
        path = part_path(rt.download_dir, spec)
        planned = plan_ranges(spec.size, spec.chunk_size)
        algorithms = sorted({"sha256"} | ({Checksum.parse(spec.checksum).algorithm} if spec.checksum else set()))
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rangefetch-verify")
        try:
            async with store.listen(keys.done_channel(spec.id)) as wake:
                return await self._loop(path, planned, algorithms, wake, pool, stop)
        finally:
            stop.set()  # a cancelled read still running in its thread quits at its next block
            pool.shutdown(wait=False)

    async def _loop(
        self,
        path: Path,
        planned: list[Range],
        algorithms: list[str],
        wake: Callable[[float], Awaitable[None]],
        pool: ThreadPoolExecutor,
        stop: threading.Event,
    ) -> Hashed | None:
        """Wait for the next range in order, check it and fold it into the whole-file digests; repeat."""
        spec, store = self.spec, self.rt.store
        whole = [hashlib.new(a) for a in algorithms]
        digests: list[str] = []
        while len(digests) < len(planned):
            state = await store.state(spec.id)
            if not self.lease.valid() or state is None or state.finished:
                return None
            ahead = planned[len(digests) : len(digests) + AHEAD]
            ready = list(takewhile(bool, await store.digests_of(spec.id, ahead)))
            if not ready:
                await _wait(wake)
                continue
            for rng, recorded in zip(ahead, ready, strict=False):
                before = [h.copy() for h in whole]
                digest = await asyncio.to_thread(hash_window_at, path, rng, whole, pool, stop)
                if digest != recorded:
                    whole = before
                    await self._redo(rng)
                    break
                digests.append(digest)
                log.debug("verifier of %s: range %s verified", spec.id, rng)
                if not self.lease.valid():
                    return None
            await store.set_verified(spec.id, planned[len(digests) - 1].end + 1 if digests else 0)
        return Hashed(digests, {a: h.hexdigest() for a, h in zip(algorithms, whole, strict=True)})

    async def _redo(self, rng: Range) -> None:
        """Fetch ``rng`` again: its bytes on the volume differ from what its range job recorded.

        Raises:
            VerificationError: it failed verification too often; the download is failed.
            LeaseLost: the verifier lost its lease: the next verifier judges the range.
        """
        self.lease.check()
        try:
            await count_redos(self.rt, self.spec, [rng])
        except VerificationError as exc:
            await fail(self.rt.store, self.spec.id, exc)
            raise
        await enqueue_ranges(self.rt.redis, self.rt.settings.distributed.queue_name, self.spec.id, [rng], front=True)

    async def _finish(self, hashed: Hashed) -> None:
        """Run the finalizer's steps with ``hashed``, waiting ``FINISH_WAIT`` leases at most for another's guard.

        Raises:
            LeaseLost: the verifier lost its lease (or the guard) on the way.
        """
        give_up = time.monotonic() + FINISH_WAIT * self.rt.settings.distributed.jobs.lease
        delay = POLL
        while not await finalize(self.rt, self.lease, self.spec.id, hashed=hashed):
            self.lease.check()
            if time.monotonic() >= give_up:
                log.debug("verifier of %s: another finalizer keeps the guard; leaving the download to it", self.spec.id)
                return
            await asyncio.sleep(delay)
            delay = min(1.0, 2 * delay)

    async def _leave(self, *, stopped: bool) -> None:
        """Give the lease back (or mark it stopped); hand a download whose ranges are all done to the finalizer."""
        rt, spec, store = self.rt, self.spec, self.rt.store
        try:
            if stopped:
                await store.stop_verifier(spec.id, rt.worker_id, ttl=rt.settings.distributed.jobs.lease)
            else:
                await store.release_verifier(spec.id, rt.worker_id)
            state = await store.state(spec.id)
            if state is not None and not state.finished and await store.done_count(spec.id) >= spec.ranges:
                await enqueue_finalizer(rt.redis, rt.settings.distributed.queue_name, spec.id)
        except QueueError as exc:  # the lease lapses by itself, and the sweep enqueues the finalizer
            log.debug("verifier of %s: %s", spec.id, exc)


async def _wait(wake: Callable[[float], Awaitable[None]]) -> None:
    """Until the next finished range (or ``WAKE`` seconds); while Redis is away, a short sleep."""
    try:
        await wake(WAKE)
    except QueueError:
        await asyncio.sleep(POLL)
