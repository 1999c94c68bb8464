"""Showing progress on a terminal (a rich bar) or in logs (plain lines).

While the tracker holds a retry note and no byte has arrived since, both
show it where the speed would be: "retrying in 4 s (HTTP 503)".  Plain
lines come every ``PLAIN_INTERVAL`` seconds, and at once for a new note.

Several downloads at once (``rangefetch.batch``) are shown as a ``Board``:
one bar, or one plain line, per running file, with the lines the batch
prints (a file done, a file failed) above the bars.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING, TextIO

from .progress import Tracker

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

__all__ = ["Board", "format_bytes", "show_board", "show_progress"]

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


def _columns() -> tuple[ProgressColumn, ...]:
    """The bar's columns: label, bar, bytes, the speed (or the retry under way), ETA."""
    # rich only for a terminal: importing it costs ~45 ms of CPU per run.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
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

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        SpeedOrRetry("{task.fields[retry]}", style="yellow", markup=False),
        TimeRemainingColumn(),
    )


async def _bar(tracker: Tracker, label: str, stream: TextIO) -> None:
    from rich.console import Console
    from rich.progress import Progress

    def update() -> None:
        retry = tracker.retry()
        bar.update(task, total=tracker.total, completed=tracker.done, retry=str(retry) if retry else "")

    with Progress(*_columns(), console=Console(file=stream), transient=False) as bar:
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


class Board:
    """The downloads of a batch on screen: a row (label, tracker) per running file, and lines above them."""

    def __init__(self) -> None:
        self.rows: dict[Hashable, tuple[str, Tracker]] = {}
        self._print: Callable[[str], None] = _printer(sys.stderr)

    def add(self, key: Hashable, label: str, tracker: Tracker) -> None:
        """Show ``tracker`` as ``label`` until ``remove(key)``."""
        self.rows[key] = (label, tracker)

    def remove(self, key: Hashable) -> None:
        self.rows.pop(key, None)

    def say(self, line: str) -> None:
        """Print ``line`` (above the bars on a terminal), ``-q`` or not."""
        self._print(line)


def _printer(stream: TextIO) -> Callable[[str], None]:
    return lambda line: print(line, file=stream, flush=True)


@contextlib.asynccontextmanager
async def show_board(board: Board, *, quiet: bool = False, stream: TextIO | None = None) -> AsyncIterator[None]:
    """Show ``board`` while the body runs: a bar per row on a terminal, plain lines otherwise, none if ``quiet``."""
    stream = stream or sys.stderr
    board._print = _printer(stream)
    if quiet:
        yield
        return
    runner = asyncio.create_task(_board_bars(board, stream) if stream.isatty() else _board_lines(board, stream))
    try:
        yield
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        board._print = _printer(stream)


async def _board_bars(board: Board, stream: TextIO) -> None:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    tasks: dict[Hashable, TaskID] = {}

    def update() -> None:
        for key in [k for k in tasks if k not in board.rows]:
            bar.remove_task(tasks.pop(key))
        for key, (label, tracker) in list(board.rows.items()):
            if key not in tasks:
                tasks[key] = bar.add_task(label, total=None, retry="")
            retry = tracker.retry()
            bar.update(tasks[key], total=tracker.total, completed=tracker.done, retry=str(retry) if retry else "")

    with Progress(*_columns(), console=Console(file=stream), transient=False) as bar:
        board._print = lambda line: bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        try:
            while True:
                update()
                await asyncio.sleep(0.2)
        finally:
            update()


async def _board_lines(board: Board, stream: TextIO) -> None:
    shown: dict[Hashable, tuple[float, int]] = {}  # row -> (when its last line was printed, retries seen then)
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for key, (label, tracker) in list(board.rows.items()):
            speed = tracker.speed()
            last, seen = shown.setdefault(key, (now, tracker.retries))
            fresh = tracker.retries != seen and tracker.retry() is not None
            if fresh or now - last >= PLAIN_INTERVAL:
                shown[key] = (time.monotonic(), tracker.retries)
                print(plain_line(label, tracker, speed), file=stream, flush=True)
        for key in [k for k in shown if k not in board.rows]:
            del shown[key]
