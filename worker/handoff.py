"""Stragglers in distributed mode: a range run far slower than its peers hands its range to a fresh connection.

One connection served at 100 kB/s while the others get many MB/s held its
whole range to the end, and the download took 17.8x as long (issue #9,
item 6).  Embedded mode splits the slowest range for an idle connection
(``rangefetch.segments``); here a *run* of a range job that is far slower
than the runs beside it stops, keeps what it wrote, and gives the range back
to the queue, so the rest comes over another connection.

Why a hand-off, not a split or a duplicate
------------------------------------------
In distributed mode the planned range is what everything else is built on:
its arq job id, its absolute progress in Redis, its CRC-32 digest taken as
the bytes are written, the done set that the early verifier follows in file
order and the finalizer checks against the plan (``plan_ranges``), the sweep
that re-enqueues ranges without a job, and the lease that lets one run at a
time own the range.  Three ways were weighed:

* **Split** (aria2c, axel: a freed connection takes half of the largest
  range left).  Ranges would need ends that move in Redis while their owner
  writes, and the plan would no longer be ``plan_ranges(size, chunk)``: the
  done set, the digests, the verifier's order, the finalizer's and the
  sweep's checks for missing ranges, enqueue's done check and ``status``
  would all have to follow a plan that changes under them, racing the run
  whose end moves.  Every one of those is a place to lose a range.
* **Duplicate the tail** (Surge: near the end an idle connection fetches
  the slowest range's rest too, and the first to finish wins).  Two runs
  writing one range at once breaks "one run owns a range" (the lease, the
  progress that never goes backwards, the digest of the bytes as written),
  and the bytes come twice.
* **Hand-off** (chosen).  The range stays one unit of work; only the
  connection changes.  This is what every run already does when its time
  budget is used (``worker.jobs``): stop the fetch (cancelling mid-body
  closes the connection, as httpcore keeps a connection only after a
  complete response), fsync and record the progress, and raise
  ``Retry(defer=0)``.  The job keeps its place in the queue, whose score
  (from when it was enqueued) is ahead of every range of the download still
  queued, and the next run, on any worker, on an idle or fresh connection,
  resumes from the recorded bytes, reading them back once to seed the
  digest.  Leases, owner tokens and the progress rule are untouched, so it
  can neither write a wrong byte nor lose a range.  Redis gains one counter.

What it fixes: a slow *connection* (a congested path, a per-connection
shaper, one bad backend behind a load balancer): the straggler of a
download from one URL.  What it does not: a slow *worker host* (its runs
are all alike, so none is slow next to its peers) and a slow *range* (a
server slow at some offset for every connection: the count below stops
that).

The rule (``Pace.slow``)
------------------------
Each worker process keeps, per download, its live runs (bytes this run
fetched, when its first byte came) and the speed and first-byte latency of
its last ``RECENT`` runs that ended normally.  Every ``TICK`` seconds a run
asks, without a Redis command:

1. **Typical speed**: the median speed of the live peers (other runs of the
   download in this worker, fetching for ``MIN_AGE`` or more) when there
   are ``MIN_PEERS`` of them, as they measure the server *now*; else the
   median of the recent runs, once there are ``MIN_PEERS``.  Otherwise
   there is nothing to compare with, and the run goes on.
2. **Far slower**: its own speed since its first byte, once it has fetched
   for ``MIN_AGE``, is below typical / ``SLOWER``.  A run with no byte yet
   counts as speed 0 once it has waited ``STALL_LATENCIES`` times the
   typical first-byte latency, and at least ``MIN_STALL``.
3. **Worth a request**: finishing at its own speed would take ``MIN_SAVING``
   longer than a fresh connection's latency plus the rest at the typical
   speed.  A range nearly done is left to finish.

Time a run spends waiting for the download's own rate limit
(``rangefetch.ratelimit``) is ours, not the server's, and is left out of
its speed (``RunPace.held``).

The rule is not held back until the download's end: a slow connection
holds one of the download's connection slots however much is queued
behind it, and handing it back mid-download costs the same one request as
at the end and frees the slot sooner.

No ping-pong.  On a uniformly slow server every run is alike, so none is
far slower.  Whatever the cause, a range is handed off at most
``MAX_HANDOFFS`` times per enqueue (``Store.count_handoff``: one HINCRBY
when the rule says yes, never per chunk or tick); after that its runs stay
on their connection, and a run refused once does not ask again.  Runs that
handed off are not kept as samples.

What it gave (one worker of 8 jobs, 8 connections, the test server's
``straggle=100000`` on 127.0.0.1, single runs on a busy 2-core machine): an
8 MiB file took 11.0 s before and 1.2 s after; 40 MB took 1.24 s against
0.87 s without the straggler (1.4x; the target is 3x), and with every
connection at 170 kB/s and the straggler at 17 kB/s, 32.0 s against
32.6 s (the target is 1.2x).  The straggler sent 60 kB and 10 kB of its
range.

Where it falls short: a worker running one job at a time has no live
peers, and compares only with its own earlier runs of the download (the
first has nothing to compare with); such a cluster's straggler is still
cut short by the run's budget (``Settings.distributed.jobs.budget``), which ends
every run and its connection after 40 s.  And when a server slows down
for everyone mid-download, such a worker's history still says fast: each
range it runs may be handed off up to ``MAX_HANDOFFS`` times (a request
each, no byte lost) until its recent runs catch up.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "MAX_HANDOFFS",
    "MIN_AGE",
    "MIN_PEERS",
    "MIN_SAVING",
    "MIN_STALL",
    "RECENT",
    "SLOWER",
    "STALL_LATENCIES",
    "TICK",
    "Pace",
    "RunPace",
]

TICK = 0.25  # seconds between a run's looks at its pace (local: no Redis command)
MIN_AGE = 0.5  # seconds a run fetches before its speed is trusted
MIN_PEERS = 2  # speeds needed to call one typical
SLOWER = 4.0  # a straggler is this many times slower than typical
MIN_SAVING = 1.0  # seconds a hand-off must save: a new request, a poll, reading back the head, with a margin
MIN_STALL = 2.0  # seconds without a first byte before a run counts as stalled...
STALL_LATENCIES = 4.0  # ...and this many typical first-byte latencies
RECENT = 8  # finished runs per download whose speeds are kept
MIN_SAMPLE = 64 * 1024  # bytes a finished run must have fetched to be a sample
MAX_HANDOFFS = 2  # hand-offs per range per enqueue: a third slow connection for one range says it is the server
BOOKS = 64  # downloads a worker keeps speeds for


class RunPace:
    """One live run of a range: what it fetched, and when.

    ``fetched`` and ``first`` are updated by the run as bytes come (``arrived``);
    the hot path adds one number and, for the first byte only, reads the clock.
    ``held`` is set by the run before it is judged: the seconds it waited for
    the download's own rate limit (``rangefetch.ratelimit``), which are not
    the server's doing and do not count against its speed.
    """

    __slots__ = ("clock", "fetched", "first", "held", "since")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since = clock()  # the fetch began (request not yet sent)
        self.first: float | None = None  # the first byte came
        self.fetched = 0  # bytes this run fetched
        self.held = 0.0  # seconds it waited for our rate limit since the first byte

    def arrived(self, n: int) -> None:
        """``n`` more bytes came."""
        if self.first is None:
            self.first = self.clock()
        self.fetched += n

    def speed(self, now: float) -> float | None:
        """Bytes a second since the first byte (not counting ``held``), or ``None`` while younger than ``MIN_AGE``."""
        if self.first is None:
            return None
        fetching = now - self.first - self.held
        return self.fetched / fetching if fetching >= MIN_AGE else None


@dataclass
class _Book:
    """One download's runs in this worker: the live ones, and (speed, latency) of recent ones."""

    live: set[RunPace] = field(default_factory=set)
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RECENT))


