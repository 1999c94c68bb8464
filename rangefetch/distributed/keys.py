"""Every Redis key rangefetch uses, defined in one place.

arq keeps its own keys (``arq:job:*``, ``arq:in-progress:*``,
``arq:retry:*``, ``arq:result:*`` and the queue sorted set); ours all start
with ``rangefetch:``.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_QUEUE",
    "DOWNLOADS",
    "PREFIX",
    "WORKERS",
    "done_channel",
    "download_key",
    "finalize_job_id",
    "range_job_id",
    "rate_host",
    "sem_download",
    "sem_host",
    "sem_waiters",
    "state_channel",
    "worker_key",
]

PREFIX = "rangefetch:"
DEFAULT_QUEUE = PREFIX + "queue"
DOWNLOADS = PREFIX + "downloads"  # zset: download id -> creation time
WORKERS = PREFIX + "workers"  # zset: worker id -> last heartbeat (unix seconds)

# Per download, ``download_key(id, part)``:
#   ""          hash: the download's fields (url, size, state, ...)
#   "headers"   hash: request headers (secrets: never shown)
#   "ca"        string: CA certificates (PEM) the download's servers are verified with
#   "done"      set: ranges finished and fsynced ("start-end")
#   "progress"  hash: range -> bytes fsynced so far
#   "digest"    hash: range -> digest (CRC-32 hex) of the range as written
#   "inflight"  hash: range -> worker id running it now
#   "failed"    hash: range -> last error
#   "redo"      hash: range -> times re-fetched after failing verification
#   "attempts"  hash: range -> range job runs in a row that made no progress
#   "handoffs"  hash: range -> times a run asked to hand it to a fresh connection (a straggler)
#   "workers"   set: worker ids that worked on it
#   "finalize"  string: guard so the finalizer runs once (a lease: the token of the run holding it)
#   "rate"      string: its --limit-rate schedule (GCRA's TAT, unix seconds; expires once idle)
#   "verifier"  string: lease of the worker verifying finished ranges early
#               (its owner's token, or "stopped" after it gave up)


def download_key(download_id: str, part: str = "") -> str:
    """The key of one piece of a download's state."""
    return f"{PREFIX}dl:{download_id}" + (f":{part}" if part else "")


def state_channel(download_id: str) -> str:
    """The pub/sub channel that hears of each state change of a download (the new state)."""
    return f"{PREFIX}state:{download_id}"


def done_channel(download_id: str) -> str:
    """The pub/sub channel that hears of each finished range of a download (``"start-end"``)."""
    return f"{PREFIX}done:{download_id}"


def worker_key(worker_id: str) -> str:
    """A hash describing one live worker (host, pid, jobs, heartbeat)."""
    return f"{PREFIX}worker:{worker_id}"


def sem_host(host: str) -> str:
    """The cluster-wide connection semaphore of one server host."""
    return f"{PREFIX}sem:host:{host}"


def sem_waiters(host: str) -> str:
    """Downloads waiting for a connection to ``host`` (zset: download id -> last wait), for fair shares."""
    return f"{PREFIX}sem:wait:{host}"


def sem_download(download_id: str) -> str:
    """The connection semaphore of one download (its ``--connections``)."""
    return f"{PREFIX}sem:dl:{download_id}"


def rate_host(host: str) -> str:
    """The schedule (GCRA's TAT) of the cluster-wide rate cap of one server host (``Distributed.per_host_rate``)."""
    return f"{PREFIX}rate:host:{host}"


def range_job_id(download_id: str, start: int, end: int) -> str:
    """The arq job id of a range job: deterministic, so enqueuing twice is a no-op."""
    return f"{download_id}:{start}-{end}"


def finalize_job_id(download_id: str) -> str:
    """The arq job id of a download's finalizer."""
    return f"{download_id}:finalize"
