"""Verifying a finished file: its size always, its checksum when one is given.

``hash_fd`` hashes a file in one pass; ``PrefixHasher`` hashes it while it is
being written, so that little is left to hash once the last byte lands.
``read_blocks`` is the read loop under both, and under the workers' hashing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from .errors import DownloadError, UsageError, VerificationError

__all__ = ["ALGORITHMS", "HASH_BLOCK", "Checksum", "PrefixHasher", "hash_fd", "read_blocks", "verify_size"]

ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
HASH_BLOCK = 1024 * 1024
PREFIX_BLOCK = 256 * 1024  # PrefixHasher's read size: hashing speed is the same from 64 KiB to 4 MiB
CLAIM = 8 * 1024 * 1024  # bytes PrefixHasher hashes per turn: bounds how long close() waits


@dataclass(frozen=True, slots=True)
class Checksum:
    """An expected digest: ``algorithm`` (md5, sha1, sha256, sha512) and lower-case hex."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Parse ``ALGO=HEX`` as given to ``--checksum``.

        Raises:
            UsageError: unknown algorithm, or hex of the wrong length.
        """
        algo, sep, hexdigest = text.partition("=")
        algo, hexdigest = algo.strip().lower().replace("-", ""), hexdigest.strip().lower()
        if not sep or algo not in ALGORITHMS:
            raise UsageError(f"invalid checksum {text!r}: use ALGO=HEX with ALGO one of {', '.join(ALGORITHMS)}")
        if len(hexdigest) != ALGORITHMS[algo] or not re.fullmatch(r"[0-9a-f]+", hexdigest):
            raise UsageError(f"invalid checksum {text!r}: {algo} takes {ALGORITHMS[algo]} hex digits")
        return cls(algo, hexdigest)

    def __str__(self) -> str:
        return f"{self.algorithm}={self.hexdigest}"

    def check(self, digests: dict[str, str], *, url: str | None = None) -> None:
        """Compare with the computed ``digests``.

        Raises:
            VerificationError: the digest differs.
        """
        actual = digests[self.algorithm]
        if not hmac.compare_digest(actual, self.hexdigest):
            raise VerificationError(f"{self.algorithm} mismatch: expected {self.hexdigest}, got {actual}", url=url)


def verify_size(fd: int, expected: int, *, url: str | None = None) -> None:
    """Check that the file at ``fd`` holds exactly ``expected`` bytes.

    Raises:
        VerificationError: it does not.
    """
    actual = os.fstat(fd).st_size
    if actual != expected:
        raise VerificationError(f"size mismatch: expected {expected} bytes, file has {actual}", url=url)


async def hash_fd(fd: int, algorithms: set[str], *, start: int = 0, length: int | None = None) -> dict[str, str]:
    """Hex digests of bytes ``start .. start+length`` of ``fd`` (to the end when ``length`` is None).

    Runs in a thread: hashing a large file is blocking work.
    """
    return await asyncio.to_thread(_hash_blocking, fd, sorted(algorithms), start, length)


def _hash_blocking(fd: int, algorithms: list[str], start: int, length: int | None) -> dict[str, str]:
    hashers = [hashlib.new(a) for a in algorithms]
    remaining = length if length is not None else os.fstat(fd).st_size - start
    for block in read_blocks(fd, start, remaining, [memoryview(bytearray(HASH_BLOCK))]):
        for h in hashers:
            h.update(block)
    return {a: h.hexdigest() for a, h in zip(algorithms, hashers, strict=True)}


def read_blocks(
    fd: int, start: int, length: int, buffers: Sequence[memoryview], *, stop: threading.Event | None = None
) -> Iterator[memoryview]:
    """Read bytes ``start .. start+length`` of ``fd`` block by block: the read loop of every hash of a file.

    Each block is read into the next of ``buffers`` in turn (as much as it
    holds) and yielded as a view of it, valid until that buffer comes round
    again: with two, one block can be hashed in another thread while the
    next is read.  Ends early at the end of the file; the caller can tell
    by the bytes it got.  Blocking.

    Raises:
        DownloadError: ``stop`` was set before a read ("hashing stopped").
        OSError: a read failed.
    """
    turn, offset, end = 0, start, start + length
    while offset < end:
        if stop is not None and stop.is_set():
            raise DownloadError("hashing stopped")
        view = buffers[turn]
        turn = (turn + 1) % len(buffers)
        n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if n == 0:
            return
        yield view[:n]
        offset += n


class PrefixHasher:
    """Hashes ``fd`` from byte 0 while the file is being written, following the written prefix.

    Whoever writes reports each finished write with ``written(offset, n)``
    (any thread).  A thread of its own reads back the bytes from 0 up to the
    first byte not yet written and hashes them, so hashing overlaps the
    download instead of following it; the CPU cost is the same.  The digests
    are of bytes read back from ``fd`` after they were written, as with
    ``hash_fd``, and should a write be reported inside the part already
    hashed, ``result`` hashes the whole file again.

    Use as ``with PrefixHasher(fd, {"sha256"}) as hasher:`` (or ``start``
    and ``close``); call ``result`` once every write is done.
    """

    def __init__(self, fd: int, algorithms: set[str]) -> None:
        self._fd = fd
        self._algorithms = sorted(algorithms)
        self._hashers = [hashlib.new(a) for a in self._algorithms]
        self._cond = threading.Condition()
        self._by_start: dict[int, int] = {}  # written extents past the prefix: start -> end
        self._by_end: dict[int, int] = {}  # the same extents: end -> start
        self._ready = 0  # bytes [0, ready) are written
        self._claimed = 0  # bytes [0, claimed) are hashed or being hashed
        self._stale = False  # a write landed in the claimed part
        self._closing = False
        self._view = memoryview(bytearray(PREFIX_BLOCK))  # used by one thread at a time
        self._thread = threading.Thread(target=self._run, name="rangefetch-hasher", daemon=True)

    def __enter__(self) -> PrefixHasher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the hashing thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the hashing thread (waits for the block in hand); call before closing ``fd``."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def written(self, offset: int, length: int) -> None:
        """Record that bytes ``offset .. offset+length`` are on disk."""
        if length <= 0:
            return
        with self._cond:
            if offset < self._claimed:
                self._stale = True
            start, end = offset, offset + length
            left = self._by_end.pop(start, None)
            if left is not None:
                del self._by_start[left]
                start = left
            right = self._by_start.pop(end, None)
            if right is not None:
                del self._by_end[right]
                end = right
            if start <= self._ready:
                if end > self._ready:
                    self._ready = end
                    self._cond.notify()
            else:
                self._by_start[start] = end
                self._by_end[end] = start

    async def result(self) -> dict[str, str]:
        """Hex digests of the whole file; call once nothing writes to it any more."""
        return await asyncio.to_thread(self._finish)

    def _finish(self) -> dict[str, str]:
        self.close()
        size = os.fstat(self._fd).st_size
        if self._stale or size < self._claimed:
            return _hash_blocking(self._fd, self._algorithms, 0, None)
        # Whatever was never reported (or sits past a gap) is on disk now too.
        self._hash(self._claimed, size)
        return {a: h.hexdigest() for a, h in zip(self._algorithms, self._hashers, strict=True)}

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._claimed >= self._ready and not self._closing:
                        self._cond.wait()
                    if self._claimed >= self._ready:
                        return
                    start = self._claimed
                    self._claimed = end = min(self._ready, start + CLAIM)
                self._hash(start, end)
        except OSError:
            # Claimed but not hashed: the digests are incomplete, so result() starts over.
            self._stale = True

    def _hash(self, start: int, end: int) -> None:
        hashers = self._hashers
        for block in read_blocks(self._fd, start, end - start, [self._view]):
            for h in hashers:
                h.update(block)
