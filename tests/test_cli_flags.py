"""Flags for what was only a setting, aria2c's and curl's spellings, and two small courtesies (issue #11).

``--max-tries``, ``--retry-wait``, ``--connect-timeout``, ``-A``, ``-x N``
and ``--continue`` on ``get`` (and the worker's own in
tests/test_distributed_ratelimit.py); a URL without a scheme taken as
``http://``, as curl does; one line for a server without ranges.  Each is
run as ``rangefetch get`` against the range server, its effect counted
there (tries, connections, the User-Agent it saw), the file checked by sha256.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rangeserver import RangeServer, RequestRecord

import rangefetch.worker.cli
from rangefetch import Settings, UsageError, check_url

DATA = os.urandom(1_000_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "flags.bin"
FAST_ENV = {
    "RANGEFETCH_RETRY__BACKOFF": "0.01",
    "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05",
    "RANGEFETCH_RETRY__MAX_TRIES": "4",
    "RANGEFETCH_CHECKPOINT_INTERVAL": "0.05",
}


def get(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", "get", *args],
        cwd=cwd, env={**base, **FAST_ENV, **(env or {})}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with ``code`` and one line on stderr, no traceback; that line."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rangefetch: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


# --- retries and connecting ------------------------------------------------------------


def test_max_tries_bounds_the_tries_of_a_range(srv: RangeServer, tmp_path: Path) -> None:
    # Every range GET answers 503 (the probe's GET, the first, is spared); the
    # environment says 4 tries, the flag 2, and the flag wins.
    url = srv.url(NAME, status=503, skip=1, times=100)
    proc = get(url, "-o", "out.bin", "-c", "1", "--chunk-size", "1M", "--max-tries", "2", cwd=tmp_path)
    assert "gave up after 2 tries" in one_line(proc, 1)
    assert len(range_gets(srv.requests_for(NAME))) == 2
    assert not (tmp_path / "out.bin").exists()


def test_retry_wait_sets_the_first_wait(srv: RangeServer, tmp_path: Path) -> None:
    # The first retry waits retry-wait x a jitter of 0.5-1 (the environment's 0.01 s
    # would show "retrying in 1 s"); --max-time ends the command meanwhile.
    url = srv.url(NAME, status=503, skip=1, times=1)  # the first range GET (the probe GET is spared)
    proc = get(
        url, "-o", "out.bin", "-c", "1", "--chunk-size", "1M", "--retry-wait", "20", "--max-time", "2", cwd=tmp_path
    )
    assert "gave up after 2 s (--max-time)" in one_line(proc, 1)
    waits = [int(s) for s in re.findall(r"retrying in (\d+) s \(HTTP 503\)", proc.stderr)]
    assert waits and all(10 <= w <= 20 for w in waits), proc.stderr


def test_a_retry_wait_above_the_cap_lifts_it() -> None:
    settings = Settings(retry={"backoff": 60})
    assert settings.retry.backoff_max == 60
    assert Settings(retry={"backoff": 60, "backoff_max": 10}).retry.backoff_max == 60  # a cap below the base
    assert Settings(retry={"backoff": 2}).retry.backoff_max == 30


@pytest.fixture
def unanswered() -> Iterator[int]:
    """A port whose accept queue is full: a connection to it is never answered (the SYN is dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one place in the queue
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def test_connect_timeout_gives_up_on_a_connection_that_never_opens(unanswered: int, tmp_path: Path) -> None:
    # The default (15 s) would outlast --max-time, which would then be the message.
    url = f"http://127.0.0.1:{unanswered}/x.bin"
    proc = get(url, "--connect-timeout", "0.5", "--max-time", "10", cwd=tmp_path)
    assert f"timed out connecting to 127.0.0.1:{unanswered}" in one_line(proc, 1)


# --- requests ----------------------------------------------------------------------------


def test_user_agent_is_sent_on_every_request(srv: RangeServer, tmp_path: Path) -> None:
    proc = get(srv.url(NAME), "-o", "out.bin", "-A", "Mozilla/5.0 (flags)", "--chunk-size", "256K", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "out.bin") == SHA
    agents = {r.headers.get("user-agent") for r in srv.requests_for(NAME)}
    assert agents == {"Mozilla/5.0 (flags)"}
    assert len(range_gets(srv.requests_for(NAME))) == 4


def test_a_user_agent_header_wins_over_the_flag(srv: RangeServer, tmp_path: Path) -> None:
    # As in curl: -H 'User-Agent: ...' replaces what -A set.
    proc = get(srv.url(NAME), "-o", "out.bin", "--user-agent", "flag", "-H", "user-agent: header", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {r.headers.get("user-agent") for r in srv.requests_for(NAME)} == {"header"}


def test_without_the_flag_the_user_agent_is_rangefetchs(srv: RangeServer, tmp_path: Path) -> None:
    proc = get(srv.url(NAME), "-o", "out.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {r.headers.get("user-agent") for r in srv.requests_for(NAME)} == {"rangefetch/0.1"}


def test_aria2c_x_is_connections(srv: RangeServer, tmp_path: Path) -> None:
    # -x with a number is aria2c's connections per server: one connection
    # fetches all 16 ranges (with -c 16, the default, many would).
    proc = get(srv.url(NAME), "-o", "out.bin", "-x", "1", "--chunk-size", "64K", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "out.bin") == SHA
    gets = range_gets(srv.requests_for(NAME))
    assert len(gets) == 16
    assert len({r.client for r in gets}) == 1
    assert srv.max_concurrent == 1


def test_aria2c_x_and_c_together_is_a_usage_error(tmp_path: Path) -> None:
    proc = get("http://127.0.0.1:9/x.bin", "-x", "4", "-c", "8", cwd=tmp_path)
    assert "give one of -c and -x" in one_line(proc, 2)


def test_x_with_a_url_is_still_the_proxy(tmp_path: Path) -> None:
    # curl's -x: nothing listens on port 9, so the proxy is refused, and the message says so.
    proc = get("http://127.0.0.1:9/x.bin", "-x", "http://127.0.0.1:9", "--max-time", "20", cwd=tmp_path)
    assert "could not connect to the proxy 127.0.0.1:9" in one_line(proc, 1)


def test_continue_is_accepted_and_a_rerun_resumes(srv: RangeServer, tmp_path: Path) -> None:
    # The first run gives up half-way (each response paced at 100 kB/s); the
    # second, with --continue (resuming is always on anyway), fetches only the rest.
    url = srv.url(NAME, rate=100_000)
    args = ("-o", "out.bin", "-c", "4", "--chunk-size", "64K", "--continue")
    first = get(url, *args, "--max-time", "1.5", cwd=tmp_path)
    assert "gave up after 1.5 s" in one_line(first, 1)
    assert (tmp_path / "out.bin.part.json").exists()
    asked_first = len(range_gets(srv.requests_for(NAME)))
    srv.reset()
    second = get(url, *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert sha256(tmp_path / "out.bin") == SHA
    assert 0 < asked_first and len(range_gets(srv.requests_for(NAME))) < 16  # not all 16 ranges again


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("get", ["--max-tries N", "--retry-wait, --retry-delay SECONDS", "--connect-timeout SECONDS",
                 "-A, --user-agent NAME", "--limit-rate, --max-download-limit RATE", "--continue"]),
        ("enqueue", ["-A, --user-agent NAME", "--limit-rate, --max-download-limit RATE", "--continue"]),
        ("worker", ["--max-tries N", "--retry-wait, --retry-delay SECONDS", "--connect-timeout SECONDS",
                    "-A, --user-agent NAME", "--per-host-rate RATE"]),
    ],
)  # fmt: skip
def test_the_flags_are_in_the_help(name: str, flags: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rangefetch", name, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag in flags:
        assert flag in text, proc.stdout
    if name == "get":
        assert "resuming is always on" in text


def test_get_with_redis_refuses_the_workers_retry_flags(tmp_path: Path) -> None:
    proc = get("http://127.0.0.1:9/x.bin", "--redis", "redis://127.0.0.1:9", "--max-tries", "3", cwd=tmp_path)
    assert "give --max-tries to the workers" in one_line(proc, 2)


def test_the_worker_flags_reach_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    async def serve(settings: Settings, **_: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(rangefetch.worker.cli, "serve", serve)
    monkeypatch.setenv("RANGEFETCH_RETRY__BACKOFF_MAX", "7")
    args = [
        "--redis", "redis://127.0.0.1:9", "--max-tries", "3", "--retry-wait", "0.25", "--connect-timeout", "2.5",
        "-A", "cluster/1", "--per-host-rate", "50M",
    ]  # fmt: skip
    result = CliRunner().invoke(rangefetch.worker.cli.worker, args)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.retry.max_tries == 3 and settings.retry.backoff == 0.25
    assert settings.retry.backoff_max == 7  # the rest of the group still comes from the environment
    assert settings.timeouts.connect == 2.5
    assert settings.user_agent == "cluster/1"
    assert settings.distributed.per_host_rate == 50 * 1024 * 1024


# --- a URL without a scheme; a server without ranges -------------------------------------------


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("example.com/file", "http://example.com/file"),
        ("localhost:8080/file", "http://localhost:8080/file"),  # a port, not a scheme
        ("//example.com/file", "http://example.com/file"),
        ("[::1]:8080/f?x=1", "http://[::1]:8080/f?x=1"),
        ("HTTPS://example.com/f", "HTTPS://example.com/f"),
        ("http://example.com/f", "http://example.com/f"),
    ],
)
def test_a_url_without_a_scheme_is_http(given: str, taken: str) -> None:
    assert check_url(given) == taken


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("not a url", "invalid URL 'not a url': bad host name"),
        ("ftp://example.com/f", "unsupported URL scheme ftp://"),
        ("file:///etc/passwd", "unsupported URL scheme file://"),
        ("http://", "no host"),
        ("user:hunter2@exa mple.com/f", "invalid URL 'user:REDACTED@exa mple.com/f'"),
    ],
)
def test_what_is_still_not_a_url(given: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        check_url(given)


def test_get_without_a_scheme(srv: RangeServer, tmp_path: Path) -> None:
    bare = srv.url(NAME).removeprefix("http://")
    proc = get(bare, "-o", "out.bin", "-v", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "out.bin") == SHA
    assert f"no scheme in {bare!r}: using http://{bare}" in proc.stderr
    assert range_gets(srv.requests_for(NAME))


def test_a_server_without_ranges_says_so_once(srv: RangeServer, tmp_path: Path) -> None:
    proc = get(srv.url(NAME, norange=1), "-o", "out.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "out.bin") == SHA
    assert proc.stderr.count("no ranges: one connection") == 1
    assert "rangefetch: out.bin: no ranges: one connection\n" in proc.stderr
    streams = [r for r in srv.requests_for(NAME) if r.method == "GET" and "range" not in r.headers]
    assert len(streams) == 1


def test_one_connection_asked_for_is_not_remarked_on(srv: RangeServer, tmp_path: Path) -> None:
    proc = get(srv.url(NAME, norange=1), "-o", "out.bin", "-c", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no ranges" not in proc.stderr
