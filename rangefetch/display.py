"""Showing progress on a terminal (a rich bar) or in logs (plain lines).

While the tracker holds a retry note and no byte has arrived since, both
show it where the speed would be: "retrying in 4 s (HTTP 503)".  Plain
lines come every ``PLAIN_INTERVAL`` seconds, and at once for a new note.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

from .progress import Tracker

__all__ = ["format_bytes", "show_progress"]

PLAIN_INTERVAL = 5.0


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plain_line(label: str, tracker: Tracker, speed: float) -> str:
    """One progress line for logs: bytes, percent, speed and ETA, or the retry under way."""
    done = format_bytes(tracker.done)
    if tracker.total:
        done += f" / {format_bytes(tracker.total)} ({100 * tracker.done / tracker.total:.0f}%)"
    retry = tracker.retry()
    if retry is not None:
        return f"{label}: {done}, {retry}"
    eta = tracker.eta(speed)
    tail = f", ETA {eta:.0f}s" if eta is not None else ""
    return f"{label}: {done}, {format_bytes(speed)}/s{tail}"


@contextlib.asynccontextmanager
async def show_progress(
    tracker: Tracker, label: str, *, quiet: bool = False, stream: TextIO | None = None
) -> AsyncIterator[None]:
    """Show ``tracker`` while the body runs: a bar on a terminal, lines otherwise, nothing if ``quiet``."""
    stream = stream or sys.stderr
    if quiet:
        yield
        return
    if stream.isatty():
        task = _bar(tracker, label, stream)
    else:
        task = _lines(tracker, label, stream)
    # Not a TaskGroup: it would wrap the body's own errors in an ExceptionGroup.
    runner = asyncio.create_task(task)
    try:
        yield
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _bar(tracker: Tracker, label: str, stream: TextIO) -> None:
    # rich only for a terminal: importing it costs ~45 ms of CPU per run.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        Task,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    speed = TransferSpeedColumn()

    class SpeedOrRetry(TextColumn):
        """The speed, or the retry under way while no byte arrives."""

        def render(self, task: Task) -> Text:
            return super().render(task) if task.fields.get("retry") else speed.render(task)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        SpeedOrRetry("{task.fields[retry]}", style="yellow", markup=False),
        TimeRemainingColumn(),
    )

    def update() -> None:
        retry = tracker.retry()
        bar.update(task, total=tracker.total, completed=tracker.done, retry=str(retry) if retry else "")

    with Progress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=None, retry="")
        try:
            while True:
                update()
                await asyncio.sleep(0.2)
        finally:
            update()


async def _lines(tracker: Tracker, label: str, stream: TextIO) -> None:
    last = time.monotonic()
    seen = tracker.retries
    while True:
        await asyncio.sleep(1.0)
        speed = tracker.speed()
        fresh = tracker.retries != seen and tracker.retry() is not None
        if fresh or time.monotonic() - last >= PLAIN_INTERVAL:
            last, seen = time.monotonic(), tracker.retries
            print(plain_line(label, tracker, speed), file=stream, flush=True)
