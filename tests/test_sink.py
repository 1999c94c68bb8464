"""The .part file, its writer thread, backpressure and error reporting."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangefetch import DownloadError, FileWriter, NoSpaceError, PartFile, allocate
from rangefetch.sink import check_space

DATA = os.urandom(200_000)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def contents(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


class Gate:
    """Replaces os.pwrite: each call blocks until the test opens the gate, and is counted."""

    def __init__(self, real: object, fail: OSError | None = None) -> None:
        self.real = real
        self.fail = fail
        self.open = threading.Event()
        self.entered = threading.Event()
        self.written = 0

    def __call__(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self.entered.set()
        self.open.wait(timeout=10)
        if self.fail is not None:
            raise self.fail
        n: int = self.real(fd, data, offset)  # type: ignore[operator]
        self.written += n
        return n


async def until(condition: threading.Event) -> None:
    assert await asyncio.to_thread(condition.wait, 5)


# --- FileWriter ------------------------------------------------------------------


async def test_writes_land_at_their_offsets_in_any_order(fd: int) -> None:
    allocate(fd, len(DATA))
    pieces = [(start, DATA[start : start + 7000]) for start in range(0, len(DATA), 7000)]
    random.Random(1).shuffle(pieces)
    async with FileWriter(fd, max_pwrite=4096) as writer:  # pieces span several pwrite calls
        for offset, data in pieces:
            await writer.write(offset, data)
        await writer.flush()
        assert contents(fd) == DATA  # on disk once flush returns
    assert contents(fd) == DATA


async def test_leaving_the_block_waits_for_queued_writes(fd: int) -> None:
    async with FileWriter(fd) as writer:
        await writer.write(10, b"world")
        await writer.write(0, b"hello")
    assert contents(fd) == b"hello" + b"\0" * 5 + b"world"


async def test_flush_fsyncs_after_the_queued_writes(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_pwrite, real_fsync = os.pwrite, os.fsync

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        events.append(f"pwrite {offset}")
        return real_pwrite(fd, data, offset)

    def fsync(fd_: int) -> None:
        events.append(f"fsync {fd_ == fd}")
        real_fsync(fd_)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fsync", fsync)
    async with FileWriter(fd) as writer:
        await writer.write(0, b"a")
        await writer.write(1, b"b")
        await writer.flush()
        assert events == ["pwrite 0", "pwrite 1", "fsync True"]
        await writer.flush()
    assert events[-1] == "fsync True" and len(events) == 4


async def test_backpressure_bounds_the_queued_bytes(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(os.pwrite)
    monkeypatch.setattr(os, "pwrite", gate)
    budget, chunk = 100, 60
    async with FileWriter(fd, budget=budget) as writer:
        await writer.write(0, b"a" * chunk)  # the thread takes it and blocks in pwrite
        await until(gate.entered)
        await writer.write(60, b"b" * 30)  # 90 bytes queued: still within the budget
        third = asyncio.create_task(writer.write(90, b"c" * chunk))  # 150 > budget: must wait
        for _ in range(20):
            await asyncio.sleep(0)
        assert not third.done()
        assert gate.written == 0
        gate.open.set()
        await asyncio.wait_for(third, 5)
        await writer.flush()
    assert contents(fd) == b"a" * 60 + b"b" * 30 + b"c" * 60


async def test_queued_bytes_never_exceed_budget_plus_one_chunk(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(os.pwrite)
    gate.open.set()
    monkeypatch.setattr(os, "pwrite", gate)
    budget, chunk = 1000, 300
    accepted = worst = 0
    async with FileWriter(fd, budget=budget) as writer:
        for i in range(200):
            await writer.write(i * chunk, DATA[:chunk])
            accepted += chunk
            worst = max(worst, accepted - gate.written)
        await writer.flush()
    assert worst <= budget + chunk
    assert gate.written == accepted


async def test_a_chunk_larger_than_the_budget_still_goes_through(fd: int) -> None:
    async with FileWriter(fd, budget=10) as writer:
        await writer.write(0, DATA[:1000])
        await writer.write(1000, DATA[1000:2000])
        await writer.flush()
    assert contents(fd) == DATA[:2000]


async def test_write_error_surfaces_on_flush(tmp_path: Path) -> None:
    (tmp_path / "ro.bin").write_bytes(b"")
    ro = os.open(tmp_path / "ro.bin", os.O_RDONLY)
    try:
        with pytest.raises(DownloadError):  # leaving the block says it again: the file is not whole
            async with FileWriter(ro) as writer:
                await writer.write(0, b"data")  # queued: the failure comes later
                with pytest.raises(DownloadError, match="writing the file failed") as info:
                    await writer.flush()
                assert isinstance(info.value.__cause__, OSError)
                assert info.value.__cause__.errno == errno.EBADF
                assert "\n" not in str(info.value)
                with pytest.raises(DownloadError):  # and on every write after it
                    await writer.write(4, b"more")
                with pytest.raises(DownloadError):
                    await writer.flush()
    finally:
        os.close(ro)


async def test_write_error_surfaces_on_the_next_write(tmp_path: Path) -> None:
    (tmp_path / "ro.bin").write_bytes(b"")
    ro = os.open(tmp_path / "ro.bin", os.O_RDONLY)
    try:
        with pytest.raises(DownloadError):
            async with FileWriter(ro) as writer:
                await writer.write(0, b"data")
                with pytest.raises(DownloadError):  # from write() itself, once the thread has failed
                    for _ in range(200):
                        await asyncio.sleep(0.005)
                        await writer.write(0, b"x")
    finally:
        os.close(ro)


async def test_write_error_is_not_lost_without_a_flush(tmp_path: Path) -> None:
    (tmp_path / "ro.bin").write_bytes(b"")
    ro = os.open(tmp_path / "ro.bin", os.O_RDONLY)
    try:
        with pytest.raises(DownloadError):
            async with FileWriter(ro) as writer:
                await writer.write(0, b"data")
    finally:
        os.close(ro)


async def test_an_error_in_the_block_is_not_masked(tmp_path: Path) -> None:
    (tmp_path / "ro.bin").write_bytes(b"")
    ro = os.open(tmp_path / "ro.bin", os.O_RDONLY)
    try:
        with pytest.raises(KeyError):
            async with FileWriter(ro) as writer:
                await writer.write(0, b"data")
                raise KeyError("the caller's own error")
    finally:
        os.close(ro)


async def test_a_writer_waiting_for_space_wakes_up_on_an_error(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(os.pwrite, fail=OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(os, "pwrite", gate)
    with pytest.raises(DownloadError):  # leaving the block reports it too
        async with FileWriter(fd, budget=100) as writer:
            await writer.write(0, b"a" * 60)
            await until(gate.entered)
            waiting = asyncio.create_task(writer.write(60, b"b" * 60))
            await asyncio.sleep(0)
            assert not waiting.done()
            gate.open.set()
            with pytest.raises(DownloadError, match="No space left on device"):
                await asyncio.wait_for(waiting, 5)


async def test_any_error_in_the_writer_thread_surfaces_and_nothing_hangs(fd: int) -> None:
    def broken(offset: int, length: int) -> None:  # a bug in whoever hears of the writes
        raise ValueError("hasher broke")

    with pytest.raises(DownloadError, match="ValueError: hasher broke"):  # leaving the block reports it too
        async with FileWriter(fd, budget=100, on_written=broken) as writer:
            await writer.write(0, b"a" * 60)
            with pytest.raises(DownloadError, match="writing the file failed: ValueError: hasher broke"):
                await asyncio.wait_for(writer.flush(), 5)  # the hang guard: the thread must not just die
            with pytest.raises(DownloadError, match="hasher broke"):
                await asyncio.wait_for(writer.write(60, b"b" * 60), 5)


async def test_nothing_is_written_once_the_writer_is_no_longer_allowed(fd: int) -> None:
    allowed = threading.Event()
    allowed.set()
    with pytest.raises(DownloadError, match="writing stopped"):  # leaving the block reports it too
        async with FileWriter(fd, allowed=allowed.is_set) as writer:
            await writer.write(0, b"a" * 10)
            await writer.flush()
            allowed.clear()  # a lease lapsed: asked in the writer thread, for what is queued already too
            await writer.write(10, b"b" * 10)
            with pytest.raises(DownloadError, match="writing stopped"):
                await asyncio.wait_for(writer.flush(), 5)
            with pytest.raises(DownloadError, match="writing stopped"):
                await writer.write(20, b"c" * 10)
    assert contents(fd) == b"a" * 10


# --- PartFile -----------------------------------------------------------------------


def test_part_file_names(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.iso")
    assert part.part == tmp_path / "f.iso.part"
    assert part.record == tmp_path / "f.iso.part.json"


def test_open_allocates_and_commit_renames(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "dir" / "f.bin"  # parents are created
    part = PartFile(final)
    fd = part.open(1000, keep=False)
    try:
        assert os.fstat(fd).st_size == 1000
        os.pwrite(fd, b"xyz", 0)
        part.record.write_text("{}")
        assert not final.exists()
        part.commit()
    finally:
        os.close(fd)
    assert final.read_bytes()[:3] == b"xyz" and final.stat().st_size == 1000
    assert not part.part.exists() and not part.record.exists()


def test_open_with_keep_reuses_a_part_of_the_right_size(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    part.part.write_bytes(b"k" * 100)
    fd = part.open(100, keep=True)
    os.close(fd)
    assert part.part.read_bytes() == b"k" * 100


@pytest.mark.parametrize(("keep", "old_size"), [(False, 100), (True, 99)])
def test_open_starts_over_otherwise(tmp_path: Path, keep: bool, old_size: int) -> None:
    part = PartFile(tmp_path / "f.bin")
    part.part.write_bytes(b"k" * old_size)
    fd = part.open(100, keep=keep)
    os.close(fd)
    assert part.part.read_bytes() == b"\0" * 100


def test_open_of_unknown_size_gives_an_empty_file(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    part.part.write_bytes(b"old")
    fd = part.open(None, keep=False)
    os.close(fd)
    assert part.part.read_bytes() == b""


def test_a_second_opener_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = PartFile(tmp_path / "f.bin")
    fd = first.open(10, keep=False)
    try:
        with pytest.raises(DownloadError, match="another rangefetch is already downloading"):
            PartFile(tmp_path / "f.bin").open(10, keep=True)
    finally:
        os.close(fd)
    fd = PartFile(tmp_path / "f.bin").open(10, keep=True)
    os.close(fd)


def test_open_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DownloadError, match="cannot create"):
        PartFile(tmp_path / "file" / "f.bin").open(10, keep=False)


def test_discard_removes_part_and_record(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    fd = part.open(10, keep=False)
    os.close(fd)
    part.record.write_text("{}")
    part.discard()
    assert not part.part.exists() and not part.record.exists()
    part.discard()  # nothing left: still fine


@pytest.mark.parametrize("size", [0, 1, 4096, 5_000_003])
def test_allocate_sets_the_length(fd: int, size: int) -> None:
    allocate(fd, size)
    assert os.fstat(fd).st_size == size


def test_part_file_refuses_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    inside = tmp_path / "dl"
    inside.mkdir()
    part = PartFile(inside / "file.bin")
    part.part.symlink_to(outside)
    with pytest.raises(DownloadError):
        part.open(16, keep=False)
    assert outside.read_bytes() == b"precious"


# --- free space and failures that keep what is worth keeping --------------------------


def test_check_space_refuses_what_cannot_fit(fd: int) -> None:
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    check_space(fd, 0)
    check_space(fd, min(free, 4096))
    with pytest.raises(NoSpaceError, match=r"not enough free space: needs 1024\.0 TiB, .* free"):
        check_space(fd, 1024**5)


def test_allocate_of_more_than_is_free_writes_nothing(fd: int) -> None:
    with pytest.raises(NoSpaceError, match="needs"):
        allocate(fd, 1024**5)
    st = os.fstat(fd)
    assert (st.st_size, st.st_blocks) == (0, 0)


def test_open_that_cannot_allocate_leaves_no_part_file(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    with pytest.raises(NoSpaceError, match=f"cannot allocate {part.part}: not enough free space: needs"):
        part.open(1024**5, keep=False)
    assert list(tmp_path.iterdir()) == []


async def test_a_full_disk_while_writing_is_no_space(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(os.pwrite, fail=OSError(errno.ENOSPC, "No space left on device"))
    gate.open.set()
    monkeypatch.setattr(os, "pwrite", gate)
    with pytest.raises(NoSpaceError, match="writing the file failed: No space left on device"):
        async with FileWriter(fd) as writer:
            await writer.write(0, b"data")
            await writer.flush()


def test_commit_onto_a_directory_keeps_the_part_and_its_record(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    fd = part.open(10, keep=False)
    os.close(fd)
    part.record.write_text("{}")
    part.final.mkdir()
    (part.final / "inside").write_text("x")
    with pytest.raises(DownloadError, match="cannot rename .* Is a directory") as info:
        part.commit()
    assert "\n" not in str(info.value)
    assert part.part.stat().st_size == 10 and part.record.exists()
