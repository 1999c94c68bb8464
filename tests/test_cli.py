"""End-to-end tests of ``rangefetch get``, run as a real subprocess against the range server.

Every download is checked by the sha256 of the file on disk.  A clean failure
means: the documented exit code (1 download failed, 2 usage error), one line
on stderr and no traceback, nothing on stdout, and no file at the final path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from byteranges import overlap, total
from rangeserver import RangeServer, RequestRecord

import rangefetch.producer.cli
import rangefetch.worker.cli
from rangefetch.runner import setup_logging

DATA = os.urandom(1_000_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "data.bin"
FAST_ENV = {
    "RANGEFETCH_RETRY__BACKOFF": "0.01",
    "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05",
    "RANGEFETCH_RETRY__MAX_TRIES": "4",
    "RANGEFETCH_CHECKPOINT_INTERVAL": "0.05",
}
RANGED = ["--chunk-size", "256K", "-c", "4"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rangefetch", *args]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without RANGEFETCH_* settings, plus fast retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    return {**env, **FAST_ENV, **(extra or {})}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=cwd, env=environment(env), capture_output=True, text=True, timeout=60, check=False
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_range(value: str) -> tuple[int, int]:
    first, _, last = value.removeprefix("bytes=").partition("-")
    return int(first), int(last)


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched file ranges (not the ``bytes=0-0`` probe)."""
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def assert_success(proc: subprocess.CompletedProcess[str], path: Path, digest: str = SHA) -> None:
    """Exit 0, the file holds the expected bytes, and stdout is ``<sha256>  <path>``."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == f"{digest}  {path.resolve()}\n"
    assert sha256(path) == digest
    assert not path.with_name(path.name + ".part").exists()
    assert not path.with_name(path.name + ".part.json").exists()


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, final: Path | None = None) -> str:
    """The documented exit code, one error line, no traceback, no output; returns the line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rangefetch: error: ")
    if final is not None:
        assert not final.exists()
    return lines[0]


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


# --- success (the API tests in test_download.py cover every server fault; these check the command) ---


def test_get_into_directory(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *RANGED, "-d", "dl", srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / "dl" / NAME)
    assert proc.stderr == ""  # a fast download on a non-terminal: no progress line yet
    gets = range_gets(srv.requests)
    assert len(gets) == 4
    assert srv.max_concurrent <= 4
    assert all(r.headers.get("accept-encoding") == "identity" for r in srv.requests)
    assert all(r.headers.get("if-range") for r in gets)


def test_get_with_output(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *RANGED, "-o", "out.bin", srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / "out.bin")


def test_get_into_cwd_by_url_name(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *RANGED, srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)


