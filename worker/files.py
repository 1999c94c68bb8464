"""The download's files on the shared volume: where they are, opening them, hashing them.

Workers only ever touch ``spec.path`` re-resolved inside their own download
directory (``resolve_output(..., confine=True)``), whatever the enqueue
request said, and open the producer's ``.part`` file without creating,
truncating or following a symlink.  Hashing reads the file back from disk
in a thread with its own descriptor, so a cancelled job can close its
descriptors while the thread finishes; a stop flag makes the thread quit
early.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rangefetch import DownloadError, PartFile, VerificationError, resolve_output
from rangefetch.plan import Range
from rangefetch.store import DownloadSpec

__all__ = ["HASH_BLOCK", "hash_file", "hash_range", "open_part", "part_path"]

HASH_BLOCK = 1024 * 1024


def part_path(download_dir: Path, spec: DownloadSpec) -> Path:
    """The ``.part`` file of ``spec``, re-checked to lie inside ``download_dir``.

    Raises:
        UnsafePathError: ``spec.path`` leads outside the download directory.
    """
    return PartFile(resolve_output(download_dir, spec.path, confine=True)).part


def open_part(path: Path, size: int) -> int:
    """Open the producer's ``.part`` file for writing: never create, truncate or follow a symlink.

    Raises:
        DownloadError: it is missing, cannot be opened, or has the wrong size.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise DownloadError(f"part file missing: {path.name}") from None
    except OSError as exc:
        raise DownloadError(f"cannot open {path.name}: {exc.strerror}") from exc
    actual = os.fstat(fd).st_size
    if actual != size:
        os.close(fd)
        raise DownloadError(f"part file {path.name} has {actual} bytes, expected {size}")
    return fd


async def hash_range(path: Path, rng: Range) -> str:
    """The sha256 of ``rng``'s bytes in the file at ``path``, read in a thread.

    Raises:
        DownloadError: the file cannot be read or is too short.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_hash_blocking, path, rng, stop)
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled; tell it to quit
        raise


def _hash_blocking(path: Path, rng: Range, stop: threading.Event) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DownloadError(f"cannot read {path.name}: {exc.strerror}") from exc
    try:
        offset, remaining = rng.start, rng.length
        while remaining > 0 and not stop.is_set():
            n = os.preadv(fd, [view[: min(HASH_BLOCK, remaining)]], offset)
            if n == 0:
                raise DownloadError(f"{path.name} ends inside range {rng}", range=rng)
            h.update(view[:n])
            offset += n
            remaining -= n
    except OSError as exc:
        raise DownloadError(f"cannot read {path.name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return h.hexdigest()


async def hash_file(
    path: Path, size: int, ranges: list[Range], algorithms: set[str]
) -> tuple[list[str], dict[str, str]]:
    """One pass over ``path``: the sha256 of each of ``ranges`` and the whole file's ``algorithms`` digests.

    ``ranges`` must cover the file in order.

    Raises:
        VerificationError: the file does not hold ``size`` bytes.
        DownloadError: it cannot be read.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_hash_file_blocking, path, size, ranges, sorted(algorithms), stop)
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled; tell it to quit
        raise


def _hash_file_blocking(
    path: Path, size: int, ranges: list[Range], algorithms: list[str], stop: threading.Event
) -> tuple[list[str], dict[str, str]]:
    # Every byte is hashed twice (its range's sha256 and the whole file's
    # digests).  hashlib releases the GIL on large buffers, so the whole-file
    # update of one block runs in a second thread while this one does the
    # range update: two buffers, and a buffer is refilled only after the
    # update that read it has finished.
    whole = [hashlib.new(a) for a in algorithms]
    digests: list[str] = []
    views = [memoryview(bytearray(HASH_BLOCK)) for _ in range(2)]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DownloadError(f"cannot read {path.name}: {exc.strerror}") from exc

    def update_whole(chunk: memoryview) -> None:
        for w in whole:
            w.update(chunk)

    pending: Future[None] | None = None
    turn = 0
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rangefetch-hash") as pool:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise VerificationError(f"size mismatch: expected {size} bytes, {path.name} has {actual}")
            for rng in ranges:
                h = hashlib.sha256()
                offset, remaining = rng.start, rng.length
                while remaining > 0:
                    if stop.is_set():
                        raise DownloadError("hashing stopped")
                    view = views[turn]
                    turn ^= 1
                    n = os.preadv(fd, [view[: min(HASH_BLOCK, remaining)]], offset)
                    if n == 0:
                        raise VerificationError(f"{path.name} ends inside range {rng}", range=rng)
                    chunk = view[:n]
                    if pending is not None:
                        pending.result()  # the other buffer is free again
                    pending = pool.submit(update_whole, chunk)
                    h.update(chunk)
                    offset += n
                    remaining -= n
                digests.append(h.hexdigest())
            if pending is not None:
                pending.result()
    except OSError as exc:
        raise DownloadError(f"cannot read {path.name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return digests, {a: w.hexdigest() for a, w in zip(algorithms, whole, strict=True)}
