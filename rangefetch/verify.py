"""Verifying a finished file: its size always, its checksum when one is given."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from .errors import UsageError, VerificationError

__all__ = ["ALGORITHMS", "Checksum", "hash_fd", "verify_size"]

ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
HASH_BLOCK = 1024 * 1024


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
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    offset = start
    remaining = length if length is not None else os.fstat(fd).st_size - start
    while remaining > 0:
        n = os.preadv(fd, [view[: min(HASH_BLOCK, remaining)]], offset)
        if n == 0:
            break
        for h in hashers:
            h.update(view[:n])
        offset += n
        remaining -= n
    return {a: h.hexdigest() for a, h in zip(algorithms, hashers, strict=True)}
