"""Embedded mode: one process fetches every range of one file.

``download()`` probes, plans, runs ``connections`` fetchers (``pool.Pool``,
the same as ``Downloader``'s: each pulls the next range off a shared list, so fast connections take more
ranges, and once the list is empty an idle one splits the slowest range in
flight: ``segments.Scheduler``), checkpoints a resume record every few
seconds (whole ranges and the fetched part of each running one), then
verifies and renames.  The same ``fetch_range`` runs in the distributed workers.

A file that was fetched whole but could not be delivered (the ``--checksum``
given does not match, or the rename failed) is kept as ``NAME.part`` with a
record listing every range as done: the next run only verifies it.

A file already at the output path is never replaced without ``allow_overwrite``:
when it is this download, finished (``sink.existing_output``, or the checksum
given matches), it is only hashed; otherwise nothing is fetched (``OutputExistsError``).
Downloads run by ``rangefetch.batch`` share one connection ``budget``: each
request (the probe, then each range) holds one of its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from .client import check_url, make_client
from .display import format_bytes
from .errors import (
    DownloadError,
    NoSpaceError,
    OutputExistsError,
    TimeLimitError,
    VerificationError,
    collapse,
)
from .names import filename_from_disposition, filename_from_url, resolve_output
from .plan import MAX_RANGES, Range, check_chunk_size, choose_chunk_size, merge_ranges, missing_ranges
from .pool import Pool, RetryNote, slot
from .probe import RemoteFile, probe
from .progress import Tracker
from .record import ResumeRecord
from .retry import Backoff
from .settings import Settings
from .sink import FileWriter, PartFile, existing_output
from .verify import Checksum, PrefixHasher, hash_fd, verify_size

__all__ = ["DownloadResult", "download", "download_sync", "output_candidates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A finished, verified download.

    ``connections``: the most connections it had open at once (0 when it
    fetched nothing); ``already_complete``: it was at ``path`` from an
    earlier run and was only hashed.
    """

    path: Path
    size: int
    sha256: str
    resumed: int
    elapsed: float
    remote: RemoteFile
    connections: int = 0
    already_complete: bool = False


def output_candidates(remote: RemoteFile) -> tuple[str | None, ...]:
    """File names the server suggests, best first: Content-Disposition, then the URL paths."""
    return (
        filename_from_disposition(remote.content_disposition),
        filename_from_url(remote.final_url),
        filename_from_url(remote.url),
    )


async def download(
    url: str,
    output: str | os.PathLike[str] | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    headers: Mapping[str, str] | None = None,
    checksum: Checksum | None = None,
    tracker: Tracker | None = None,
    client: httpx.AsyncClient | None = None,
    confine: bool = False,
    allow_overwrite: bool = False,
    budget: asyncio.Semaphore | None = None,
) -> DownloadResult:
    """Download ``url`` to ``output`` (or a name the server suggests, in ``directory``).

    Args:
        url: an http:// or https:// URL.
        output: the file to write; relative paths are taken from ``directory``.
        directory: where the file goes (default: ``settings.download_dir``).
        settings: connections, chunk size, timeouts, retry policy (default:
            ``Settings.defaults()``, which reads no ``RANGEFETCH_*`` variable).
        headers: extra request headers (their values are never logged).
        checksum: an expected digest to verify the result against.
        tracker: counts progress for a display.
        client: an httpx client to use instead of one built from ``settings``.
        confine: refuse an ``output`` outside ``directory`` (names from the
            server are always confined).
        allow_overwrite: replace a file already at the output path; without
            it such a file is kept, and only skipped when it is this download.
        budget: connection slots shared with other downloads; each request
            holds one (default: ``settings.connections`` of its own).

    Raises:
        UsageError: bad URL, chunk size or output path (checked before any request).
        OutputExistsError: another file is at the output path (without ``allow_overwrite``).
        NoSpaceError: the file does not fit on its file system.
        TimeLimitError: ``settings.max_time`` ran out; the ``.part`` file and
            its record stay for a rerun to resume.
        DownloadError: the download failed; nothing is left at the final path.
    """
    settings = settings or Settings.defaults()
    url = check_url(url)
    check_chunk_size(settings.chunk_size)
    base = Path(directory) if directory is not None else settings.download_dir
    # A path the user gave is settled before the network: a name that can
    # never work fails at once, without a request.
    given = output is not None and os.fspath(output) != ""
    dest = resolve_output(base, output, confine=confine) if given else None
    own_client = client is None
    http = client or make_client(settings)
    tracker = tracker or Tracker()
    transfer: _Transfer | None = None
    try:
        # max_time bounds it all, probe included; the transfer's own cleanup
        # (the last checkpoint of the resume record) runs as it is cancelled.
        async with asyncio.timeout(settings.max_time) as deadline:
            note = RetryNote(tracker)
            async with slot(budget):
                remote = await probe(http, url, headers=headers, backoff=Backoff(settings.retry, on_retry=note))
            if dest is None:
                dest = resolve_output(base, None, candidates=output_candidates(remote), confine=True)
            tracker.name = dest.name  # for the display
            if remote.size != 0 and not remote.ranges and settings.connections > 1:
                log.warning("%s: no ranges: one connection", dest.name)
            if not allow_overwrite and (done := await _already_there(dest, remote, checksum)) is not None:
                return done
            pool = Pool(http, remote, settings, headers=headers, tracker=tracker, budget=budget)
            transfer = _Transfer(pool, dest)
            transfer.replace = allow_overwrite
            return await transfer.run(checksum)
    except OSError as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            raise TimeLimitError(_out_of_time(settings.max_time, transfer)) from exc
        # Every expected failure is translated where it happens; this keeps
        # any other one (EIO, a file system gone read-only) to one line too.
        where = f" ({exc.filename})" if exc.filename else ""
        raise DownloadError(f"file system error: {exc.strerror or exc}{where}") from exc
    finally:
        if own_client:
            await http.aclose()


