"""Many files in one command (``get URL...``, ``-i FILE``, ``-j N``), ``--dry-run``, ``--json`` and the
overwrite rule, run as real subprocesses against the range server (and a real Redis and worker for
``enqueue -i``).

Every file is checked by the sha256 of its bytes on disk.  Concurrency is
counted at the server (``RangeServer.max_concurrent``), never timed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rangeserver import RangeServer, RequestRecord

from rangefetch import OutputExistsError, PartFile, sink

FILES = {f"batch-{c}.bin": os.urandom(n) for c, n in zip("abcd", (400_000, 300_001, 500_000, 200_003), strict=True)}
A, B, C, D = FILES
SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
FAST_ENV = {
    "RANGEFETCH_RETRY__BACKOFF": "0.01",
    "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05",
    "RANGEFETCH_RETRY__MAX_TRIES": "3",
    "RANGEFETCH_CHECKPOINT_INTERVAL": "0.05",
}
RANGED = ["--chunk-size", "64K", "-c", "4"]


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    for name, data in FILES.items():
        server.add_file(name, data)
    return server


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    return {**env, **FAST_ENV, **(extra or {})}


def run(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args], cwd=cwd, env=env or environment(), input=stdin,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched file bytes (not the ``bytes=0-0`` probe)."""
    return [r for r in requests if r.method == "GET" and r.headers.get("range") != "bytes=0-0"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def assert_files(paths: dict[Path, str]) -> None:
    """Each path holds the bytes of its source, and no ``.part`` is left beside it."""
    for path, name in paths.items():
        assert sha256(path) == SHA[name], path
        assert not path.with_name(path.name + ".part").exists()


def sha_lines(paths: dict[Path, str]) -> str:
    return "".join(f"{SHA[name]}  {path.resolve()}\n" for path, name in paths.items())


# --- several files ----------------------------------------------------------------


def test_several_urls(srv: RangeServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run("get", srv.url(A), srv.url(B), srv.url(C), "-d", str(out), *RANGED, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = {out / A: A, out / B: B, out / C: C}
    assert proc.stdout == sha_lines(expected)  # one line per file, in the order given
    assert_files(expected)
    assert "Traceback" not in proc.stderr


def test_input_file_with_out_dir_checksum_and_comments(srv: RangeServer, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# model shards\n"
        f"{srv.url(A)}\n"
        f"  out=first.bin\n"
        f"\n"
        f"{srv.url(B)}\n"
        f"\tdir=sub\n"
        f"\tchecksum=sha-256={SHA[B]}\n"
        f"   # an indented comment\n"
        f"{srv.url(C)}\n"
        f"  dir={tmp_path / 'other'}\n"
        f"  out=nested/third.bin\n"
        f"{srv.url(D)}\n"
    )
    proc = run("get", "-i", str(listing), "-d", "base", *RANGED, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = {
        tmp_path / "base" / "first.bin": A,  # out= is relative to -d when there is no dir=
        tmp_path / "sub" / B: B,  # dir= replaces -d, relative to the working directory, as in aria2c
        tmp_path / "other" / "nested" / "third.bin": C,
        tmp_path / "base" / D: D,
    }
    assert proc.stdout == sha_lines(expected)
    assert_files(expected)


def test_input_from_stdin_after_the_command_line_urls(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", srv.url(A), "-i", "-", *RANGED, cwd=tmp_path, stdin=f"{srv.url(B)}\n{srv.url(C)}\n")
    assert proc.returncode == 0, proc.stderr
    expected = {tmp_path / A: A, tmp_path / B: B, tmp_path / C: C}
    assert proc.stdout == sha_lines(expected)
    assert_files(expected)


def test_one_failing_file_keeps_the_good_ones(srv: RangeServer, tmp_path: Path) -> None:
    wrong = "0" * 64
    stdin = f"{srv.url(A)}\n{srv.url('batch-missing.bin')}\n{srv.url(B)}\n  checksum=sha256={wrong}\n{srv.url(C)}\n"
    proc = run("get", "-i", "-", *RANGED, cwd=tmp_path, stdin=stdin)
    assert proc.returncode == 1
    good = {tmp_path / A: A, tmp_path / C: C}
    assert proc.stdout == sha_lines(good)  # only the files that are there
    assert_files(good)
    assert not (tmp_path / "batch-missing.bin").exists() and not (tmp_path / B).exists()
    assert (tmp_path / f"{B}.part").exists()  # a checksum mismatch keeps the verified .part
    lines = proc.stderr.splitlines()
    assert "rangefetch: error: batch-missing.bin: HTTP 404 Not Found from 127.0.0.1" in lines[0:3]
    assert any(line.startswith(f"rangefetch: error: {B}: sha256 mismatch") for line in lines)
    assert lines[-1] == "rangefetch: error: 2 of 4 files failed"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("listing", "args", "message"),
    [
        ("  out=x.bin\nURL_A\n", (), "line 1: an indented option line before any URL"),
        ("URL_A\n  split=5\n", (), "line 2: unknown option 'split'"),
        ("URL_A\n  out\n", (), "line 2: 'out' is not NAME=VALUE"),
        ("URL_A\n  out=a\n  out=b\n", (), "line 3: out= is given twice"),
        ("URL_A\n  checksum=sha256=abc\n", (), "line 1: invalid checksum"),
        ("URL_A\nftp://127.0.0.1/x\n", (), "line 2: unsupported URL scheme ftp://"),
        ("URL_A\tURL_B\n", (), "line 1: one URL a line"),
        ("URL_A\nURL_B\n", ("-o", "x.bin"), "-o is for one file"),
        ("URL_A\nURL_B\n", ("--checksum", f"sha256={'0' * 64}"), "--checksum is for one file"),
        ("URL_A\nURL_A\n", (), "line 2: the same file as"),
        ("URL_A\n  out=same.bin\nURL_B\n  out=same.bin\n", (), "line 3: the same file as"),
        ("URL_A\n  out=newdir/\n", (), "names a directory"),
        ("# nothing but a comment\n", (), "no URL given"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_input_is_a_usage_error_before_any_request(
    srv: RangeServer, tmp_path: Path, listing: str, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "list.txt").write_text(listing.replace("URL_A", srv.url(A)).replace("URL_B", srv.url(B)))
    before = snapshot(tmp_path)
    proc = run("get", "-i", "list.txt", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("rangefetch: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert srv.requests == []
    assert snapshot(tmp_path) == before


def test_the_same_url_twice_is_refused_without_showing_its_secret(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(A, token="s3cr3t-t0ken")
    proc = run("get", url, srv.url(B), url, cwd=tmp_path)
    assert proc.returncode == 2
    assert "the same file as URL http://127.0.0.1" in proc.stderr and proc.stderr.count("\n") == 1
    assert "s3cr3t-t0ken" not in proc.stderr
    assert srv.requests == [] and list(tmp_path.iterdir()) == []


def test_missing_input_file_is_a_usage_error(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", "-i", "nosuch.txt", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "rangefetch: error: cannot read the input file nosuch.txt: No such file or directory\n"


# --- one connection budget ----------------------------------------------------------


def paced(srv: RangeServer, key: str) -> list[str]:
    """URLs of three files served at 256 KB/s per connection: 64 KiB ranges take a quarter second each."""
    return [srv.url(name, rate=256 * 1024, key=key) for name in (A, B, C)]


def first_index(requests: list[RequestRecord], name: str) -> int:
    return next(i for i, r in enumerate(requests) if r.name == name)


def last_index(requests: list[RequestRecord], name: str) -> int:
    return max(i for i, r in enumerate(requests) if r.name == name)


def test_files_at_once_share_the_connections(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *paced(srv, "j3"), "-j", "3", *RANGED, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_files({tmp_path / A: A, tmp_path / B: B, tmp_path / C: C})
    # 3 files of 5 to 8 ranges each, 4 connections in all: never 4 per file.
    assert srv.max_concurrent <= 4
    requests = srv.requests
    assert first_index(requests, C) < last_index(requests, A)  # the files ran at the same time
    for record in map(json.loads, proc.stdout.splitlines()):
        assert 1 <= record["connections"] <= 4


def test_one_file_at_a_time(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *paced(srv, "j1"), "-j", "1", *RANGED, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_files({tmp_path / A: A, tmp_path / B: B, tmp_path / C: C})
    requests = srv.requests
    assert last_index(requests, A) < first_index(requests, B)
    assert last_index(requests, B) < first_index(requests, C)
    assert srv.max_concurrent <= 4


# --- --dry-run ------------------------------------------------------------------------


def test_dry_run_creates_nothing_and_fetches_nothing(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(A, redirect=1, token="s3cr3t-t0ken")
    before = snapshot(tmp_path)
    proc = run("get", url, "-d", "new/dir", *RANGED, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tmp_path) == before  # not even -d's directory
    assert range_gets(srv.requests) == []
    out = proc.stdout
    assert "s3cr3t-t0ken" not in out + proc.stderr
    assert re.search(r"^  final URL  http://127\.0\.0\.1:\d+/f/batch-a\.bin\?", out, re.M), out
    assert "  size       400000 bytes (390.6 KiB)\n" in out
    assert "  ranges     yes\n" in out
    assert re.search(r'^  validator  ETag "[0-9a-f]{16}", Last-Modified \w{3}, ', out, re.M), out
    assert f"  output     {tmp_path / 'new' / 'dir' / A} (would be created)\n" in out
    assert "  plan       7 ranges of 64.0 KiB, 4 connections\n" in out


def test_dry_run_json_tells_what_would_happen_to_each_file(srv: RangeServer, tmp_path: Path) -> None:
    (tmp_path / A).write_bytes(b"something else")
    proc = run("get", srv.url(A), srv.url(B, norange=1), srv.url("batch-missing.bin"), "--dry-run", "--json",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    first, second, third = map(json.loads, proc.stdout.splitlines())
    assert (first["action"], first["size"], first["accepts_ranges"], first["ok"]) == ("refuse", 400_000, True, True)
    assert first["path"] == str(tmp_path / A)
    assert (second["action"], second["accepts_ranges"], second["ranges"], second["connections"]) == (
        "create", False, 1, 1,
    )  # fmt: skip
    assert third["ok"] is False and "404" in third["error"]
    assert (tmp_path / A).read_bytes() == b"something else"
    assert sorted(p.name for p in tmp_path.iterdir()) == [A]
    assert range_gets(srv.requests) == []


# --- --json -----------------------------------------------------------------------------


def test_json_is_one_object_per_file_and_nothing_else(srv: RangeServer, tmp_path: Path) -> None:
    urls = [srv.url(A, drop=30_000, times=3, key="json"), srv.url(B), srv.url("batch-missing.bin")]
    proc = run("get", *urls, *RANGED, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["ok"] for r in records] == [True, True, False]
    for record, name in zip(records[:2], (A, B), strict=True):
        assert record["path"] == str(tmp_path / name)
        assert record["sha256"] == SHA[name] == sha256(tmp_path / name)
        assert record["size"] == len(FILES[name])
        assert record["seconds"] > 0 and record["mb_per_s"] > 0
        assert 1 <= record["connections"] <= 4
        assert record["error"] is None and record["already_complete"] is False
    assert records[0]["retries"] >= 1  # the dropped connection was retried
    assert records[1]["retries"] == 0
    failed = records[2]
    assert failed["path"] is None and failed["sha256"] is None and "HTTP 404" in failed["error"]
    assert "batch-missing.bin: HTTP 404" in proc.stderr  # progress and errors stay on stderr


def test_json_for_one_file(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", srv.url(A), *RANGED, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = map(json.loads, proc.stdout.splitlines())
    assert record["sha256"] == SHA[A] == sha256(tmp_path / A)
    assert record["connections"] == 4


# --- never silently replace a file -----------------------------------------------------------


@pytest.mark.parametrize("given", [False, True], ids=["server-name", "dash-o"])
def test_a_different_file_is_kept(srv: RangeServer, tmp_path: Path, given: bool) -> None:
    mine = tmp_path / A
    mine.write_bytes(b"my own notes")
    args = ["-o", A] if given else []
    proc = run("get", srv.url(A), *args, *RANGED, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"rangefetch: error: {mine} already exists and has 12 bytes, the remote file 400000: "
        "not replaced (--allow-overwrite replaces it)\n"
    )
    assert mine.read_bytes() == b"my own notes"
    assert range_gets(srv.requests) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [A]

    again = run("get", srv.url(A), *args, *RANGED, "--allow-overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == sha_lines({mine: A})
    assert_files({mine: A})


def test_a_file_of_the_same_size_and_another_date_is_kept(srv: RangeServer, tmp_path: Path) -> None:
    mine = tmp_path / A
    mine.write_bytes(bytes(len(FILES[A])))  # the remote size, other bytes, today's date
    proc = run("get", srv.url(A), *RANGED, cwd=tmp_path)
    assert proc.returncode == 1
    assert "has the remote size, but not the remote Last-Modified: not replaced" in proc.stderr
    assert mine.read_bytes() == bytes(len(FILES[A]))


def test_a_rerun_of_a_complete_download_fetches_nothing(srv: RangeServer, tmp_path: Path) -> None:
    first = run("get", srv.url(A), *RANGED, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    path = tmp_path / A
    before = path.stat()
    srv.reset()
    again = run("get", srv.url(A), *RANGED, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout == sha_lines({path: A})
    assert again.stderr == f"rangefetch: {path} is already complete\n"
    assert range_gets(srv.requests) == []  # the probe only
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # the same file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [A]


def test_a_rerun_of_a_batch_fetches_only_what_is_missing(srv: RangeServer, tmp_path: Path) -> None:
    assert run("get", srv.url(A), *RANGED, cwd=tmp_path).returncode == 0
    srv.reset()
    proc = run("get", srv.url(A), srv.url(B), *RANGED, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = map(json.loads, proc.stdout.splitlines())
    assert (first["already_complete"], first["connections"], first["sha256"]) == (True, 0, SHA[A])
    assert second["already_complete"] is False
    assert {r.name for r in range_gets(srv.requests)} == {B}
    assert_files({tmp_path / A: A, tmp_path / B: B})


def test_a_matching_checksum_tells_an_existing_file_is_complete(srv: RangeServer, tmp_path: Path) -> None:
    mine = tmp_path / A
    mine.write_bytes(FILES[A])  # the right bytes, but not the server's date: only the checksum can tell
    proc = run("get", srv.url(A), "--checksum", f"sha256={SHA[A]}", *RANGED, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == sha_lines({mine: A})
    assert range_gets(srv.requests) == []
    wrong = run("get", srv.url(A), "--checksum", f"sha256={'1' * 64}", *RANGED, cwd=tmp_path)
    assert wrong.returncode == 1
    assert "does not match the --checksum given: not replaced" in wrong.stderr


def test_a_file_that_appears_during_the_download_is_not_replaced(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(A, rate=64 * 1024, key="appears")  # about 1.5 s over 4 connections
    proc = subprocess.Popen(
        [sys.executable, "-m", "rangefetch", "get", url, *RANGED, "-q"], cwd=tmp_path, env=environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / f"{A}.part").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        (tmp_path / A).write_bytes(b"written meanwhile")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert out == ""
    assert err.startswith(f"rangefetch: error: {tmp_path / A} already exists and is not replaced; kept the downloaded")
    assert "run again with --allow-overwrite without downloading again" in err
    assert (tmp_path / A).read_bytes() == b"written meanwhile"
    srv.reset()
    again = run("get", url, *RANGED, "--allow-overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert range_gets(srv.requests) == []  # only verified
    assert_files({tmp_path / A: A})


def test_commit_never_replaces_a_file_unless_told(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "f.bin")
    fd = part.open(3, keep=False)
    os.pwrite(fd, b"new", 0)
    os.close(fd)
    part.final.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="f.bin already exists and is not replaced"):
        part.commit(last_modified="Tue, 01 Dec 2026 07:20:38 GMT")
    assert part.final.read_bytes() == b"old" and part.part.read_bytes() == b"new"
    part.final.unlink()
    part.final.symlink_to(tmp_path / "nowhere")  # a dangling symlink is something too
    with pytest.raises(OutputExistsError):
        part.commit()
    part.commit(replace=True, last_modified="Tue, 01 Dec 2026 07:20:38 GMT")
    assert not part.final.is_symlink() and part.final.read_bytes() == b"new"
    server_date = datetime(2026, 12, 1, 7, 20, 38, tzinfo=UTC).timestamp()
    assert part.final.stat().st_mtime == server_date  # the server's date, for a later run to recognise


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "hard-link"])
def test_rename_noreplace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool) -> None:
    if not renameat2:  # a C library (or file system) without RENAME_NOREPLACE: the hard-link way
        monkeypatch.setattr(sink, "_libc", object())
    source, target = tmp_path / "f.part", tmp_path / "f"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        sink.rename_noreplace(source, target)
    assert (source.read_bytes(), target.read_bytes()) == (b"new", b"old")
    target.unlink()
    sink.rename_noreplace(source, target)
    assert target.read_bytes() == b"new" and not source.exists()


# --- distributed: enqueue -i, status ID... ------------------------------------------------------------


@pytest.mark.redis
def test_enqueue_from_an_input_file_and_status_of_the_ids(
    srv: RangeServer, redis_url: str, download_dir: Path, start_worker: object, tmp_path: Path
) -> None:
    env = environment({"RANGEFETCH_REDIS_URL": redis_url, "RANGEFETCH_DOWNLOAD_DIR": str(download_dir)})
    (download_dir / C).write_bytes(b"already here")
    listing = f"{srv.url(A)}\n  dir=shards\n{srv.url(B)}\n  out=b/two.bin\n{srv.url(C)}\n"
    enq = run("enqueue", "-i", "-", "--chunk-size", "64K", cwd=tmp_path, stdin=listing, env=env)
    assert enq.returncode == 1
    ids = enq.stdout.split()
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), enq.stdout
    assert enq.stderr.splitlines() == [
        f"rangefetch: error: {C}: {download_dir / C} already exists and has 12 bytes, the remote file 500000: "
        "not replaced; move it away to download again",
        "rangefetch: error: 1 of 3 files were not queued",
    ]
    listed = run("status", *ids, "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [r["gid"] for r in json.loads(listed.stdout)] == ids
    assert start_worker is not None
    start_worker()  # type: ignore[operator]
    for did in ids:
        done = run("wait", did, "--max-time", "60", cwd=tmp_path, env=env, timeout=90)
        assert done.returncode == 0, done.stderr
    assert_files({download_dir / "shards" / A: A, download_dir / "b" / "two.bin": B})
    assert (download_dir / C).read_bytes() == b"already here"
    text = run("status", *ids, cwd=tmp_path, env=env)
    assert text.returncode == 0 and [line.split()[:3] for line in text.stdout.splitlines()[:1]] == [
        [ids[0], A, "complete"]
    ]


@pytest.mark.redis
def test_the_finalizer_does_not_replace_a_file_that_appeared(
    srv: RangeServer, redis_url: str, download_dir: Path, start_worker: object, tmp_path: Path
) -> None:
    env = environment({"RANGEFETCH_REDIS_URL": redis_url, "RANGEFETCH_DOWNLOAD_DIR": str(download_dir)})
    enq = run("enqueue", srv.url(A), "--chunk-size", "64K", cwd=tmp_path, env=env)
    assert enq.returncode == 0, enq.stderr
    (download_dir / A).write_bytes(b"written meanwhile")  # after enqueue checked, before the rename
    start_worker()  # type: ignore[operator]
    done = run("wait", enq.stdout.strip(), "--max-time", "60", cwd=tmp_path, env=env, timeout=90)
    assert done.returncode == 1
    assert f"{download_dir / A} already exists and is not replaced" in done.stderr
    assert (download_dir / A).read_bytes() == b"written meanwhile"
    assert sha256(download_dir / f"{A}.part") == SHA[A]  # the verified download is kept beside it
