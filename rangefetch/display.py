"""Showing progress on a terminal (a rich bar) or in logs (plain lines).

A bar reads: name, bar, percent, bytes, speed, ETA, connections open, and
retries so far (when any), in binary units (``bar_columns``)::

    data.bin ━━━━━━━━━━━━╺━━━━━━━━━━━━━━━━━━━━━━━━━━━ 33% 64.0/192.0 MiB 12.5 MiB/s ETA 10s 4 conn, 2 retries

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
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING, Any, TextIO

from .progress import Tracker

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

__all__ = ["Board", "bar_columns", "bar_fields", "format_bytes", "format_duration", "show_board", "show_progress"]

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


def bar_columns(*, name_width: int = 32) -> tuple[ProgressColumn, ...]:
    """The bar's columns: name, bar, percent, bytes, speed (or the retry under way), ETA, connections, retries.

    Bytes and speed are in binary units, as the plain lines: ``64.0/286.1
    MiB  33.4 MiB/s``.  A task's fields give what rich cannot know:
    ``retry`` (the note, or ""), ``speed`` (``None``: the download ended
    short of its end, and neither speed nor ETA is shown), ``eta`` (or ``None``),
    ``conn`` (connections open, or ``None`` to leave it out), ``retries``,
    and ``extra`` (text at the end of the row, or "").  A longer name than
    ``name_width`` is cut short with an ellipsis.
    """
    # rich only for a terminal: importing it costs ~45 ms of CPU per run.
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, Task, TaskProgressColumn, TextColumn
    from rich.table import Column
    from rich.text import Text

    class Speed(ProgressColumn):
        """The speed, or the retry under way while no byte arrives."""

        def render(self, task: Task) -> Text:
            retry = task.fields.get("retry")
            if retry:
                return Text(retry, style="yellow")
            speed = task.fields.get("speed", 0)
            if speed is None:  # not moving, nor meant to (a download that ended)
                return Text("")
            return Text(f"{format_bytes(speed)}/s" if speed else "- MiB/s", style="progress.data.speed")

    class Eta(ProgressColumn):
        def render(self, task: Task) -> Text:
            eta = task.fields.get("eta")
            if task.finished:
                return Text("done", style="progress.remaining")
            if eta is None and task.fields.get("speed", 0) is None:
                return Text("")
            left = format_duration(math.ceil(eta)) if eta is not None else "-"  # 0.4 s left is "1s", not "0s"
            return Text(f"ETA {left}", style="progress.remaining")

    class Links(ProgressColumn):
        """Connections open now (until done), retries so far (when any), and the row's extra text."""

        def render(self, task: Task) -> Text:
            conn, retries, extra = task.fields.get("conn"), task.fields.get("retries", 0), task.fields.get("extra")
            words = [] if conn is None or task.finished else [f"{conn} conn"]
            if retries:
                words.append(f"{retries} {'retry' if retries == 1 else 'retries'}")
            if extra:
                words.append(extra)
            return Text(", ".join(words))

    # Every column but the bar keeps its text on one line; the bar takes
    # what room is left (10 to 40 cells), so a narrow terminal shrinks it first.
    def fixed() -> Column:
        return Column(no_wrap=True)

    return (
        TextColumn(
            "{task.description}",
            markup=False,
            table_column=Column(no_wrap=True, overflow="ellipsis", max_width=name_width),
        ),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10, max_width=40)),
        TaskProgressColumn(table_column=fixed()),
        DownloadColumn(binary_units=True, table_column=fixed()),
        Speed(table_column=fixed()),
        Eta(table_column=fixed()),
        Links(table_column=fixed()),
    )


def format_duration(seconds: float) -> str:
    """``seconds`` as ``45s``, ``3m05s`` or ``2h01m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def bar_fields(tracker: Tracker, label: str) -> dict[str, Any]:
    """What a bar of ``tracker`` shows now (``Progress.update`` arguments; see ``bar_columns``)."""
    retry = tracker.retry()
    speed = tracker.speed()
    return {
        "description": tracker.name or label,
        "total": tracker.total,
        "completed": tracker.done,
        "retry": str(retry) if retry else "",
        "speed": speed,
        "eta": tracker.eta(speed),
        "conn": tracker.connections,
        "retries": tracker.retries,
    }


async def _bar(tracker: Tracker, label: str, stream: TextIO) -> None:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*bar_columns(), console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=None)
        try:
            while True:
                bar.update(task, **bar_fields(tracker, label))
                await asyncio.sleep(0.2)
        finally:
            bar.update(task, **bar_fields(tracker, label))


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
                tasks[key] = bar.add_task(label, total=None)
            bar.update(tasks[key], **bar_fields(tracker, label))

    with Progress(*bar_columns(), console=Console(file=stream), transient=False) as bar:
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
