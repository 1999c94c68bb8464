"""Watching and steering distributed downloads: status, wait, cancel, workers.

Everything is read through ``Store``; request headers are never read here,
URLs are shown redacted, and error text coming back from the workers is
scrubbed of the download's URL in case a message quoted it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from rangefetch import CancelledDownloadError, DownloadError, Settings, UsageError, plan_ranges, redact_url
from rangefetch.display import format_bytes, format_duration
from rangefetch.distributed.keys import finalize_job_id, range_job_id, state_channel
from rangefetch.distributed.queue import job_cells, remove_jobs
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store, WorkerInfo
from rangefetch.progress import RetryNote, Tracker

__all__ = [
    "cancel",
    "file_name",
    "follow",
    "format_status",
    "format_workers",
    "outcome",
    "retry_note",
    "status",
    "statuses",
    "tracking",
    "worker_record",
]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between refreshes of `status --watch`
FOLLOW_INTERVAL = 0.25  # seconds between progress polls of `wait` and `get --redis`; state changes wake them at once
NO_WORKERS_AFTER = 10.0  # seconds a download may wait before "no live workers" is said


async def status(store: Store, download_id: str, *, now: float | None = None) -> dict[str, Any]:
    """The status record of one download (aria2 ``tellStatus`` names where they fit).

    Raises:
        UsageError: there is no such download.
        QueueError: Redis failed.
    """
    record = await store.status(download_id, now=now)
    data = await store.get(download_id)
    if record is None or data is None:
        raise UsageError(f"no download {download_id}")
    if record["errorMessage"]:
        record["errorMessage"] = scrub(record["errorMessage"], (data["url"], data.get("final_url", "")))
    return record


async def statuses(store: Store, ids: Sequence[str] = (), *, now: float | None = None) -> list[dict[str, Any]]:
    """The status records of ``ids``, or of every known download, oldest first."""
    ids = list(ids) or await store.list_ids()
    return [await status(store, i, now=now) for i in ids]


def scrub(text: str, urls: Iterable[str]) -> str:
    """``text`` with each of ``urls`` (and its password and user name) replaced by its redacted form."""
    for url in sorted(filter(None, urls), key=len, reverse=True):
        text = text.replace(url, redact_url(url))
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        for secret in (parts.password, parts.username):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "REDACTED")
    return text


def format_status(record: dict[str, Any]) -> str:
    """A download's status as a few lines of text."""
    total, done = record["totalLength"], record["completedLength"]
    head = [
        record["gid"],
        file_name(record),
        f"{record['state']:<9}",
        f"{record['percent']:5.1f}%",
        f"{format_bytes(done)} / {format_bytes(total)}",
    ]
    if record["downloadSpeed"]:
        head.append(f"{format_bytes(record['downloadSpeed'])}/s")
    if record["eta"] is not None:
        head.append(f"ETA {format_duration(record['eta'])}")
    retry = retry_note(record)
    if retry is not None:
        head.append(str(retry))
    lines = [
        "  ".join(head),
        f"  ranges:  {record['rangesDone']}/{record['numPieces']} done, "
        f"{record['rangesInFlight']} in flight, {record['rangesFailed']} failed",
        f"  url:     {record['url']}",
        f"  path:    {record['path']}",
    ]
    if record["verifiedLength"] and record["state"] in ("running", "verifying"):
        lines.append(f"  verified: {format_bytes(record['verifiedLength'])} in order, as ranges finish")
    if record["workers"]:
        lines.append(f"  workers: {', '.join(record['workers'])}")
    if record["errorMessage"]:
        lines.append(f"  error:   {record['errorMessage']}")
    if record["sha256"]:
        lines.append(f"  sha256:  {record['sha256']}")
    return "\n".join(lines)


def file_name(record: dict[str, Any]) -> str:
    """The name of a download's file (its path's last part), for the screen."""
    return PurePosixPath(record["path"]).name or record["path"]