async def _already_there(dest: Path, remote: RemoteFile, checksum: Checksum | None) -> DownloadResult | None:
    """The finished download already at ``dest``, hashed; ``None`` when nothing is there.

    It is this download when ``sink.existing_output`` says so, or, given a
    ``checksum``, when it has the remote size and matches the checksum.

    Raises:
        OutputExistsError: something else is there, or nothing tells it is this download.
    """
    began = time.monotonic()
    found = await asyncio.to_thread(existing_output, dest, size=remote.size, last_modified=remote.last_modified)
    if found is None:
        return None
    same, why = found.same, found.why
    digests: dict[str, str] = {}
    if same or (checksum is not None and found.size is not None and found.size == remote.size):
        digests = await _hash_file(dest, {"sha256"} | ({checksum.algorithm} if checksum else set()))
        if checksum is not None:
            same = digests[checksum.algorithm] == checksum.hexdigest
            why = f"{'matches' if same else 'does not match'} the --checksum given"
    if not same:
        raise OutputExistsError(f"{dest} already exists and {why}: not replaced (--allow-overwrite replaces it)")
    log.info("%s is already complete (it %s): not downloading it again", dest, why)
    size = found.size or 0
    return DownloadResult(dest, size, digests["sha256"], size, time.monotonic() - began, remote, already_complete=True)


async def _hash_file(path: Path, algorithms: set[str]) -> dict[str, str]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return await hash_fd(fd, algorithms)
    finally:
        os.close(fd)


def _out_of_time(seconds: float | None, transfer: _Transfer | None) -> str:
    """What to say when ``max_time`` ran out: how far it got, and what was kept for a rerun."""
    said = f"gave up after {seconds:g} s (--max-time)"
    if transfer is None:
        return f"{said}, before the download began"
    part = transfer.part
    if part.record.exists() and part.part.exists():
        return f"{said}; kept {part.part} and its record: run the same command again to resume"
    return f"{said}; nothing was kept to resume"


def download_sync(url: str, output: str | os.PathLike[str] | None = None, **kwargs: object) -> DownloadResult:
    """``download()`` for code that is not async: ``download_sync(url, "file.bin")``."""
    return asyncio.run(download(url, output, **kwargs))  # type: ignore[arg-type]


