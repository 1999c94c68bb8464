"""Where the bytes land: the ``.part`` file, its writer thread, and the final rename.

A download is written to ``NAME.part`` at absolute offsets and renamed to
``NAME`` only after it has been verified, so a failed or interrupted download
never leaves wrong bytes at the final path.

The rename never replaces another file unless asked to (``--allow-overwrite``):
it is atomic and refuses an existing ``NAME`` (``renameat2(RENAME_NOREPLACE)``,
or a hard link where the file system lacks it), so a file that appears while
the download runs is safe too.  Before it, the file gets the server's
``Last-Modified`` as its modification time, as wget does: with the size, that
is how a later run tells the file at ``NAME`` is this download
(``existing_output``) and skips it instead of downloading it again.

Writes go through one dedicated thread fed by a bounded queue rather than a
thread hop per chunk: the event loop only enqueues (cheap), the thread does
the blocking ``pwrite``s in order, and the byte budget gives backpressure so
memory stays bounded when the disk is slower than the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType

from . import partfile
from .errors import DownloadError, NoSpaceError, OutputExistsError
from .partfile import allocate, check_space  # here too: they were sink's before partfile had them

__all__ = ["Existing", "FileWriter", "PartFile", "allocate", "check_space", "existing_output", "http_time"]

log = logging.getLogger(__name__)

# Bytes queued for the writer thread at most.  4 MiB absorbs the writer
# thread losing the CPU for a time slice at ~1 GB/s; more only adds to the
# peak RSS (bench/README.md, "Levers tried").
WRITE_BUDGET = 4 * 1024 * 1024
MAX_PWRITE = 512 * 1024  # bytes per pwrite call: keeps each syscall short

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class FileWriter:
    """Writes ``(offset, data)`` pieces to ``fd`` from one thread, in order.

    Use as ``async with FileWriter(fd) as writer``.  ``write`` waits while
    more than ``budget`` bytes are queued; ``flush`` returns once everything
    queued before it is written and fsynced.  Leaving the block waits for the
    queued writes and raises ``DownloadError`` if any of them failed.
    ``on_written`` hears of each finished write (``verify.PrefixHasher``).

    ``allowed``, when given, is asked in the writer thread before each
    write: once it says no, nothing more reaches the file, and ``write`` and
    ``flush`` raise ``DownloadError``.  A distributed range job writes only
    while its lease holds (``worker.lease.Lease.valid``): asked here, the
    check also holds for bytes that were queued before the lease lapsed,
    say while the process was stopped.

    Whatever the writer thread raises (an ``OSError``, or a bug in
    ``on_written``) is kept and raised by the next ``write``/``flush`` or
    at the end of the block; the thread keeps settling what is queued, so
    nobody waiting on it hangs.
    """

    def __init__(
        self,
        fd: int,
        *,
        budget: int = WRITE_BUDGET,
        max_pwrite: int = MAX_PWRITE,
        on_written: Callable[[int, int], None] | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        self._fd = fd
        self._on_written = on_written  # called in the writer thread with (offset, length) of each finished write
        self._allowed = allowed  # called in the writer thread before each write
        self._budget = budget
        self._max_pwrite = max_pwrite
        self._queue: queue.SimpleQueue[tuple[int, bytes] | asyncio.Future[None] | None] = queue.SimpleQueue()
        self._pending = 0
        self._space = asyncio.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="rangefetch-writer", daemon=True)

    async def __aenter__(self) -> FileWriter:
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        if exc_type is None:
            # A write that failed after the last write()/flush() must not go unnoticed.
            self._check()

    async def write(self, offset: int, data: bytes) -> None:
        """Queue ``data`` for writing at ``offset``; waits while the queue is full.

        Raises:
            DownloadError: an earlier write failed (disk full, I/O error).
        """
        self._check()
        size = len(data)
        while self._pending and self._pending + size > self._budget:
            self._space.clear()
            await self._space.wait()
            self._check()
        self._pending += size
        self._queue.put((offset, data))

    async def flush(self) -> None:
        """Wait until every queued write is on disk (fsync).

        Raises:
            DownloadError: a write or the fsync failed.
        """
        self._check()
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(done)
        await done
        self._check()

    def _check(self) -> None:
        failure = self._error
        if failure is None:
            return
        if isinstance(failure, _Refused):
            raise DownloadError("writing stopped: the writer is no longer allowed to write")
        if isinstance(failure, OSError):
            error = NoSpaceError if failure.errno in (errno.ENOSPC, errno.EDQUOT) else DownloadError
            raise error(f"writing the file failed: {failure.strerror or failure}") from failure
        raise DownloadError(f"writing the file failed: {type(failure).__name__}: {failure}") from failure

    def _release(self, size: int) -> None:
        self._pending -= size
        self._space.set()

    def _settle(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def _run(self) -> None:
        call = self._loop.call_soon_threadsafe
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._apply(item)
                except BaseException as exc:  # whatever it is, the loop must hear of it, or a flush() waits forever
                    self._error = exc
            try:
                if isinstance(item, asyncio.Future):
                    call(self._settle, item)
                else:
                    call(self._release, len(item[1]))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return

    def _apply(self, item: tuple[int, bytes] | asyncio.Future[None]) -> None:
        """Carry out one queued item in the writer thread: a write, or the fsync of a flush."""
        if isinstance(item, asyncio.Future):
            os.fsync(self._fd)
            return
        if self._allowed is not None and not self._allowed():
            raise _Refused
        offset, data = item
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view[: self._max_pwrite], offset)
            view = view[written:]
            offset += written
        if self._on_written is not None:
            self._on_written(item[0], len(data))


class _Refused(Exception):
    """``FileWriter``'s ``allowed`` said no: nothing more is written."""