@pytest.mark.parametrize("size", [0, 1, 17])
def test_tiny_files(server: RangeServer, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    server.add_file(f"tiny{size}", data)
    proc = run("get", *RANGED, "-d", ".", server.url(f"tiny{size}"), cwd=tmp_path)
    assert_success(proc, tmp_path / f"tiny{size}", hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    "faults",
    [
        {"norange": 1},
        {"acceptranges_none": 1},
        {"nolength": 1, "chunked": 1},
        {"nohead": 405},
        {"gzip": 1},
        {"rate": 2_000_000},
        {"drop": 100_000, "times": 3},
    ],
    ids=lambda f: "_".join(f"{k}{v}" for k, v in f.items()),
)
def test_awkward_servers(srv: RangeServer, tmp_path: Path, faults: dict[str, object]) -> None:
    proc = run("get", "-q", *RANGED, "-d", ".", srv.url(NAME, **faults), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)
    assert all(r.headers.get("accept-encoding") == "identity" for r in srv.requests)
    if "drop" in faults:
        starts = [parse_range(r.headers["range"])[0] for r in range_gets(srv.requests)]
        assert any(s % (256 * 1024) for s in starts)  # a retry picked up past a range's start


def test_stall_is_retried(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, stall=5, stall_after=50_000, times=2)
    proc = run("get", "-q", *RANGED, "-d", ".", url, cwd=tmp_path, env={"RANGEFETCH_TIMEOUTS__STALL": "1"})
    assert_success(proc, tmp_path / NAME)


@pytest.mark.parametrize(
    "faults",
    [{"status": 503, "retry_after": 1}, {"status": 429, "retry_after": 1}],
    ids=["503", "429"],
)
def test_server_busy_is_retried(srv: RangeServer, tmp_path: Path, faults: dict[str, int]) -> None:
    proc = run("get", "-q", *RANGED, "-d", ".", srv.url(NAME, **faults), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)
    assert [r.status for r in srv.requests if r.method == "GET"].count(faults["status"]) == 1


def test_redirect_chain_names_by_final_url(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *RANGED, "-d", "dl", srv.url(NAME, redirect=3), cwd=tmp_path)
    assert_success(proc, tmp_path / "dl" / NAME)


def test_redirect_to_other_name(srv: RangeServer, tmp_path: Path) -> None:
    other = os.urandom(300_000)
    srv.add_file("other.bin", other)
    proc = run("get", *RANGED, "-d", "dl", srv.url(NAME, redirect_to="other.bin"), cwd=tmp_path)
    assert_success(proc, tmp_path / "dl" / "other.bin", hashlib.sha256(other).hexdigest())


@pytest.mark.parametrize("faults", [{"cd": "../../evil.txt"}, {"cd_star": "../../evil.txt"}], ids=["cd", "cd_star"])
def test_disposition_stays_inside_directory(srv: RangeServer, tmp_path: Path, faults: dict[str, object]) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    proc = run("get", *RANGED, "-d", "dl", srv.url(NAME, **faults), cwd=work)
    assert_success(proc, work / "dl" / "evil.txt")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["a", "a/b", "a/b/dl", "a/b/dl/evil.txt"]


# --- checksums ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_checksum_accepted(srv: RangeServer, tmp_path: Path, algorithm: str) -> None:
    expected = f"{algorithm}={hashlib.new(algorithm, DATA).hexdigest()}"
    proc = run("get", *RANGED, "--checksum", expected, "-d", ".", srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)


def test_checksum_mismatch_keeps_the_file_for_the_right_checksum(srv: RangeServer, tmp_path: Path) -> None:
    wrong = "sha256=" + hashlib.sha256(b"not it").hexdigest()
    proc = run("get", *RANGED, "--checksum", wrong, "-d", ".", srv.url(NAME), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    part = (tmp_path / f"{NAME}.part").resolve()
    assert "sha256 mismatch" in line and f"got {SHA}" in line
    assert f"kept the downloaded {part} (976.6 KiB) and its record" in line
    assert "run again with the right --checksum to check it without downloading again" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.part", f"{NAME}.part.json"]
    assert sha256(part) == SHA

    first = len(srv.requests)
    proc = run("get", *RANGED, "--checksum", f"sha256={SHA}", "-d", ".", srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)
    assert range_gets(srv.requests[first:]) == []  # verified, not downloaded again
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


@pytest.mark.parametrize("value", ["sha256=zz", "crc32=00000000", "sha256", "md5=" + "0" * 31])
def test_malformed_checksum(srv: RangeServer, tmp_path: Path, value: str) -> None:
    proc = run("get", "--checksum", value, "-d", ".", srv.url(NAME), cwd=tmp_path)
    assert_clean_failure(proc, 2, tmp_path / NAME)
    assert srv.requests == []


# --- clean failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "expect"),
    [
        ({"status": 404}, "HTTP 404"),
        ({"status": 410}, "HTTP 410"),
        ({"status": 403}, "HTTP 403"),
        ({"status": 500, "times": 100}, "gave up after 4 tries"),
        ({"wrong_range": 1}, "Content-Range"),
        # Current behaviour: a body one byte short counts as a dropped
        # connection; the resumed one-byte request comes back empty until
        # the retries run out.
        ({"short": 1}, "gave up after 4 tries"),
    ],
    ids=["404", "410", "403", "500_forever", "wrong_range", "short"],
)
def test_download_failure(srv: RangeServer, tmp_path: Path, faults: dict[str, object], expect: str) -> None:
    proc = run("get", *RANGED, "-d", ".", srv.url(NAME, **faults), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert expect in line


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run("get", "-d", ".", f"http://127.0.0.1:{port}/f/{NAME}", cwd=tmp_path)
    assert_clean_failure(proc, 1, tmp_path / NAME)
    assert list(tmp_path.iterdir()) == []


def test_remote_changes_during_download(srv: RangeServer, tmp_path: Path) -> None:
    proc = run("get", *RANGED, "-d", ".", srv.url(NAME, etag_change_after=2), cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / NAME)
    assert "changed" in line

    proc = run("get", *RANGED, "-d", ".", srv.url(NAME, key="fresh"), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)


@pytest.mark.parametrize(
    "args",
    [
        ["file:///etc/passwd"],
        ["ftp://127.0.0.1/data.bin"],
        ["not a url"],
        ["http://"],
        ["-H", "no colon here", "URL"],
        ["-o", "x.bin", "-d", "dl", "URL"],
        ["--chunk-size", "lots", "URL"],
        ["--chunk-size", "0", "URL"],
        ["--chunk-size", "1k", "URL"],
        ["-c", "0", "URL"],
        ["-o", "newdir/", "URL"],
        ["-o", "x" * 245, "URL"],
    ],
    ids=[
        "file", "ftp", "garbage", "no_host", "bad_header", "output_and_dir", "chunk_size_word", "chunk_size_0",
        "chunk_size_1k", "c0", "output_dir_slash", "output_too_long",
    ],
)  # fmt: skip
def test_usage_error(srv: RangeServer, tmp_path: Path, args: list[str]) -> None:
    args = [srv.url(NAME) if a == "URL" else a for a in args]
    proc = run("get", *args, cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert srv.requests == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("get",), "no URL given"),  # URLs come from the command line or -i FILE
        (("get", "--bogus", "http://x/"), "--bogus"),
        (("get", "-c", "abc", "http://x/"), "'abc' is not a valid integer"),
        (("nosuchcommand",), "No such command 'nosuchcommand'"),
    ],
)
def test_click_usage_error_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- output ---------------------------------------------------------------------


