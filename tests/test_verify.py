"""Verifying a finished file: size and checksum."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangefetch import Checksum, UsageError, VerificationError, hash_fd
from rangefetch.verify import HASH_BLOCK, verify_size

DATA = os.urandom(HASH_BLOCK * 2 + 12345)  # more than one block, not a multiple


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_checksum_parse() -> None:
    digest = "ab" * 32
    assert Checksum.parse(f"sha256={digest}") == Checksum("sha256", digest)
    assert Checksum.parse(f" SHA-256 = {digest.upper()} ") == Checksum("sha256", digest)
    assert str(Checksum.parse(f"sha256={digest}")) == f"sha256={digest}"
    assert Checksum.parse("md5=" + "0" * 32).algorithm == "md5"
    assert Checksum.parse("sha1=" + "0" * 40).algorithm == "sha1"
    assert Checksum.parse("sha512=" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    "text",
    ["", "sha256", "ab" * 32, "crc32=0000", "sha256=" + "ab" * 31, "sha256=" + "zz" * 32, "md5=" + "0" * 40],
)
def test_checksum_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        Checksum.parse(text)
    assert "\n" not in str(info.value)


def test_checksum_check() -> None:
    good = hashlib.sha256(DATA).hexdigest()
    Checksum("sha256", good).check({"sha256": good})
    with pytest.raises(VerificationError, match="sha256 mismatch") as info:
        Checksum("sha256", "0" * 64).check({"sha256": good}, url="http://h/f")
    assert info.value.url == "http://h/f"


async def test_hash_fd_whole_file(fd: int) -> None:
    digests = await hash_fd(fd, {"sha256", "md5"})
    assert digests == {"sha256": hashlib.sha256(DATA).hexdigest(), "md5": hashlib.md5(DATA).hexdigest()}


@pytest.mark.parametrize(("start", "length"), [(0, 0), (0, 1), (5, 100), (HASH_BLOCK - 1, HASH_BLOCK + 2), (7, None)])
async def test_hash_fd_part(fd: int, start: int, length: int | None) -> None:
    end = len(DATA) if length is None else start + length
    digests = await hash_fd(fd, {"sha1"}, start=start, length=length)
    assert digests == {"sha1": hashlib.sha1(DATA[start:end]).hexdigest()}


async def test_hash_fd_stops_at_the_end_of_the_file(fd: int) -> None:
    digests = await hash_fd(fd, {"sha256"}, start=len(DATA) - 10, length=1000)
    assert digests["sha256"] == hashlib.sha256(DATA[-10:]).hexdigest()


def test_verify_size(fd: int) -> None:
    verify_size(fd, len(DATA))
    with pytest.raises(VerificationError, match="size mismatch") as info:
        verify_size(fd, len(DATA) + 1, url="http://h/f")
    assert info.value.url == "http://h/f"