def tracking(tracker: Tracker) -> Callable[[dict[str, Any]], None]:
    """A ``follow`` ``on_status`` hook that mirrors the status records on ``tracker``, for ``show_progress``.

    It carries the file's name, bytes, connections open (ranges in
    flight), and each new retry wait of the workers ("retrying in 4 s (HTTP
    503)", ``Store.note_retry``), which the display shows until bytes flow.
    """
    noted: list[float] = []

    def update(record: dict[str, Any]) -> None:
        tracker.name = file_name(record)
        if tracker.total is None:
            tracker.start(record["totalLength"], record["completedLength"])
        tracker.advance(record["completedLength"] - tracker.done)
        tracker.connections = record["connections"]
        at = record.get("retryAt")
        if at is not None and at not in noted:  # a new wait: the display shows it until bytes flow
            noted[:] = [at]
            tracker.retrying(record["retryIn"], record["retryReason"])

    return update


def retry_note(record: dict[str, Any]) -> RetryNote | None:
    """The retry wait a status record shows ("retrying in 4 s (HTTP 503)"), or ``None``."""
    if record.get("retryReason") is None or record.get("retryIn") is None:
        return None
    return RetryNote(record["retryIn"], record["retryReason"])


def worker_record(info: WorkerInfo, *, now: float | None = None) -> dict[str, Any]:
    """One live worker as a JSON-ready record, with its heartbeat age in seconds."""
    now = time.time() if now is None else now
    return {**asdict(info), "age": round(max(0.0, now - info.heartbeat), 1)}


def format_workers(workers: Sequence[WorkerInfo], *, now: float | None = None) -> str:
    """The live workers as a table: id, host, pid, jobs running, last heartbeat."""
    if not workers:
        return "no live workers"
    rows = [("ID", "HOST", "PID", "JOBS", "HEARTBEAT")]
    for w in workers:
        r = worker_record(w, now=now)
        rows.append((w.id, w.host, str(w.pid), str(w.jobs), f"{r['age']:.0f}s ago"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def follow(
    store: Store,
    download_id: str,
    *,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    interval: float = FOLLOW_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Follow a download until it is finished; returns its last status record.

    The status is read every ``interval`` seconds and at once when the
    download's state changes (``keys.state_channel``), so the end is seen
    as it happens.  ``on_status`` sees every record as it is read.  A
    warning is logged once if the download waits with no live worker to run it.

    Raises:
        UsageError: there is no such download.
        QueueError: Redis failed.
    """
    began = clock()
    warned = False
    async with store.listen(state_channel(download_id)) as changed:
        while True:
            record = await status(store, download_id)
            if on_status is not None:
                on_status(record)
            state = DownloadState(record["state"])
            if state.finished:
                return record
            if not warned and clock() - began > NO_WORKERS_AFTER and not await store.workers():
                log.warning("no live workers: start some with `rangefetch worker`; download %s waits", download_id)
                warned = True
            await changed(interval)


def outcome(record: dict[str, Any]) -> None:
    """Return if the download is complete, else raise why it is not.

    Raises:
        CancelledDownloadError: it was cancelled.
        DownloadError: it failed (the message carries its last error).
    """
    state = DownloadState(record["state"])
    gid = record["gid"]
    if state is DownloadState.COMPLETE:
        return
    if state is DownloadState.CANCELLED:
        raise CancelledDownloadError(f"download {gid} was cancelled; enqueue it again to resume")
    if state is DownloadState.FAILED:
        raise DownloadError(f"download {gid} failed: {record['errorMessage'] or 'no error recorded'}")
    raise DownloadError(f"download {gid} is still {state.value}")


async def cancel(store: Store, redis: Redis, settings: Settings, download_id: str) -> int:
    """Mark a download cancelled and take its queued jobs off the queue; returns how many went.

    Jobs already running stop at their next progress check.  The ``.part``
    file and the done ranges stay, so enqueuing again resumes.

    Raises:
        UsageError: there is no such download.
        StateError: it is complete (or failed) and cannot be cancelled.
        QueueError: Redis failed.
    """
    data = await store.get(download_id)
    if data is None:
        raise UsageError(f"no download {download_id}")
    await store.set_state(download_id, DownloadState.CANCELLED, error="cancelled")
    ranges = plan_ranges(int(data["size"]), int(data["chunk_size"]))
    size, cell = int(data["size"]), int(data["chunk_size"]) * int(data.get("job_ranges") or 1)
    cells = [range_job_id(download_id, span.start, span.end) for span, _ in job_cells(size, cell, ranges)]
    singles = [range_job_id(download_id, r.start, r.end) for r in ranges]
    ids = list(dict.fromkeys([*cells, *singles, finalize_job_id(download_id)]))
    return await remove_jobs(redis, settings.distributed.queue_name, ids)