def test_quiet_silences_warnings(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, headlies=1)  # makes the probe log a warning
    loud = run("get", *RANGED, "-o", "loud.bin", url, cwd=tmp_path)
    assert_success(loud, tmp_path / "loud.bin")
    assert "trusting GET" in loud.stderr

    quiet = run("get", "-q", *RANGED, "-o", "quiet.bin", url, cwd=tmp_path)
    assert_success(quiet, tmp_path / "quiet.bin")
    assert quiet.stderr == ""


def test_progress_lines_when_not_a_terminal(srv: RangeServer, tmp_path: Path) -> None:
    # Two connections at 80 KB/s each need over six seconds for 1 MB: long
    # enough for the plain progress line, which comes every five seconds.
    proc = run("get", "--chunk-size", "128K", "-c", "2", "-d", ".", srv.url(NAME, rate=80_000), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)
    assert re.search(r"^rangefetch: [\d.]+ \w+ / 976\.6 KiB \(\d+%\), ", proc.stderr, re.MULTILINE), proc.stderr


# --- interrupt and resume -------------------------------------------------------


def interrupt(url: str, cwd: Path) -> list[str]:
    """Run ``get`` until a range is on record, stop it with SIGINT; return the ranges recorded."""
    record = cwd / f"{NAME}.part.json"
    args = command("get", "--chunk-size", "128K", "-c", "2", "-d", ".", url)
    proc = subprocess.Popen(args, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1000):
            try:
                if json.loads(record.read_text())["done"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines() == ["rangefetch: interrupted; run the same command again to resume"]
    assert not (cwd / NAME).exists()
    assert (cwd / f"{NAME}.part").exists()
    done: list[str] = json.loads(record.read_text())["done"]
    assert done
    return done


def test_resume_after_sigint(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, rate=512 * 1024)
    done = interrupt(url, tmp_path)
    first = len(srv.requests)

    proc = run("get", "--chunk-size", "128K", "-c", "2", "-d", ".", url, cwd=tmp_path)
    assert_success(proc, tmp_path / NAME)
    kept = [parse_range(text) for text in done]
    fetched = [parse_range(r.headers["range"]) for r in range_gets(srv.requests[first:])]
    assert not overlap(fetched, kept)
    assert sum(end - start + 1 for start, end in fetched) == len(DATA) - total(kept)


def test_resume_after_remote_changed_starts_over(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, rate=512 * 1024)
    interrupt(url, tmp_path)
    new = os.urandom(len(DATA))
    srv.add_file(NAME, new)  # same name and size, new content and ETag
    first = len(srv.requests)

    proc = run("get", "--chunk-size", "128K", "-c", "2", "-d", ".", srv.url(NAME), cwd=tmp_path)
    assert_success(proc, tmp_path / NAME, hashlib.sha256(new).hexdigest())
    fetched = [parse_range(r.headers["range"]) for r in range_gets(srv.requests[first:])]
    assert sum(end - start + 1 for start, end in fetched) == len(new)


@pytest.mark.parametrize("scheme", ["ftp", "http"])
def test_secrets_in_the_url_never_reach_stderr(srv: RangeServer, tmp_path: Path, scheme: str) -> None:
    # ftp: a usage error; http: a 404 from the server.  Neither may echo the password or token.
    url = srv.url("missing-file", token="tok3n-value").replace("http://", f"{scheme}://user:hunter2@")
    proc = run("get", "-o", "out.bin", "-H", "Authorization: Bearer s3cr3t", url, cwd=tmp_path)
    assert proc.returncode in (1, 2)
    assert "Traceback" not in proc.stderr
    for secret in ("hunter2", "tok3n-value", "s3cr3t"):
        assert secret not in proc.stderr
        assert secret not in proc.stdout
    assert not (tmp_path / "out.bin").exists()


def test_one_logging_setup_for_every_command() -> None:
    assert rangefetch.producer.cli.setup_logging is setup_logging
    assert rangefetch.worker.cli.setup_logging is setup_logging
    script = (
        "import logging, sys\n"
        "from rangefetch.runner import setup_logging\n"
        "setup_logging(int(sys.argv[1]), sys.argv[2] == 'q')\n"
        "print(logging.getLogger().level, logging.getLogger('httpx').level, logging.getLogger('httpcore').level)\n"
    )
    levels = {
        args: subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
        ).stdout.split()
        for args in (("0", ""), ("1", ""), ("2", ""), ("2", "q"))
    }
    assert levels == {
        ("0", ""): ["30", "30", "30"],
        ("1", ""): ["20", "30", "30"],
        ("2", ""): ["10", "30", "30"],
        ("2", "q"): ["40", "30", "30"],
    }


# --- slow peers: the flags (behaviour in test_slow.py and test_distributed_slow.py) ---

SPEED_LIMIT_FLAG = "-Y, --speed-limit, --lowest-speed-limit BYTES"


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("get", [SPEED_LIMIT_FLAG, "-y, --speed-time SECONDS", "-m, --max-time SECONDS"]),
        ("worker", [SPEED_LIMIT_FLAG, "-y, --speed-time SECONDS"]),
        ("wait", ["-m, --max-time SECONDS"]),
    ],
)
def test_slow_peer_flags(name: str, flags: list[str], tmp_path: Path) -> None:
    proc = run(name, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-time", "-1"], "Invalid value for '-m' / '--max-time'"),
        (["--speed-time", "0"], "Invalid value for '-y' / '--speed-time'"),
        (["--speed-limit", "-5"], "invalid size '-5'"),
    ],
)
def test_bad_slow_peer_values_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run("get", "http://127.0.0.1:9/x.bin", *args, cwd=tmp_path)
    assert message in assert_clean_failure(proc, 2)
