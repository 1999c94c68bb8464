"""The download's files on the shared volume: where they are, opening them, hashing them.

Workers only ever touch ``spec.path`` re-resolved inside their own download
directory (``resolve_output(..., confine=True)``), whatever the enqueue
request said, and open the producer's ``.part`` file without creating,
truncating or following a symlink (``open_part``, which is
``rangefetch.partfile.open_existing``).  Hashing reads the file back from
disk (``rangefetch.verify.read_blocks``) in a thread with its own
descriptor, so a cancelled job can close its descriptors while the thread
finishes; a stop flag makes the thread quit early.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from rangefetch import DownloadError, PartFile, VerificationError, resolve_output
from rangefetch.distributed.store import DownloadSpec
from rangefetch.partfile import open_existing as open_part
from rangefetch.partfile import open_for_reading
from rangefetch.plan import Range
from rangefetch.verify import HASH_BLOCK, read_blocks

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "HASH_BLOCK",
    "Hashed",
    "Hasher",
    "RangeDigest",
    "check_size",
    "feed",
    "hash_file",
    "hash_prefix",
    "hash_range",
    "hash_window",
    "hash_window_at",
    "open_for_reading",
    "open_part",
    "part_path",
]


class Hasher(Protocol):
    """What ``feed`` feeds: a ``hashlib`` object or a ``RangeDigest``."""

    def update(self, data: bytes | memoryview, /) -> None: ...


class RangeDigest:
    """The digest a range job records of the bytes it wrote, and the finalizer checks: a CRC-32.

    It guards against storage faults between a worker's write and the
    finalizer's read of the shared volume (a lost or torn write, a stale
    cache on another host), not against a malicious server: the whole
    file's sha256 and ``--checksum`` cover that.  CRC-32 catches every error
    burst of up to 32 bits and any other corruption with probability
    1 - 2^-32, as block stores such as HDFS use it, and at about 4 GB/s it
    is more than twice as fast as sha256 here, which matters as it runs in
    a range job's event loop and in the tail of the verification
    (``zlib.crc32`` releases the GIL too).
    """

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, data: bytes | memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def part_path(download_dir: Path, spec: DownloadSpec) -> Path:
    """The ``.part`` file of ``spec``, re-checked to lie inside ``download_dir``.

    Raises:
        UnsafePathError: ``spec.path`` leads outside the download directory.
    """
    return PartFile(resolve_output(download_dir, spec.path, confine=True)).part


async def hash_range(path: Path, rng: Range) -> str:
    """The ``RangeDigest`` of ``rng``'s bytes in the file at ``path``, read in a thread.

    Raises:
        DownloadError: the file cannot be read or is too short.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(hash_window_at, path, rng, [], None, stop)
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled; tell it to quit
        raise


async def hash_prefix(path: Path, rng: Range, length: int) -> RangeDigest:
    """A ``RangeDigest`` fed the first ``length`` bytes of ``rng`` in the file at ``path``, read in a thread.

    Raises:
        DownloadError: the file cannot be read or is too short.
    """
    if length <= 0:
        return RangeDigest()
    # A CRC-32's whole state is its value, so the prefix's digest goes on from there.
    return RangeDigest(int(await hash_range(path, Range(rng.start, rng.start + length - 1)), 16))


def hash_window_at(
    path: Path, rng: Range, whole: Sequence[Hasher], pool: ThreadPoolExecutor | None, stop: threading.Event
) -> str:
    """``hash_window`` through a descriptor of its own on ``path``: a cancelled caller may go while it runs.

    Raises:
        VerificationError: the file ends inside ``rng``.
        DownloadError: it cannot be read, or ``stop`` was set.
    """
    fd = open_for_reading(path)
    try:
        return hash_window(fd, rng, whole, pool, stop, name=path.name)
    finally:
        os.close(fd)


def hash_window(
    fd: int,
    rng: Range,
    whole: Sequence[Hasher],
    pool: ThreadPoolExecutor | None,
    stop: threading.Event,
    *,
    name: str,
) -> str:
    """The ``RangeDigest`` of ``rng``'s bytes in ``fd``; the same bytes also go into each of ``whole``.

    Blocking; ``feed`` says how the work is shared with ``pool``.

    Raises:
        VerificationError: the file ends inside ``rng``.
        DownloadError: it cannot be read, or ``stop`` was set.
    """
    digest = RangeDigest()
    feed(fd, rng, [digest], whole, pool, stop, name=name)
    return digest.hexdigest()


def feed(
    fd: int,
    rng: Range,
    here: Sequence[Hasher],
    there: Sequence[Hasher],
    pool: ThreadPoolExecutor | None,
    stop: threading.Event,
    *,
    name: str,
) -> None:
    """Read ``rng`` from ``fd`` once, feeding every block to ``here`` and ``there``.

    Blocking; the reads are ``rangefetch.verify.read_blocks``.  hashlib and
    zlib release the GIL on large buffers, so with a ``pool`` the ``there``
    updates of one block run in its thread while this one updates ``here``:
    two buffers, each refilled only after the update that read it has
    finished.  Every update has finished when this returns.

    Raises:
        VerificationError: the file ends inside ``rng``.
        DownloadError: it cannot be read, or ``stop`` was set.
    """
    views = [memoryview(bytearray(HASH_BLOCK)) for _ in range(2 if pool is not None else 1)]

    def update_there(chunk: memoryview) -> None:
        for h in there:
            h.update(chunk)

    pending: Future[None] | None = None
    got = 0
    try:
        for chunk in read_blocks(fd, rng.start, rng.length, views, stop=stop):
            if pending is not None:
                pending.result()  # the other buffer is free again
                pending = None
            if pool is not None:
                pending = pool.submit(update_there, chunk)
            else:
                update_there(chunk)
            for h in here:
                h.update(chunk)
            got += len(chunk)
    except OSError as exc:
        raise DownloadError(f"cannot read {name}: {exc.strerror}") from exc
    finally:
        if pending is not None:
            pending.result()
    if got < rng.length:
        raise VerificationError(f"{name} ends inside range {rng}", range=rng)


class Hashed(NamedTuple):
    """What one pass over a download's file found: each range's ``RangeDigest`` and the whole file's digests."""

    digests: list[str]  # per range, in order
    whole: dict[str, str]  # algorithm -> hex digest


async def hash_file(path: Path, size: int, ranges: list[Range], algorithms: set[str]) -> Hashed:
    """One pass over ``path``: the ``RangeDigest`` of each of ``ranges`` and the whole file's ``algorithms`` digests.

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
) -> Hashed:
    whole = [hashlib.new(a) for a in algorithms]
    fd = open_for_reading(path)
    try:
        check_size(fd, size, name=path.name)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rangefetch-hash") as pool:
            digests = [hash_window(fd, rng, whole, pool, stop, name=path.name) for rng in ranges]
    finally:
        os.close(fd)
    return Hashed(digests, {a: w.hexdigest() for a, w in zip(algorithms, whole, strict=True)})


def check_size(fd: int, size: int, *, name: str) -> None:
    """Check that ``fd`` holds ``size`` bytes.

    Raises:
        VerificationError: it does not.
    """
    actual = os.fstat(fd).st_size
    if actual != size:
        raise VerificationError(f"size mismatch: expected {size} bytes, {name} has {actual}")