class PartFile:
    """The ``NAME.part`` file of a download and the final rename to ``NAME``."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = final.with_name(final.name + ".part")
        self.record = final.with_name(final.name + ".part.json")

    def open(self, size: int | None, *, keep: bool) -> int:
        """Open the ``.part`` file for writing and return its descriptor.

        With ``keep`` an existing ``.part`` file of the right size is reused
        (resume); otherwise it starts empty and is preallocated to ``size``,
        and any old resume record is removed first: it describes bytes that
        are about to be thrown away.

        Raises:
            NoSpaceError: the file system has too little free space for it;
                nothing is left behind.
            DownloadError: the file cannot be created.
        """
        fd = partfile.create(self.part)
        if not partfile.try_lock(fd):
            os.close(fd)
            raise DownloadError(f"another rangefetch is already downloading to {self.part}")
        try:
            if keep and size is not None and partfile.size_of(fd) == size:
                return fd
            # A stale record next to an emptied file would let a later rerun
            # "resume" ranges whose bytes are gone and deliver a corrupt file.
            self.record.unlink(missing_ok=True)
            partfile.reset(fd, size or 0)
        except (OSError, DownloadError) as exc:
            # The file was emptied above and holds nothing worth keeping.
            with contextlib.suppress(OSError):
                self.part.unlink()
            os.close(fd)
            if isinstance(exc, NoSpaceError):
                raise NoSpaceError(f"cannot allocate {self.part}: {exc}") from exc
            if isinstance(exc, DownloadError):
                raise
            raise DownloadError(f"cannot allocate {self.part}: {exc.strerror}") from exc
        return fd

    def commit(self, *, replace: bool = False, last_modified: str | None = None) -> None:
        """Rename ``.part`` to the final name, durably, and drop the resume record.

        Args:
            replace: replace a file already at the final name (``--allow-overwrite``);
                without it the rename refuses one, atomically (``rename_noreplace``).
            last_modified: the server's ``Last-Modified``, set as the file's
                modification time first, so a later run can tell the file is
                this download (``existing_output``).

        Raises:
            OutputExistsError: without ``replace``, a file is at the final name.
            DownloadError: the rename failed (a directory now at the final
                path, no permission); the ``.part`` file and its record stay.
        """
        mtime = http_time(last_modified)
        if mtime is not None:
            try:
                os.utime(self.part, (os.stat(self.part).st_atime, mtime))
            except OSError as exc:  # only a later run's "already complete" depends on it
                log.warning("cannot set the date of %s: %s", self.part, exc.strerror or exc)
        try:
            if replace:
                os.replace(self.part, self.final)
            else:
                rename_noreplace(self.part, self.final)
        except FileExistsError as exc:
            if self.final.is_dir():
                raise DownloadError(f"cannot rename {self.part} to {self.final}: Is a directory") from exc
            raise OutputExistsError(f"{self.final} already exists and is not replaced") from exc
        except OSError as exc:
            raise DownloadError(f"cannot rename {self.part} to {self.final}: {exc.strerror}") from exc
        try:
            fsync_dir(self.final.parent)
            self.record.unlink(missing_ok=True)
        except OSError as exc:  # the file is in place; only the tidying failed
            log.warning("after renaming %s to %s: %s", self.part, self.final, exc.strerror or exc)

    def discard(self) -> None:
        """Remove the ``.part`` file and its resume record."""
        self.part.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1  # <linux/fs.h>
_AT_FDCWD = -100
# renameat2 says "cannot do that here" with these: the file system (or kernel) has no RENAME_NOREPLACE.
_NO_NOREPLACE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
# link says so with these: the file system has no hard links (FAT, some FUSE and network file systems).
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` unless something is already at ``target``.

    ``renameat2(RENAME_NOREPLACE)`` does it atomically (Linux 3.15+, ext4,
    xfs, btrfs, tmpfs); where the file system cannot, a hard link does it
    atomically too (``link`` fails on an existing name) and the old name is
    removed after; where neither works, the name is looked up first, which
    leaves a moment in which a file created at ``target`` would be replaced.

    Raises:
        FileExistsError: something is at ``target``; nothing was changed.
        OSError: the rename failed otherwise.
    """
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in _NO_NOREPLACE:
            raise OSError(err, os.strerror(err), str(source), None, str(target))
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from exc
        os.rename(source, target)
        return
    os.unlink(source)


