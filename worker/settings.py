"""arq worker settings built from ``rangefetch.Settings``, and why the numbers are what they are.

arq 0.28 facts this design rests on (arq/worker.py)
----------------------------------------------------
* A worker that picks a job sets ``arq:in-progress:<id>`` for *the largest
  function timeout of the worker + 10 s*; a job whose worker is SIGKILLed
  runs again only when that key has expired.
* A job that reaches its timeout is a **permanent** failure: the job is
  deleted, not retried.  ``Retry`` and ``CancelledError`` re-queue it.
* Every worker reads ``ZRANGEBYSCORE queue -inf now LIMIT 0 queue_read_limit``
  from offset 0, and running jobs stay in that sorted set until they end.
* ``Retry(defer=0)`` leaves the job's score alone (the job keeps its place);
  ``Retry(defer=d)`` moves it to ``now + d``.

What we choose
--------------
* **Range jobs run at most ``jobs.budget`` (40 s)**, then save their
  progress and continue as a fresh job (``Retry(defer=0)``, same place in
  the queue).  Their arq timeout, ``jobs.timeout`` (120 s), leaves room for
  the final fsync and for hashing a range of up to 64 MiB on a slow shared
  volume; a hard stop at 90 % of it turns any overrun into a retry as well.
  So a slow but healthy range is never killed, however slow it is.
* **The finalizer** may hash the whole file (when no early verifier did it
  during the download), which can take minutes, so it gets
  ``jobs.finalize_timeout`` (1 h).  With arq's rule that would keep
  every job of a SIGKILLed worker locked for an hour.  Instead the worker's
  ``in_progress_timeout_s`` is set to ``jobs.lease`` (20 s) and every
  running job renews its own in-progress key each ``lease / 4`` seconds
  (``runtime.Lease``); connection slots and the finalizer guard are leases
  of the same length.  A dead worker's range is therefore picked up again
  about 20 s later (plus one poll), well within a minute, and resumes from
  its recorded progress.
* **The low-speed rule** (``Settings.low_speed``, 1 KiB/s over 30 s) runs
  in every range job, and a run that brought less than the rule asks for
  its time (one window at most) is a run without progress
  (``worker.jobs``), so a trickle fails after ``jobs.max_attempts`` runs
  even when a run is shorter than the rule's window.
* **Stragglers** hand their range off (``worker.handoff``): a run far
  slower than the download's other runs in its worker ends as at its
  budget (``Retry(defer=0)``, same place in the queue) and the range goes
  on from its last recorded byte over another connection; at most
  ``handoff.MAX_HANDOFFS`` times per range, so a server slow for every
  connection causes no ping-pong.
* **``max_tries``** is set out of reach: slot waits and budget continuations
  are retries too, and our own count (runs in a row without progress,
  ``jobs.max_attempts``) decides when a range has failed.
* **``queue_read_limit``** is ``2 * cluster_size * worker_concurrency`` (at
  least 100): the running jobs of the whole cluster sit at the head of
  what every worker reads, so with a smaller limit the cluster could never
  run more jobs than the limit.  The margin covers jobs of dead workers
  whose leases have not lapsed yet.
* **SIGTERM**: arq cancels the running jobs; each fsyncs and records its
  bytes, releases its slots and re-raises, and arq re-queues it at its old
  place.  No work is lost and, progress being absolute, none is counted twice.
* **Fairness**: ``rangefetch.distributed.queue`` interleaves downloads in the queue
  and puts finalizers and redone ranges at its front.  Here, jobs that
  find no connection slot are deferred by a jittered
  ``jobs.slot_wait`` (so they do not hold worker slots), a download that
  holds its fair share of a busy host yields new slots to one that waits
  (``Store.acquire_fair``), and budget continuations keep their place.

The dict from ``worker_settings()`` holds arq ``Worker`` keyword arguments;
``create_worker()`` builds the ``Worker`` and applies the lease.  Running
arq's own CLI on that dict would skip the lease: use ``rangefetch worker``.
Its ``redis_settings`` fail every call until their ``RedisLink`` has
reached Redis (``rangefetch.distributed.connections``): ``worker.cli.serve`` opens the
pool through the link and hands it to the ``Worker`` as ``redis_pool``.
"""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.worker import Worker, func

from rangefetch import Settings
from rangefetch.distributed.connections import redis_settings
from rangefetch.distributed.queue import FETCH_RANGE, FINALIZE

from .finalize import finalize_job, sweep_job
from .jobs import fetch_range_job
from .runtime import SETTINGS_KEY, shutdown, startup

__all__ = ["MAX_TRIES", "SWEEP", "create_worker", "queue_read_limit", "worker_settings"]

MAX_TRIES = 1_000_000  # out of reach: our own attempt count decides failure
SWEEP = "sweep"
SWEEP_SECONDS = {0, 30}
# arq refills a freed job slot only at its next poll: ``start_jobs`` returns
# as soon as the worker is full, then the loop sleeps ``poll_delay``.  So the
# delay is idle connection time after every range (arq's 0.5 s default cost
# about 0.25 s a range, measured by bench/overhead.py); an idle poll is one
# ZRANGEBYSCORE, cheap at 20 a second.
POLL_DELAY = 0.05


def queue_read_limit(settings: Settings) -> int:
    """How many due jobs each poll reads: twice the cluster's job slots, at least 100."""
    return max(100, 2 * settings.distributed.cluster_size * settings.distributed.worker_concurrency)


def worker_settings(settings: Settings, *, burst: bool = False) -> dict[str, Any]:
    """arq ``Worker`` keyword arguments for ``settings``.

    Raises:
        UsageError: no Redis URL is configured, or it is malformed.
    """
    jobs = settings.distributed.jobs
    return {
        "functions": [
            func(fetch_range_job, name=FETCH_RANGE, timeout=jobs.timeout, keep_result=0, max_tries=MAX_TRIES),
            func(finalize_job, name=FINALIZE, timeout=jobs.finalize_timeout, keep_result=0, max_tries=MAX_TRIES),
        ],
        "cron_jobs": [cron(sweep_job, name=SWEEP, second=SWEEP_SECONDS, timeout=jobs.timeout, max_tries=1)],
        "queue_name": settings.distributed.queue_name,
        "redis_settings": redis_settings(settings),
        "burst": burst,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
        "max_jobs": settings.distributed.worker_concurrency,
        "job_timeout": jobs.timeout,
        "keep_result": 0,
        "max_tries": MAX_TRIES,
        "poll_delay": POLL_DELAY,
        "queue_read_limit": queue_read_limit(settings),
        "retry_jobs": True,
        "ctx": {SETTINGS_KEY: settings},
    }


def create_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    """An arq ``Worker`` for ``settings`` whose in-progress keys are leases (see the module docstring).

    Call it inside the event loop that will run the worker: arq binds its
    signal handlers to the current loop.

    Raises:
        UsageError: no Redis URL is configured, or it is malformed.
    """
    worker = Worker(**{**worker_settings(settings, burst=burst), **overrides})
    worker.in_progress_timeout_s = settings.distributed.jobs.lease
    return worker
