"""``rangefetch get --dry-run`` (aria2c's ``--dry-run``, wget's ``--spider``): probe, plan, create nothing.

For each file ``dry_run`` probes the server (``HEAD``, or a ``GET`` of byte
0) and works out what a real run would do: the output path (from ``-o``,
``out=`` or the name the server suggests), what happens to a file already
there (``sink.existing_output``, the rule ``download()`` applies), and the
plan (``plan.choose_chunk_size``, as ``download()`` chooses it).  It creates
no directory and no file, and fetches no range.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .batch import Entry
from .client import make_client
from .display import format_bytes
from .download import output_candidates
from .errors import RangefetchError
from .names import resolve_output
from .plan import check_chunk_size, choose_chunk_size, plan_ranges
from .probe import RemoteFile, probe
from .redact import redact_url
from .retry import Backoff
from .settings import Settings
from .sink import PartFile, existing_output

__all__ = ["Preview", "dry_run", "format_preview"]


@dataclass(slots=True)
class Preview:
    """What ``--dry-run`` learned about one file, and what a real run would do with it."""

    entry: Entry
    remote: RemoteFile | None = None
    path: Path | None = None
    action: str = ""  # what happens at the output path: "create", "skip", "refuse", ...
    chunk_size: int | None = None
    ranges: int = 0
    connections: int = 0
    notes: list[str] = field(default_factory=list)
    error: RangefetchError | None = None

    def summary(self) -> dict[str, Any]:
        """The ``--dry-run --json`` object."""
        remote = self.remote
        return {
            "url": redact_url(self.entry.url),
            "ok": self.error is None,
            "error": str(self.error) if self.error is not None else None,
            "final_url": redact_url(remote.final_url) if remote else None,
            "size": remote.size if remote else None,
            "accepts_ranges": remote.ranges if remote else None,
            "etag": remote.etag if remote else None,
            "last_modified": remote.last_modified if remote else None,
            "path": str(self.path) if self.path else None,
            "action": self.action or None,
            "chunk_size": self.chunk_size,
            "ranges": self.ranges,
            "connections": self.connections,
            "notes": self.notes,
        }


async def dry_run(
    entries: Sequence[Entry],
    *,
    settings: Settings,
    headers: Mapping[str, str] | None = None,
    allow_overwrite: bool = False,
) -> list[Preview]:
    """Probe each entry and plan it as a real run would, creating nothing; one ``Preview`` each, in order.

    Only the probe reaches the server (``HEAD``, or ``GET`` of byte 0).

    Raises:
        UsageError: a bad chunk size, or the client cannot be built; nothing was requested.
    """
    check_chunk_size(settings.chunk_size)
    previews = [Preview(e) for e in entries]
    async with contextlib.aclosing(make_client(settings)) as client:
        for preview in previews:
            try:
                await _preview(preview, client, settings, headers, allow_overwrite)
            except RangefetchError as exc:
                preview.error = exc
    return previews


async def _preview(
    preview: Preview,
    client: httpx.AsyncClient,
    settings: Settings,
    headers: Mapping[str, str] | None,
    allow_overwrite: bool,
) -> None:
    entry = preview.entry
    base = Path(entry.directory or ".")
    dest = resolve_output(base, entry.output, confine=False) if entry.output else None
    remote = preview.remote = await probe(client, entry.url, headers=headers, backoff=Backoff(settings.retry))
    dest = preview.path = dest or resolve_output(base, None, candidates=output_candidates(remote), confine=True)
    found = await asyncio.to_thread(existing_output, dest, size=remote.size, last_modified=remote.last_modified)
    if found is None:
        preview.action = "create"
    elif allow_overwrite:
        preview.action = "replace"
    elif found.same:
        preview.action = "skip"
        preview.notes.append(f"already complete: it {found.why}")
    elif entry.checksum is not None and found.size == remote.size:
        preview.action = "check"
        preview.notes.append("a file of this size is there: skipped if it matches the checksum, else kept and refused")
    else:
        preview.action = "refuse"
        preview.notes.append(f"a file is there that {found.why}: it is kept (--allow-overwrite replaces it)")
    part = PartFile(dest)
    if preview.action not in ("skip", "refuse") and part.part.exists() and part.record.exists():
        preview.notes.append(f"{part.part.name} is there: resumed if it is still the same remote file")
    if remote.size is None or (remote.size > 0 and not remote.ranges):
        preview.ranges, preview.connections = 1, 1
        preview.notes.append("the server does not take ranges: one stream")
    elif remote.size > 0:
        chunk = preview.chunk_size = choose_chunk_size(remote.size, settings.connections, requested=settings.chunk_size)
        preview.ranges = len(plan_ranges(remote.size, chunk))
        preview.connections = min(settings.connections, preview.ranges)


def format_preview(preview: Preview) -> str:
    """A ``--dry-run`` report of one file, a few aligned lines."""
    remote = preview.remote
    lines = [redact_url(preview.entry.url)]

    def add(name: str, value: str) -> None:
        lines.append(f"  {name:<10} {value}")

    if preview.error is not None:
        add("error", str(preview.error))
        return "\n".join(lines)
    assert remote is not None
    if remote.final_url != remote.url:
        add("final URL", redact_url(remote.final_url))
    add("size", "unknown" if remote.size is None else f"{remote.size} bytes ({format_bytes(remote.size)})")
    add("ranges", "yes" if remote.ranges else "no")
    validators = [f"ETag {remote.etag}"] if remote.etag else []
    validators += [f"Last-Modified {remote.last_modified}"] if remote.last_modified else []
    add("validator", ", ".join(validators) or "none (a rerun cannot resume)")
    add("output", f"{preview.path} ({_ACTIONS[preview.action]})")
    if preview.chunk_size is not None:
        plan = f"{_count(preview.ranges, 'range')} of {format_bytes(preview.chunk_size)}, "
        plan += _count(preview.connections, "connection")
    elif preview.ranges:
        plan = "one stream, 1 connection"
    else:
        plan = "nothing to fetch (empty file)"
    add("plan", plan)
    for note in preview.notes:
        add("note", note)
    return "\n".join(lines)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


_ACTIONS = {
    "create": "would be created",
    "replace": "exists: would be replaced",
    "skip": "exists: would be skipped",
    "check": "exists: would be checked against the checksum",
    "refuse": "exists: would be kept, and this file not downloaded",
}
