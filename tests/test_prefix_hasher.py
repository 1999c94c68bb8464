"""``verify.PrefixHasher``: hashing a file while it is written, out of order.

Every test compares with ``hashlib`` over the final file: the digest must be
that of the bytes on disk, whatever order the writes came in.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest

from rangefetch import verify
from rangefetch.verify import PrefixHasher

SIZE = 3 * 1024 * 1024 + 777


def open_file(tmp_path: Path, size: int = SIZE) -> int:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    return fd


def expected(fd: int, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, os.pread(fd, os.fstat(fd).st_size + 1, 0)).hexdigest()


def pieces(size: int, piece: int) -> list[tuple[int, int]]:
    return [(o, min(piece, size - o)) for o in range(0, size, piece)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_out_of_order_writes(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "CLAIM", 100_000)  # many turns of the hashing thread
    fd = open_file(tmp_path)
    order = pieces(SIZE, 65_000)
    random.Random(seed).shuffle(order)
    with PrefixHasher(fd, {"sha256", "md5"}) as hasher:
        for offset, n in order:
            os.pwrite(fd, os.urandom(n), offset)
            hasher.written(offset, n)
        digests = await hasher.result()
    assert digests == {"sha256": expected(fd), "md5": expected(fd, "md5")}
    assert not hasher._stale
    os.close(fd)


async def test_unreported_bytes_are_hashed_at_the_end(tmp_path: Path) -> None:
    fd = open_file(tmp_path)
    os.pwrite(fd, os.urandom(SIZE), 0)
    with PrefixHasher(fd, {"sha256"}) as hasher:
        hasher.written(0, 1000)  # the rest never reported, e.g. written by an earlier run
        assert (await hasher.result())["sha256"] == expected(fd)
    os.close(fd)


async def test_rewrite_of_hashed_bytes_hashes_again(tmp_path: Path) -> None:
    fd = open_file(tmp_path)
    with PrefixHasher(fd, {"sha256"}) as hasher:
        os.pwrite(fd, os.urandom(SIZE), 0)
        hasher.written(0, SIZE)
        while hasher._claimed < SIZE:  # let the thread claim the whole file
            await asyncio.sleep(0.01)
        os.pwrite(fd, b"changed", 10)
        hasher.written(10, 7)
        digests = await hasher.result()
    assert hasher._stale
    assert digests["sha256"] == expected(fd)
    os.close(fd)


async def test_empty_file(tmp_path: Path) -> None:
    fd = open_file(tmp_path, 0)
    with PrefixHasher(fd, {"sha256"}) as hasher:
        assert (await hasher.result())["sha256"] == hashlib.sha256(b"").hexdigest()
    os.close(fd)


def test_close_without_result(tmp_path: Path) -> None:
    fd = open_file(tmp_path)
    hasher = PrefixHasher(fd, {"sha256"})
    hasher.start()
    hasher.written(0, SIZE)
    hasher.close()
    assert not hasher._thread.is_alive()
    os.close(fd)