class _Transfer:
    """One download's moving parts: the part file, its writer, the ranges left."""

    def __init__(self, pool: Pool, dest: Path) -> None:
        self.pool = pool
        self.remote = pool.remote
        self.part = PartFile(dest)
        self.settings = pool.settings
        self.tracker = pool.tracker
        self.replace = False  # replace a file at the final path

    async def run(self, checksum: Checksum | None) -> DownloadResult:
        began = time.monotonic()
        remote = self.remote
        record, keep = self._resume_record()
        fd = self.part.open(remote.size, keep=keep)
        wanted = {"sha256"} | ({checksum.algorithm} if checksum else set())
        # Hashes the file while it is written, so little is left at the end.
        hasher = PrefixHasher(fd, wanted)
        try:
            hasher.start()
            async with FileWriter(fd, on_written=hasher.written) as writer:
                if record is not None:
                    for done in merge_ranges(record.ranges()):  # on disk from an earlier run
                        hasher.written(done.start, done.length)
                    size = remote.size or 0
                    todo = missing_ranges(size, record.chunk_size, record.ranges())
                    self.tracker.start(size, size - sum(r.length for r in todo))
                    if todo:
                        await self._fetch_ranges(todo, writer, record)
                    else:
                        log.info("%s is complete from an earlier run: verifying it", self.part.part)
                elif remote.size != 0:
                    self.tracker.start(remote.size)
                    size = await self.pool.stream(writer)
                    await writer.flush()
                    await asyncio.to_thread(os.ftruncate, fd, size)
                else:
                    self.tracker.start(0)
                    size = 0
            try:
                verify_size(fd, remote.size if remote.size is not None else size, url=remote.url)
            except VerificationError:
                self.part.discard()
                raise
            digests = await hasher.result()
            if checksum is not None:
                try:
                    checksum.check(digests, url=remote.url)
                except VerificationError as exc:
                    kept = await self._keep_whole(record, size, "run again with the right --checksum to check it")
                    if kept is None:
                        self.part.discard()
                        raise
                    raise VerificationError(f"{exc}; {kept}", url=remote.url) from exc
            try:
                self.part.commit(replace=self.replace, last_modified=remote.last_modified)
            except DownloadError as exc:
                exists = isinstance(exc, OutputExistsError)
                then = "run again with --allow-overwrite" if exists else "run the same command again to finish"
                kept = await self._keep_whole(record, size, then)
                kept = kept or f"the verified file stays at {self.part.part}"
                raise (OutputExistsError if exists else DownloadError)(f"{exc}; {kept}", url=remote.url) from exc
        finally:
            hasher.close()
            os.close(fd)
        elapsed = time.monotonic() - began
        return DownloadResult(
            self.part.final, size, digests["sha256"], self.tracker.resumed, elapsed, remote, self.pool.connections
        )

    async def _keep_whole(self, record: ResumeRecord | None, size: int, then: str) -> str | None:
        """Record the whole, size-verified ``.part`` as complete, so a rerun only verifies it.

        Returns what to tell the user, or ``None`` when the file cannot be
        kept for a rerun (no size or validator to check it against then, or
        the record cannot be written).
        """
        remote = self.remote
        if size == 0 or remote.size != size:
            return None
        record = record or ResumeRecord.for_remote(remote, max(size, 1))
        if record.mismatch(remote) is not None:  # a rerun could not tell it is the same file
            return None
        record.done = [str(Range(0, size - 1))]
        try:
            await asyncio.to_thread(record.save, self.part.record)
        except OSError as exc:
            log.warning("cannot keep %s for a rerun: %s", self.part.part, exc.strerror or exc)
            return None
        kept = f"kept the downloaded {self.part.part} ({format_bytes(size)}) and its record"
        return f"{kept}: {then} without downloading again"

    def _resume_record(self) -> tuple[ResumeRecord | None, bool]:
        """The record to fetch ranges by (``None``: one plain stream), and whether the ``.part`` file is kept.

        A ``.part`` file whose record lists every range is kept even from a
        server that no longer takes ranges: it only needs verifying.
        """
        remote, settings = self.remote, self.settings
        if remote.size is None or remote.size == 0:
            return None, False
        old = ResumeRecord.load(self.part.record)
        if old is not None and self.part.part.exists():
            # The .part file must still be the one the record describes: one of
            # another size would be emptied by PartFile.open, losing "done" ranges.
            part_size = self.part.part.stat().st_size
            why = old.mismatch(remote) or (
                f".part file has {part_size} bytes, not {old.size}" if part_size != old.size else None
            )
            complete = not missing_ranges(old.size, old.chunk_size, old.ranges())
            if why is None and (remote.ranges or complete):
                log.info("resuming %s: %d ranges already done", self.part.part, len(old.done))
                return old, True
            if why is not None:
                log.warning("not resuming %s: %s; starting over", self.part.part, why)
        if not remote.ranges:
            return None, False
        chunk = choose_chunk_size(remote.size, settings.connections, requested=settings.chunk_size)
        if settings.chunk_size is not None and chunk != settings.chunk_size:
            log.warning(
                "chunk size %s would cut %s into more than %d ranges; using %s",
                format_bytes(settings.chunk_size), format_bytes(remote.size), MAX_RANGES, format_bytes(chunk),
            )  # fmt: skip
        return ResumeRecord.for_remote(remote, chunk), False

    async def _fetch_ranges(self, todo: list[Range], writer: FileWriter, record: ResumeRecord) -> None:
        scheduler = self.pool.plan(todo)
        on_disk = merge_ranges(record.ranges())

        async def checkpoint() -> None:
            # Bytes handed to the writer before the flush are on disk after it:
            # whole ranges and the fetched heads of the ones still running.
            written = scheduler.written()
            await writer.flush()
            on_disk[:] = merge_ranges([*on_disk, *written])
            record.done = [str(r) for r in on_disk]
            try:
                await asyncio.to_thread(record.save, self.part.record)
            except OSError as exc:
                # A full disk, a symlink planted at NAME.part.json.tmp (the
                # record is never written through one), a name too long.
                error = NoSpaceError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else DownloadError
                where = exc.filename or self.part.record
                raise error(f"cannot save the resume record {where}: {exc.strerror or exc}") from exc

        async def checkpoints() -> None:
            while True:
                await asyncio.sleep(self.settings.checkpoint_interval)
                await checkpoint()

        try:
            async with asyncio.TaskGroup() as tg:
                ticker = tg.create_task(checkpoints())
                await self.pool.ranges(lambda _: writer)
                ticker.cancel()
        except BaseExceptionGroup as group:
            raise collapse(group) from group
        finally:
            if scheduler.steals:
                log.info("%d ranges split for idle connections", scheduler.steals)
            # Keep what is on disk for a rerun, whatever happened above.
            with contextlib.suppress(DownloadError, OSError):
                await checkpoint()
