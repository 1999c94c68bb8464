"""Where the bytes land: the ``.part`` file, its writer thread, and the final rename.

A download is written to ``NAME.part`` at absolute offsets and renamed to
``NAME`` only after it has been verified, so a failed or interrupted download
never leaves wrong bytes at the final path.

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
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .display import format_bytes
from .errors import DownloadError, NoSpaceError

__all__ = ["FileWriter", "PartFile", "allocate", "check_space"]

log = logging.getLogger(__name__)

# Bytes queued for the writer thread at most.  4 MiB absorbs the writer
# thread losing the CPU for a time slice at ~1 GB/s; more only adds to the
# peak RSS (bench/README.md, "Levers tried").
WRITE_BUDGET = 4 * 1024 * 1024
MAX_PWRITE = 512 * 1024  # bytes per pwrite call: keeps each syscall short

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def check_space(fd: int, size: int) -> None:
    """Check that the file system of ``fd`` has room for the file to hold ``size`` bytes.

    What the file already has allocated counts; what it still needs is
    compared with the space free for unprivileged users (``statvfs``'s
    ``f_bavail``).  A file system that reports no size at all is not judged.

    Raises:
        NoSpaceError: too little free space ("needs X, Y free").
    """
    stat, fs = os.fstat(fd), os.fstatvfs(fd)
    if fs.f_blocks == 0:  # some virtual and network file systems report nothing
        return
    needed = size - stat.st_blocks * 512
    free = fs.f_bavail * fs.f_frsize
    if needed > free:
        raise NoSpaceError(f"not enough free space: needs {format_bytes(needed)}, {format_bytes(free)} free")


def allocate(fd: int, size: int) -> None:
    """Give the file at ``fd`` the length ``size``, reserving the blocks where possible.

    The free space is checked first (``check_space``), so a file that cannot
    fit fails at once instead of filling the disk.  ``fallocate(2)`` then
    reserves the space up front (no ENOSPC half-way, less fragmentation);
    when it runs out of space all the same (another writer was faster), the
    blocks it got before ENOSPC, which ext4 keeps, are given back by cutting
    the file to its old length.  Where the filesystem cannot preallocate, a
    sparse ``ftruncate`` sets the length; glibc's ``posix_fallocate``
    emulation, which writes every block, is avoided on purpose.

    Raises:
        NoSpaceError: the file does not fit.
        OSError: the file system refused otherwise.
    """
    if size > 0:
        check_space(fd, size)
        fallocate = getattr(_libc, "fallocate", None)
        if fallocate is not None:
            fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            before = os.fstat(fd).st_size
            if fallocate(fd, 0, 0, size) != 0:
                err = ctypes.get_errno()
                if err in (errno.ENOSPC, errno.EDQUOT):
                    os.ftruncate(fd, before)
                    raise NoSpaceError(f"not enough free space for {format_bytes(size)}: {os.strerror(err)}")
                log.debug("fallocate failed (%s); using ftruncate", os.strerror(err))
    os.ftruncate(fd, size)


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
    while its lease holds (``worker.runtime.Lease.valid``): asked here, the
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
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted at NAME.part must not redirect the writes.
            fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise DownloadError(f"cannot create {self.part}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise DownloadError(f"another rangefetch is already downloading to {self.part}") from exc
        try:
            if keep and size is not None and os.fstat(fd).st_size == size:
                return fd
            # A stale record next to an emptied file would let a later rerun
            # "resume" ranges whose bytes are gone and deliver a corrupt file.
            self.record.unlink(missing_ok=True)
            os.ftruncate(fd, 0)
            allocate(fd, size or 0)
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

    def commit(self) -> None:
        """Rename ``.part`` to the final name, durably, and drop the resume record.

        Raises:
            DownloadError: the rename failed (a directory now at the final
                path, no permission); the ``.part`` file and its record stay.
        """
        try:
            os.replace(self.part, self.final)
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
