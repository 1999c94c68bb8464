"""The ``.part`` file's descriptor: opening it, locking it, giving it its size.

The embedded download (``sink.PartFile.open``), the producer (which creates
and allocates the file that the workers write) and the workers (which only
open it) all go through these: the file is opened read-write and never
through a symlink (``O_NOFOLLOW``: a symlink planted at ``NAME.part`` must not
redirect the writes, nor a truncation clobber a file elsewhere); one writer
holds an exclusive ``flock`` on it; and it is allocated only after the free
space was checked, giving back what it got when the disk fills all the same.
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
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .display import format_bytes
from .errors import DownloadError, NoSpaceError

__all__ = [
    "LOCK_TIMEOUT",
    "allocate",
    "check_space",
    "create",
    "locked",
    "open_existing",
    "open_for_reading",
    "reset",
    "size_of",
    "try_lock",
]

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 30.0  # seconds ``locked`` waits for another holder of the lock (a producer enqueuing the same file)
_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def create(path: Path) -> int:
    """Open ``path`` read-write, creating it (and its directory) if missing; never through a symlink.

    Raises:
        DownloadError: it cannot be created or opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _FLAGS | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DownloadError(f"cannot create {path}: {exc.strerror}") from exc


def open_existing(path: Path, size: int) -> int:
    """Open another's ``.part`` file (the producer's) for writing: never create, truncate or follow a symlink.

    Raises:
        DownloadError: it is missing, cannot be opened, or has not ``size`` bytes.
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise DownloadError(f"part file missing: {path.name}") from None
    except OSError as exc:
        raise DownloadError(f"cannot open {path.name}: {exc.strerror}") from exc
    actual = size_of(fd)
    if actual != size:
        os.close(fd)
        raise DownloadError(f"part file {path.name} has {actual} bytes, expected {size}")
    return fd


def open_for_reading(path: Path) -> int:
    """A read-only descriptor of ``path``.

    Raises:
        DownloadError: it cannot be opened.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DownloadError(f"cannot read {path.name}: {exc.strerror}") from exc


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if nobody holds it; ``False`` if another does (closing ``fd`` releases it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.asynccontextmanager
async def locked(path: Path, *, timeout: float = LOCK_TIMEOUT) -> AsyncIterator[int]:
    """Open (creating) ``path`` and hold its exclusive lock, waiting up to ``timeout`` seconds for another holder.

    Raises:
        DownloadError: the file cannot be created, or stays locked for ``timeout`` seconds.
    """
    fd = await asyncio.to_thread(create, path)
    try:
        deadline = time.monotonic() + timeout
        while not try_lock(fd):
            if time.monotonic() > deadline:
                raise DownloadError(f"{path} stays locked by another rangefetch")
            await asyncio.sleep(0.1)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def size_of(fd: int) -> int:
    """The length of the file at ``fd``."""
    return os.fstat(fd).st_size


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
            before = size_of(fd)
            if fallocate(fd, 0, 0, size) != 0:
                err = ctypes.get_errno()
                if err in (errno.ENOSPC, errno.EDQUOT):
                    os.ftruncate(fd, before)
                    raise NoSpaceError(f"not enough free space for {format_bytes(size)}: {os.strerror(err)}")
                log.debug("fallocate failed (%s); using ftruncate", os.strerror(err))
    os.ftruncate(fd, size)


def reset(fd: int, size: int) -> None:
    """Empty the file at ``fd`` and ``allocate`` it ``size`` bytes (zeros) afresh.

    Raises:
        NoSpaceError: the file does not fit; it is left empty.
        OSError: the file system refused otherwise.
    """
    os.ftruncate(fd, 0)
    allocate(fd, size)
