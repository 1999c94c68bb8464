"""A range job's or verifier's claims in Redis, renewed together: ``Lease``.

Everything a running job claims in Redis is a lease that lapses unless it is
renewed: arq's ``arq:in-progress:<job id>`` key, the job's connection slots
and the finalizer guard (an early verifier's claims: its verifier lease and,
while it finishes, the guard).  ``Lease`` holds one run's claims and renews
them together every quarter lease (``Runtime.job()`` for jobs), so when a
worker is SIGKILLed its jobs, slots and guard are free again
``Settings.distributed.jobs.lease`` seconds later, whatever the jobs' timeouts are
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
import secrets
import time
from typing import TYPE_CHECKING

from arq import Retry
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

from rangefetch import QueueError

if TYPE_CHECKING:  # the runtime holds the leases' Redis and settings; it imports this module
    from .runtime import Runtime

__all__ = ["HARD_STOP_MARGIN", "Lease", "LeaseLost"]

log = logging.getLogger(__name__)

HARD_STOP_MARGIN = 0.1  # a job's hard stop comes this share of its arq timeout before it


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
        self.expires = since + runtime.settings.distributed.jobs.lease  # time.monotonic() the claims may lapse at
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
        return Retry(defer=self.runtime.settings.distributed.jobs.lease)

    async def renew(self) -> bool:
        """Extend every claim by one lease; ``False`` (and the lease is lost for good) if one had lapsed or was taken.

        Raises:
            QueueError: Redis failed (the claims are not extended, nor known to be lost).
        """
        sent = time.monotonic()
        if self.lost:
            return False
        if await self._renew_all(self.runtime.settings.distributed.jobs.lease):
            self.expires = max(self.expires, sent + self.runtime.settings.distributed.jobs.lease)
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
                    queue = rt.settings.distributed.queue_name
                    pipe.zadd(queue, {self.job_id: round(time.time() * 1000) + ms}, xx=True)
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
        interval = self.runtime.settings.distributed.jobs.lease / 4
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
