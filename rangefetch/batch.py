"""Many files in one command: ``rangefetch get URL... [-i FILE] [-j N]``.

``parse_input`` reads aria2c's input file format (pure): one URL a line,
``#`` comments and blank lines skipped, and indented ``out=``, ``dir=`` and
``checksum=`` lines for the URL above them.  ``collect`` joins those entries
with the URLs and ``-o``/``-d``/``--checksum`` of the command line, and
refuses what cannot work (``-o`` with several URLs, a bad line) before any
request.  ``run_batch`` runs the downloads, at most ``jobs`` at once, in one
``asyncio.TaskGroup``: a file that fails is reported and the others go on,
the good ones kept.  (``--dry-run`` is ``rangefetch.dryrun``.)

**One connection budget.**  ``-c N`` is the number of connections the whole
command has open at once, not N per file: every download gets the same
``asyncio.Semaphore(N)`` (``download(budget=...)``) and one httpx client (one
pool, so a server's connections carry on from file to file).  Each request
holds a slot while it runs (the probe; each range, with its retries), and a
download's fetchers take a slot before they take a range: a file running
alone has all N, files running together share them first come first served
(the semaphore wakes its waiters in order).  Splitting N among the running
files instead would leave connections idle whenever a file has fewer ranges
left than its share, which is the tail of every file and the whole of a small
one.  The budget is the command's, whichever servers the files are on.

``-j`` defaults to 5, aria2c's ``--max-concurrent-downloads``.  With the one
budget it does not multiply connections: it bounds how many files are open
(probed, their ``.part`` allocated) at once, enough that small files (a range
or two each) keep the connections busy, few enough that an interrupted batch
leaves few partial files.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from .client import check_url, make_client
from .display import Board, format_bytes, show_board, show_progress
from .download import DownloadResult, download
from .errors import RangefetchError, UsageError
from .names import filename_from_url, resolve_output
from .progress import Tracker
from .redact import redact_url
from .settings import Settings
from .verify import Checksum

__all__ = [
    "DEFAULT_JOBS",
    "Entry",
    "Outcome",
    "collect",
    "parse_input",
    "read_input",
    "run_batch",
]

DEFAULT_JOBS = 5  # files at once: aria2c's --max-concurrent-downloads default (see above)
OPTIONS = ("out", "dir", "checksum")  # what an input file may say about a URL


@dataclass(frozen=True, slots=True)
class Entry:
    """One file to fetch: its URL, where it goes, and what it must hash to."""

    url: str
    output: str | None = None  # relative to ``directory``
    directory: str | None = None
    checksum: Checksum | None = None
    origin: str = ""  # where it was given, for messages: "list.txt line 3"; "" for the one URL of a command line

    def explain(self, exc: UsageError) -> UsageError:
        """``exc`` with where this entry was given in front of its message."""
        return type(exc)(f"{self.origin}: {exc}" if self.origin else str(exc))

    @property
    def label(self) -> str:
        """A short name for the display: the output's name, else the URL's file name."""
        if self.output:
            return Path(self.output).name
        return filename_from_url(self.url) or redact_url(self.url)


def read_input(name: str, *, stdin: TextIO | None = None) -> str:
    """The text of the input file ``name`` (``-``: standard input).

    Raises:
        UsageError: it cannot be read, or is not UTF-8 text.
    """
    try:
        if name == "-":
            return (stdin or sys.stdin).read()
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the input file {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"the input file {name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def parse_input(text: str, *, source: str = "input file") -> list[Entry]:
    """The entries of an input file in aria2c's format (``aria2c -i``).

    A line that starts with a non-blank character is a URL; an indented
    ``NAME=VALUE`` line below it sets ``out`` (the file name, relative to
    ``dir``), ``dir`` (the directory) or ``checksum`` (``ALGO=HEX``, aria2c's
    ``sha-256=HEX`` too) for that URL.  Blank lines and lines whose first
    non-blank character is ``#`` are skipped.

    Raises:
        UsageError: a line that is none of these, naming ``source`` and the line.
    """
    entries: list[Entry] = []
    options: dict[str, str] = {}
    url: tuple[str, str] | None = None  # (url, where)

    def flush() -> None:
        if url is not None:
            entries.append(_entry(url[0], options, url[1]))

    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        where = f"{source} line {number}"
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[0] in " \t":
            if url is None:
                raise UsageError(f"{where}: an indented option line before any URL")
            name, sep, value = line.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not value:
                raise UsageError(f"{where}: {line!r} is not NAME=VALUE")
            if name not in OPTIONS:
                raise UsageError(f"{where}: unknown option {name!r} (out=, dir= and checksum= are supported)")
            if name in options:
                raise UsageError(f"{where}: {name}= is given twice for one URL")
            options[name] = value
            continue
        flush()
        if any(c.isspace() for c in line):
            raise UsageError(f"{where}: one URL a line (URLs separated by blanks, aria2c's mirrors, are not supported)")
        url, options = (line, where), {}
    flush()
    return entries


def _entry(url: str, options: Mapping[str, str], where: str) -> Entry:
    """An entry from an input file's URL line and its option lines.

    Raises:
        UsageError: a bad URL or checksum, naming ``where``.
    """
    try:
        url = check_url(url)  # as curl reads it
        checksum = Checksum.parse(options["checksum"]) if "checksum" in options else None
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from exc
    return Entry(url, options.get("out"), options.get("dir"), checksum, where)


def collect(
    urls: Sequence[str],
    entries: Sequence[Entry] = (),
    *,
    output: str | None = None,
    directory: str | None = None,
    checksum: Checksum | None = None,
) -> list[Entry]:
    """The files one command fetches: ``urls`` from the command line, then ``entries`` from an input file.

    ``output`` (``-o``) and ``checksum`` (``--checksum``) name one file, so
    they need exactly one; ``directory`` (``-d``) is where every file without
    its own ``dir=`` goes.  Outputs the user named are checked here (a name
    that can never work), before any request.

    Raises:
        UsageError: no URL, a bad one, ``-o`` or ``--checksum`` with several
            files, ``-o`` with ``-d``, or two entries for the same file.
    """
    if output is not None and directory is not None:
        raise UsageError("use either -o PATH or -d DIR, not both")
    given = [Entry(check_url(u), origin=f"URL {redact_url(u)}" if len(urls) > 1 else "") for u in urls]
    found = [*given, *entries]
    if not found:
        raise UsageError("no URL given: rangefetch get URL [URL...] or -i FILE")
    for flag, value, own in (("-o", output, "out="), ("--checksum", checksum, "checksum=")):
        if value is None:
            continue
        if len(found) > 1:
            raise UsageError(f"{flag} is for one file: with several, give each its own {own} line in an input file")
        if (found[0].output if flag == "-o" else found[0].checksum) is not None:
            raise UsageError(f"{flag} and {own} both given for {redact_url(found[0].url)}")
    if output is not None:
        found[0] = replace(found[0], output=output)
    if checksum is not None:
        found[0] = replace(found[0], checksum=checksum)
    found = [e if e.directory is not None else replace(e, directory=directory) for e in found]
    seen: dict[object, Entry] = {}
    for entry in found:
        key: object = (entry.url, entry.directory)
        if entry.output is not None:
            try:
                key = resolve_output(Path(entry.directory or "."), entry.output, confine=False)
            except UsageError as exc:
                raise entry.explain(exc) from exc
        if key in seen:
            raise UsageError(f"{entry.origin or 'a URL'}: the same file as {seen[key].origin or 'a URL'}")
        seen[key] = entry
    return found


@dataclass(slots=True)
class Outcome:
    """How one file of a batch ended: its ``result``, or the ``error`` it failed with."""

    entry: Entry
    result: DownloadResult | None = None
    error: RangefetchError | None = None
    seconds: float = 0.0
    retries: int = 0

    def summary(self) -> dict[str, Any]:
        """The ``get --json`` object: path, size, sha256, seconds, MB/s, connections, retries, ok/error."""
        r = self.result
        fetched = r.size - r.resumed if r is not None else 0
        return {
            "url": redact_url(self.entry.url),
            "ok": self.error is None,
            "error": str(self.error) if self.error is not None else None,
            "path": str(r.path) if r is not None else None,
            "size": r.size if r is not None else None,
            "sha256": r.sha256 if r is not None else None,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(fetched / self.seconds / 1e6, 3) if fetched > 0 and self.seconds > 0 else None,
            "connections": r.connections if r is not None else 0,
            "retries": self.retries,
            "resumed": r.resumed if r is not None else 0,
            "already_complete": r.already_complete if r is not None else False,
        }


async def run_batch(
    entries: Sequence[Entry],
    *,
    settings: Settings,
    headers: Mapping[str, str] | None = None,
    jobs: int = DEFAULT_JOBS,
    allow_overwrite: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> list[Outcome]:
    """Download ``entries``, ``jobs`` at a time, sharing ``settings.connections``; one ``Outcome`` each, in order.

    A failed file is one ``Outcome`` with its error (reported on ``stream``
    as it happens, when there are several); the others go on.  One entry is
    downloaded as ``rangefetch get URL`` always did: its own client, its own
    connections, one progress bar.

    Raises:
        UsageError: the client cannot be built (a CA file); nothing was fetched.
    """
    outcomes = [Outcome(e) for e in entries]
    common: dict[str, Any] = {"settings": settings, "headers": headers, "allow_overwrite": allow_overwrite}
    if len(outcomes) == 1:
        outcome = outcomes[0]
        tracker = Tracker()
        async with show_progress(tracker, "rangefetch", quiet=quiet, stream=stream):
            await _fetch(outcome, tracker, **common)
        if outcome.result is not None and outcome.result.already_complete and not quiet:
            print(f"rangefetch: {outcome.result.path} is already complete", file=stream or sys.stderr, flush=True)
        return outcomes
    files = asyncio.Semaphore(jobs)
    if jobs > 1:
        common["budget"] = asyncio.Semaphore(settings.connections)
    board = Board()
    client = make_client(settings)
    try:
        async with show_board(board, quiet=quiet, stream=stream), asyncio.TaskGroup() as tg:
            for key, outcome in enumerate(outcomes):
                tg.create_task(_one(key, outcome, files, board, quiet, client=client, **common))
    finally:
        await client.aclose()
    return outcomes


async def _one(key: int, outcome: Outcome, files: asyncio.Semaphore, board: Board, quiet: bool, **kw: Any) -> None:
    """Fetch one file of a batch once a file slot is free, on the board meanwhile; say how it ended."""
    async with files:
        tracker = Tracker()
        board.add(key, outcome.entry.label, tracker)
        try:
            await _fetch(outcome, tracker, **kw)
        finally:
            board.remove(key)
    r, label = outcome.result, outcome.entry.label
    if outcome.error is not None:
        board.say(f"rangefetch: error: {label}: {outcome.error}")
    elif r is not None and not quiet:
        if r.already_complete:
            board.say(f"rangefetch: {r.path} is already complete")
        else:
            speed = (r.size - r.resumed) / outcome.seconds if outcome.seconds > 0 else 0.0
            board.say(f"rangefetch: done {r.path} ({format_bytes(r.size)}, {format_bytes(speed)}/s)")


async def _fetch(outcome: Outcome, tracker: Tracker, **kw: Any) -> None:
    """``download()`` one entry into ``outcome``: its result, or the error it ended with."""
    entry = outcome.entry
    began = time.monotonic()
    try:
        outcome.result = await download(
            entry.url,
            entry.output,
            directory=Path(entry.directory or "."),
            checksum=entry.checksum,
            tracker=tracker,
            **kw,
        )
    except RangefetchError as exc:
        outcome.error = exc
    finally:
        outcome.seconds = time.monotonic() - began
        outcome.retries = tracker.retries
