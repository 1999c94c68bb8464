"""Failing fast and cleanly: replies that break HTTP, full disks, odd paths, Ctrl-C.

Every case runs against the real range server (tests/rangeserver.py), or a
real small file system mounted for the test (tmpfs, or ext4 on a loop
device; skipped with the reason where this machine cannot mount).  Attempts
are counted at the server; a clean failure is one line on stderr, the
documented exit code, no traceback and nothing at the final path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rangeserver import RangeServer, RequestRecord
from test_cli import assert_clean_failure

import rangefetch
import rangefetch.producer
import rangefetch.worker
from rangefetch import (
    MalformedResponseError,
    NoSpaceError,
    PartFile,
    ProtocolError,
    RemoteChangedError,
    RetryPolicy,
    Settings,
    UsageError,
    allocate,
    download,
)
from rangefetch.client import MAX_REDIRECTS

DATA = os.urandom(1_000_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "data.bin"
CHUNK = 256 * 1024
# Eight tries: a reply that is retried shows as several GETs at the server.
RETRY = RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=8)
FAST_ENV = {
    "RANGEFETCH_RETRY__BACKOFF": "0.01",
    "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05",
    "RANGEFETCH_RETRY__MAX_TRIES": "8",
    "RANGEFETCH_CHECKPOINT_INTERVAL": "0.05",
}
SLOW = {"rate": 100_000}  # per connection: 1 MB over 2 connections takes about 5 s
TiB = 1024**4


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"connections": 4, "chunk_size": CHUNK, "retry": RETRY, **overrides}
    return Settings(**values)


def gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET"]


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched file ranges (not the ``bytes=0-0`` probe)."""
    return [r for r in gets(requests) if r.headers.get("range") not in (None, "bytes=0-0")]


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


# --- the command line -----------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rangefetch", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    return {**env, **FAST_ENV}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=cwd, env=environment(), capture_output=True, text=True, timeout=60)


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args), cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    """Poll until ``path`` exists (the download is under way)."""
    for _ in range(1500):
        if path.exists() or proc.poll() is not None:
            break
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared"


# --- small file systems, mounted for the test --------------------------------------


@contextlib.contextmanager
def mounted(kind: str, size: int, where: Path) -> Iterator[Path]:
    """A ``kind`` file system ("tmpfs", or "ext4" on a loop device) of ``size`` bytes at ``where``."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} needs root")
    if shutil.which("mount") is None or (kind == "ext4" and shutil.which("mkfs.ext4") is None):
        pytest.skip(f"mount or mkfs.ext4 is not installed: cannot make a {kind}")
    where.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    else:
        image = where.with_name(where.name + ".img")
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(image), str(where)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    with mounted("tmpfs", 2 * 1024 * 1024, tmp_path / "tmpfs") as where:
        yield where


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB ext4 on a loop device: ext4 keeps what fallocate got before ENOSPC."""
    with mounted("ext4", 8 * 1024 * 1024, tmp_path / "ext4") as where:
        yield where


def fill(directory: Path) -> None:
    """Write to a file in ``directory`` until the file system is full."""
    with open(directory / "filler", "wb", buffering=0) as f:
        block = b"\xff" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\xff")


# --- 3: a reply that breaks HTTP/1.1 is final -----------------------------------------


BROKEN = ["content_length", "nul", "flood"]


@pytest.mark.parametrize("kind", BROKEN)
async def test_a_broken_reply_to_the_probe_is_final(
    srv: RangeServer, tmp_path: Path, kind: str, fast_path: bool
) -> None:
    url = srv.url(NAME, broken=kind, times=100)
    with pytest.raises(MalformedResponseError, match="breaks HTTP/1.1"):
        await download(url, directory=tmp_path, settings=settings(fast_path=fast_path))
    # Eight tries were allowed.  One GET, or two on the fast path, which
    # sends a GET that failed on a reused connection once more on a new one.
    assert 1 <= len(gets(srv.requests)) <= 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", BROKEN)
async def test_a_broken_reply_to_a_range_is_final(srv: RangeServer, tmp_path: Path, kind: str, fast_path: bool) -> None:
    url = srv.url(NAME, broken=kind, skip=1, times=100)  # the probe's GET is answered well
    with pytest.raises(MalformedResponseError, match="breaks HTTP/1.1") as info:
        await download(url, directory=tmp_path, settings=settings(connections=1, fast_path=fast_path))
    assert info.value.range is not None
    fetched = range_gets(srv.requests)
    assert 1 <= len(fetched) <= 2
    assert {r.headers["range"] for r in fetched} == {f"bytes=0-{CHUNK - 1}"}
    assert not (tmp_path / NAME).exists()


