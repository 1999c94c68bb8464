"""Showing progress on a terminal (a rich bar) or in logs (plain lines)."""

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
    """One progress line for logs: bytes, percent, speed, ETA."""
    done = format_bytes(tracker.done)
    if tracker.total:
        done += f" / {format_bytes(tracker.total)} ({100 * tracker.done / tracker.total:.0f}%)"
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=None)
        try:
            while True:
                bar.update(task, total=tracker.total, completed=tracker.done)
                await asyncio.sleep(0.2)
        finally:
            bar.update(task, total=tracker.total, completed=tracker.done)


async def _lines(tracker: Tracker, label: str, stream: TextIO) -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        speed = tracker.speed()
        if time.monotonic() - last >= PLAIN_INTERVAL:
            last = time.monotonic()
            print(plain_line(label, tracker, speed), file=stream, flush=True)
