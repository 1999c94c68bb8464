"""Live progress of distributed downloads: ``rangefetch status --watch``.

On a terminal, one rich progress bar per download (its file name, id and
state, then the columns of ``rangefetch get``'s bar: percent, bytes, speed,
ETA, connections, and the ranges); elsewhere (logs, pipes),
a status line per download every few seconds; with ``--json``, one JSON
record per download and poll (JSON lines).  Watching ends when every watched
download is finished.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, TaskID

from rangefetch.display import bar_columns
from rangefetch.distributed.state import DownloadState
from rangefetch.distributed.store import Store

from .monitor import POLL_INTERVAL, file_name, format_status, retry_note, statuses

__all__ = ["watch"]

PLAIN_INTERVAL = 5.0  # seconds between plain status lines


async def watch(
    store: Store,
    ids: Sequence[str],
    *,
    stream: TextIO,
    as_json: bool = False,
    interval: float = POLL_INTERVAL,
) -> list[dict[str, Any]]:
    """Show the downloads ``ids`` (all when empty) until all are finished; returns their last records.

    Raises:
        UsageError: an id is unknown.
        QueueError: Redis failed.
    """
    if as_json:
        return await _json_lines(store, ids, stream, interval)
    if stream.isatty():
        return await _bars(store, ids, stream, interval)
    return await _lines(store, ids, stream, max(interval, PLAIN_INTERVAL))


def _all_finished(records: list[dict[str, Any]]) -> bool:
    return all(DownloadState(r["state"]).finished for r in records)


async def _json_lines(store: Store, ids: Sequence[str], stream: TextIO, interval: float) -> list[dict[str, Any]]:
    while True:
        records = await statuses(store, ids)
        for record in records:
            print(json.dumps(record, sort_keys=True), file=stream, flush=True)
        if _all_finished(records):
            return records
        await asyncio.sleep(interval)


async def _lines(store: Store, ids: Sequence[str], stream: TextIO, interval: float) -> list[dict[str, Any]]:
    while True:
        records = await statuses(store, ids)
        for record in records:
            print(format_status(record).splitlines()[0], file=stream, flush=True)
        if _all_finished(records):
            return records
        await asyncio.sleep(interval)


async def _bars(store: Store, ids: Sequence[str], stream: TextIO, interval: float) -> list[dict[str, Any]]:
    tasks: dict[str, TaskID] = {}
    # The label is the file's name (up to 32), its id (16) and its state (9).
    with Progress(*bar_columns(name_width=60), console=Console(file=stream), transient=False) as bar:
        while True:
            records = await statuses(store, ids)
            for r in records:
                label = f"{file_name(r)}  {r['gid']} {r['state']:<9}"
                ranges = f"{r['rangesDone']}/{r['numPieces']} ranges"
                if r["rangesFailed"]:
                    ranges += f", {r['rangesFailed']} failed"
                retry = retry_note(r)
                ended = DownloadState(r["state"]).finished  # no speed, ETA nor connections to show
                if r["gid"] not in tasks:
                    tasks[r["gid"]] = bar.add_task(label, total=r["totalLength"])
                bar.update(
                    tasks[r["gid"]], description=label, completed=r["completedLength"],
                    retry=str(retry) if retry else "", speed=None if ended else r["downloadSpeed"], eta=r["eta"],
                    conn=None if ended else r["connections"], extra=ranges,
                )  # fmt: skip
            if _all_finished(records):
                return records
            await asyncio.sleep(interval)