def test_a_broken_reply_is_one_line_at_the_command_line(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-d", ".", srv.url(NAME, broken="content_length", times=100), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert "breaks HTTP/1.1" in line and "Content-Length" in line
    assert len(gets(srv.requests)) <= 2


# --- 14: a redirect to file:// is the server's doing ----------------------------------


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/data.bin"], ids=["file", "ftp"])
async def test_a_redirect_to_another_scheme_is_a_protocol_error(srv: RangeServer, tmp_path: Path, target: str) -> None:
    with pytest.raises(ProtocolError, match="only http:// and https:// URLs are followed") as info:
        await download(srv.url(NAME, redirect_url=target), directory=tmp_path, settings=settings())
    assert not isinstance(info.value, UsageError) and info.value.exit_code == 1
    assert len(srv.requests) == 1  # the HEAD's redirect: not retried, not followed
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_file_is_exit_1(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-d", ".", srv.url(NAME, redirect_url="file:///etc/passwd"), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert "redirected to file://" in line
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_file_after_another_hop_names_that_hop(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, redirect_url=srv.url(NAME, redirect_url="file:///etc/passwd").replace("127.0.0.1", "localhost"))
    proc = run("get", "-d", ".", url, cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert f"localhost:{srv.port} redirected to file:///etc/passwd" in line
    assert [r.method for r in srv.requests] == ["HEAD", "HEAD"]  # not retried, not followed
    assert list(tmp_path.iterdir()) == []


async def test_max_redirects_are_followed(srv: RangeServer, tmp_path: Path) -> None:
    result = await download(srv.url(NAME, redirect=MAX_REDIRECTS), directory=tmp_path, settings=settings())
    assert result.sha256 == SHA == hashlib.sha256((tmp_path / NAME).read_bytes()).hexdigest()


def test_too_many_redirects_is_one_line_exit_1(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-d", ".", srv.url(NAME, redirect=MAX_REDIRECTS + 1), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert "too many redirects" in line and f"(more than {MAX_REDIRECTS})" in line
    # The HEAD's hops, the one past the limit not followed; nothing retried.
    assert [r.method for r in srv.requests] == ["HEAD"] * (MAX_REDIRECTS + 1)
    assert list(tmp_path.iterdir()) == []


# --- 12: disk full ---------------------------------------------------------------------


async def test_a_file_larger_than_the_free_space_fails_before_any_range(srv: RangeServer, tmp_path: Path) -> None:
    # The server claims 10 TiB: no disk here has that free.
    with pytest.raises(NoSpaceError, match=r"needs 10\.0 TiB, .* free"):
        await download(srv.url(NAME, claim=10 * TiB), directory=tmp_path, settings=settings())
    assert range_gets(srv.requests) == []
    assert list(tmp_path.iterdir()) == []  # no .part, allocated or not


def test_no_space_is_one_line_at_the_command_line(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-d", ".", srv.url(NAME, claim=10 * TiB), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert "needs 10.0 TiB" in line and "free" in line
    assert list(tmp_path.iterdir()) == []


async def test_small_file_system_takes_what_fits_and_refuses_the_rest(server: RangeServer, tmpfs: Path) -> None:
    small, big = os.urandom(1_000_000), os.urandom(3_000_000)
    server.add_file("small.bin", small)
    server.add_file("big.bin", big)
    with pytest.raises(NoSpaceError, match=r"needs 2\.9 MiB, 2\.0 MiB free"):
        await download(server.url("big.bin"), directory=tmpfs, settings=settings())
    assert range_gets(server.requests) == []
    assert sorted(p.name for p in tmpfs.iterdir()) == []

    result = await download(server.url("small.bin"), directory=tmpfs, settings=settings())
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == hashlib.sha256(small).hexdigest() == result.sha256


def plenty_of_space(real: Any) -> Any:
    """``os.fstatvfs`` that reports 1 TiB free: lets fallocate itself meet ENOSPC."""

    def fake(fd: int) -> Any:
        st = real(fd)
        return SimpleNamespace(f_blocks=st.f_blocks, f_bavail=TiB // st.f_frsize, f_frsize=st.f_frsize)

    return fake


def test_fallocate_that_runs_out_gives_back_what_it_got(ext4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = shutil.disk_usage(ext4).free
    monkeypatch.setattr(os, "fstatvfs", plenty_of_space(os.fstatvfs))
    fd = os.open(ext4 / "f.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(NoSpaceError, match="No space left on device"):
            allocate(fd, 100 * 1024 * 1024)
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks) == (0, 0)
    finally:
        os.close(fd)
    assert shutil.disk_usage(ext4).free >= free - 64 * 1024  # a directory block at most


def test_part_file_that_cannot_be_allocated_leaves_nothing(ext4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = shutil.disk_usage(ext4).free
    monkeypatch.setattr(os, "fstatvfs", plenty_of_space(os.fstatvfs))
    part = PartFile(ext4 / "f.bin")
    with pytest.raises(NoSpaceError, match=re.escape(f"cannot allocate {part.part}: not enough free space")):
        part.open(100 * 1024 * 1024, keep=False)
    assert not part.part.exists()
    assert shutil.disk_usage(ext4).free >= free - 64 * 1024


# --- 13: no traceback, ever -----------------------------------------------------------


def test_no_space_for_a_checkpoint(srv: RangeServer, tmp_path: Path) -> None:
    with mounted("tmpfs", 2 * 1024 * 1024, tmp_path / "fs") as fs:
        proc = start("get", "-q", "--chunk-size", "128K", "-c", "2", "-d", ".", srv.url(NAME, **SLOW), cwd=fs)
        wait_for(fs / f"{NAME}.part", proc)  # preallocated: the data still fits, a new record does not
        fill(fs)
        done = finish(proc)
        line = assert_clean_failure(done, 1, fs / NAME)
        assert "No space left on device" in line


def test_a_symlink_planted_at_the_record_tmp(srv: RangeServer, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    work = tmp_path / "work"
    work.mkdir()
    (work / f"{NAME}.part.json.tmp").symlink_to(victim)
    proc = run("get", "-q", "--chunk-size", "128K", "-c", "2", "-d", ".", srv.url(NAME, **SLOW), cwd=work)
    line = assert_clean_failure(proc, 1, work / NAME)
    assert "cannot save the resume record" in line and "symbolic links" in line
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("length", [245, 300])
def test_an_output_name_too_long_for_its_suffixes_is_refused_up_front(
    srv: RangeServer, tmp_path: Path, length: int
) -> None:
    proc = run("get", "-o", "n" * length, srv.url(NAME), cwd=tmp_path)
    line = assert_clean_failure(proc, 2)
    assert f"is {length} bytes long" in line and "at most 241 bytes" in line
    assert srv.requests == []
    assert list(tmp_path.iterdir()) == []


def test_an_output_directory_component_too_long_is_refused(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-o", "d" * 256 + "/f.bin", srv.url(NAME), cwd=tmp_path)
    assert "at most 255 bytes" in assert_clean_failure(proc, 2)
    assert srv.requests == []


def test_a_directory_at_the_final_path_keeps_the_verified_file(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, **SLOW)
    proc = start("get", "-q", "--chunk-size", "128K", "-c", "2", "-d", ".", url, cwd=tmp_path)
    wait_for(tmp_path / f"{NAME}.part", proc)
    (tmp_path / NAME).mkdir()  # a directory where the file is to go
    (tmp_path / NAME / "inside").write_text("x")
    line = assert_clean_failure(finish(proc), 1)
    assert "cannot rename" in line and "Is a directory" in line
    assert f"kept the downloaded {(tmp_path / NAME).resolve()}.part" in line and "run the same command again" in line
    assert hashlib.sha256((tmp_path / f"{NAME}.part").read_bytes()).hexdigest() == SHA

    shutil.rmtree(tmp_path / NAME)
    first = len(srv.requests)
    proc2 = run("get", "--chunk-size", "128K", "-c", "2", "-d", ".", url, cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout == f"{SHA}  {(tmp_path / NAME).resolve()}\n"
    assert hashlib.sha256((tmp_path / NAME).read_bytes()).hexdigest() == SHA
    assert range_gets(srv.requests[first:]) == []  # only verified
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


# From the imports (about 0.4 s) through the probe into the download.  (Earlier,
# Python itself is starting, which no program can change.)
EARLIEST = ("rangefetch/__init__.py", "rangefetch/_startup.py")  # before the handler is in place
CODE = tuple(
    str(Path(p).resolve().parent) + os.sep
    for p in (rangefetch.__file__, rangefetch.producer.__file__, rangefetch.worker.__file__)
)


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.45, 0.7, 1.2])
def test_ctrl_c_at_any_moment_is_one_line(srv: RangeServer, tmp_path: Path, delay: float) -> None:
    proc = start("get", "-d", ".", srv.url(NAME, **SLOW), cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    done = finish(proc)
    frames = re.findall(r'File "([^"]+)"', done.stderr)
    ours = [f for f in frames if f.startswith(CODE) and not f.endswith(EARLIEST)]
    if frames and not ours:
        # On a loaded machine the delay can still land in Python's own start
        # (site, runpy finding the package, the package's first import, which
        # installs the handler): no program can change what Python prints there.
        assert done.returncode != 0 and not (tmp_path / NAME).exists()
        return
    assert "Traceback" not in done.stderr
    if done.returncode == -signal.SIGINT:  # before Python's own handler was in place: no output at all
        assert done.stderr == ""
        return
    assert done.returncode == 130, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rangefetch: interrupted"), done.stderr
    assert not (tmp_path / NAME).exists()


# --- 14: "the remote file changed" only when it did -----------------------------------


async def test_a_200_to_a_range_with_the_same_validators_is_not_a_change(srv: RangeServer, tmp_path: Path) -> None:
    # The first range GET is answered with the whole file, ETag and
    # Last-Modified unchanged: the server ignored Range; the file is the same.
    url = srv.url(NAME, ignore_range=1, skip=1)
    with pytest.raises(ProtocolError, match="ignored Range") as info:
        await download(url, directory=tmp_path, settings=settings(connections=1))
    assert not isinstance(info.value, RemoteChangedError)
    assert "changed" not in str(info.value)


# --- the helper used above ---------------------------------------------------------------


def test_fill_leaves_no_room(tmp_path: Path) -> None:
    with mounted("tmpfs", 256 * 1024, tmp_path / "fs") as fs:
        fill(fs)
        with pytest.raises(OSError) as info:
            (fs / "more").write_bytes(b"x" * 4096)
        assert info.value.errno == errno.ENOSPC