def http_time(value: str | None) -> float | None:
    """An HTTP date (``Last-Modified``, RFC 9110 §5.6.7) as a POSIX timestamp, or ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class Existing:
    """What is at a download's output path already: ``same`` when it is that download, finished."""

    path: Path
    same: bool
    why: str  # a few words: "has 12 bytes, the remote file 34"
    size: int | None  # of a regular file


def existing_output(final: Path, *, size: int | None, last_modified: str | None) -> Existing | None:
    """What is at ``final`` compared with the remote file, or ``None`` when nothing is there.

    It is the same file when it is a regular file of the remote ``size``
    whose modification time is the remote ``Last-Modified`` (which
    ``PartFile.commit`` sets): wget's ``--timestamping`` rule.  Anything else
    (another size, another date, a symlink, no ``Last-Modified`` to compare)
    cannot be told apart from a different file.

    Raises:
        OSError: ``final`` cannot be looked at.
    """
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return Existing(final, False, "is not a regular file", None)
    if size is None:
        return Existing(final, False, "the server does not say how large the remote file is", st.st_size)
    if st.st_size != size:
        return Existing(final, False, f"has {st.st_size} bytes, the remote file {size}", st.st_size)
    mtime = http_time(last_modified)
    if mtime is None:
        why = "has the remote size, but the server gives no Last-Modified to compare dates"
        return Existing(final, False, why, st.st_size)
    if int(st.st_mtime) != int(mtime):
        return Existing(final, False, "has the remote size, but not the remote Last-Modified", st.st_size)
    return Existing(final, True, "has the size and Last-Modified of the remote file", st.st_size)