class Pace:
    """The speeds of this worker's range runs, per download: what ``slow`` compares a run with.

    Plain bookkeeping on one event loop; the clock is injected.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._books: OrderedDict[str, _Book] = OrderedDict()

    def start(self, download_id: str) -> RunPace:
        """A new live run of one of ``download_id``'s ranges."""
        run = RunPace(self.clock)
        self._book(download_id).live.add(run)
        return run

    def finish(self, download_id: str, run: RunPace, *, sample: bool) -> None:
        """``run`` ended; with ``sample`` (it ended normally) its speed and latency join the recent ones."""
        book = self._book(download_id)
        book.live.discard(run)
        now = self.clock()
        fetching = now - run.first - run.held if run.first is not None else 0.0
        if sample and run.first is not None and run.fetched >= MIN_SAMPLE and fetching > 0:
            book.recent.append((run.fetched / fetching, run.first - run.since))

    def slow(self, download_id: str, run: RunPace, *, left: int) -> bool:
        """Whether ``run``, with ``left`` bytes of its range to go, should hand the range off (module docstring)."""
        book = self._books.get(download_id)
        if book is None or left <= 0:
            return False
        now = self.clock()
        typical = self._typical(book, run, now)
        if typical is None:
            return False
        speed, latency = typical
        if run.first is None:
            waited = now - run.since
            return waited >= max(MIN_STALL, STALL_LATENCIES * latency)
        own = run.speed(now)
        if own is None or own * SLOWER >= speed:
            return False
        at_own = left / own if own > 0 else float("inf")
        return at_own - (latency + left / speed) >= MIN_SAVING

    def _typical(self, book: _Book, run: RunPace, now: float) -> tuple[float, float] | None:
        """(speed, first-byte latency) a fresh run can expect: live peers first, else recent runs."""
        peers = [s for p in book.live if p is not run and (s := p.speed(now)) is not None]
        latencies = [p.first - p.since for p in book.live if p is not run and p.first is not None]
        if len(peers) < MIN_PEERS:
            if len(book.recent) < MIN_PEERS:
                return None
            peers = [s for s, _ in book.recent]
            latencies = [lat for _, lat in book.recent]
        speed = statistics.median(peers)
        if speed <= 0:
            return None
        return speed, statistics.median(latencies) if latencies else 0.0

    def _book(self, download_id: str) -> _Book:
        book = self._books.get(download_id)
        if book is None:
            book = self._books[download_id] = _Book()
            while len(self._books) > BOOKS:
                oldest = next(iter(self._books))
                if self._books[oldest].live:
                    break
                del self._books[oldest]
        else:
            self._books.move_to_end(download_id)
        return book
