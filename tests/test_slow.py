"""Slow peers and retries you can see: the low-speed rule, --max-time, "retrying in 4 s (HTTP 503)".

Against the real range server (tests/rangeserver.py): ``slow_rate=BPS``
trickles the first K GETs (after ``skip``; the probe's GET is the first),
``status=503`` with ``retry_after`` is a server that asks to be tried again
later.  The rule is made short for the tests (1000 B/s over 1 s), so a
trickle of 100 B/s trips it at once; a real trickle trips the default
1 KiB/s over 30 s the same way.  Attempts are counted at the server and
results checked by sha256; time limits are generous hang guards only.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rangeserver import RangeServer, RequestRecord
from redisserver import free_port
from test_cli import assert_clean_failure, assert_success

from rangefetch import (
    Backoff,
    LowSpeed,
    RetryPolicy,
    ServerBusyError,
    Settings,
    TooSlowError,
    Tracker,
    download,
    make_client,
)
from rangefetch.client import translate_error
from rangefetch.display import plain_line, show_progress
from rangefetch.errors import RetriesExhaustedError
from rangefetch.lowspeed import AllSlow
from rangefetch.settings import DEFAULT_LOW_SPEED

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "slow.bin"
CHUNK = 100_000  # three ranges
RULE = {"speed_limit": 1000, "speed_time": 1.0}  # a 100 B/s trickle trips it after a second
TRICKLE = 100
FAST_RETRY = RetryPolicy(backoff=0.01, backoff_max=0.05, max_tries=4)
ENV = {
    "RANGEFETCH_RETRY__BACKOFF": "0.01",
    "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05",
    "RANGEFETCH_RETRY__MAX_TRIES": "3",
    "RANGEFETCH_CHECKPOINT_INTERVAL": "0.05",
}
FLAGS = ["--speed-limit", "1000", "--speed-time", "1"]


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched file ranges (not the ``bytes=0-0`` probe)."""
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def first_byte(rec: RequestRecord) -> int:
    return int(rec.headers["range"].removeprefix("bytes=").partition("-")[0])


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"connections": 1, "chunk_size": CHUNK, "retry": FAST_RETRY, **RULE, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def rangefetch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``rangefetch ARGS`` with stderr a pipe (not a terminal), fast retries and no RANGEFETCH_* from outside."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")}
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", *args],
        cwd=cwd, env={**base, **ENV, **(env or {})}, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


# --- the low-speed rule -----------------------------------------------------------


async def test_a_trickle_is_reopened_from_its_last_byte_on_a_fresh_connection(
    srv: RangeServer, tmp_path: Path, fast_path: bool
) -> None:
    # One connection, so no other one takes over the slow range's tail.
    url = srv.url(NAME, slow_rate=TRICKLE, skip=1, times=1)  # the first range GET trickles
    result = await download(url, tmp_path / "out.bin", settings=settings(fast_path=fast_path))
    assert result.sha256 == SHA
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == SHA
    gets = range_gets(srv.requests_for(NAME))
    assert len(gets) == 3 + 1  # three ranges, one of them opened again
    slow, again = gets[0], gets[1]
    assert first_byte(slow) == 0
    assert 0 < first_byte(again) < 1000  # from the bytes the trickle brought, not from 0
    assert again.client != slow.client  # a new connection, not the slow one reused


def test_a_trickle_that_never_ends_fails_the_range_in_one_line(srv: RangeServer, tmp_path: Path) -> None:
    # Every try brings a few bytes; they must not count as progress, else
    # the retry count starts over each time and this never ends.  The range
    # alone would spend its 3 tries; the download gives up at 2, since its only
    # connection tripped the rule on a fresh connection too.
    url = srv.url(NAME, slow_rate=TRICKLE, skip=1, times=1000)
    proc = rangefetch("get", url, "-o", "out.bin", "-c", "1", "--chunk-size", str(CHUNK), *FLAGS, cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / "out.bin")
    assert "gave up: every connection stayed below 1000 B/s for 1 s, fresh ones too" in line
    assert "--speed-limit" in line and "0 turns it off" in line
    assert len(range_gets(srv.requests_for(NAME))) == 2  # two trips of the first range, then no more


def test_a_server_that_trickles_to_every_connection_is_given_up_after_two_trips_each(
    srv: RangeServer, tmp_path: Path
) -> None:
    # aria2c and curl give up at the first trip.  Each range here could try
    # 8 times (24 GETs); the download ends once each of its 3 connections
    # tripped twice without a window's worth arriving anywhere.
    url = srv.url(NAME, slow_rate=TRICKLE, skip=1, times=1000)
    env = {"RANGEFETCH_RETRY__MAX_TRIES": "8"}
    proc = rangefetch("get", url, "-o", "out.bin", "-c", "3", "--chunk-size", str(CHUNK), *FLAGS, cwd=tmp_path, env=env)
    line = assert_clean_failure(proc, 1, tmp_path / "out.bin")
    assert "gave up: every connection stayed below 1000 B/s" in line
    assert len(range_gets(srv.requests_for(NAME))) <= 2 * 3 + 2  # two each (a steal may add one or two), not 24


async def test_one_trickling_connection_among_healthy_ones_is_reopened_not_given_up(
    srv: RangeServer, tmp_path: Path
) -> None:
    # Both first GETs trickle: two trips, but two live connections may trip
    # four times before the download gives up; the fresh ones bring the rest.
    url = srv.url(NAME, slow_rate=TRICKLE, skip=1, times=2)
    result = await download(url, tmp_path / "out.bin", settings=settings(connections=2))
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == SHA == result.sha256
    assert len(range_gets(srv.requests_for(NAME))) >= 3 + 2  # three ranges, two opened again


def test_a_window_of_bytes_forgives_the_trips_so_far() -> None:
    live = 1
    slow = AllSlow(LowSpeed(limit=1000, time=1.0), lambda: live, url="http://h/f")
    trip = TooSlowError("below 1000 B/s for 1 s")
    slow.failed(trip)
    slow.arrived(999)
    slow.arrived(1)  # a window's worth (limit x time) from any connection
    slow.failed(trip)  # the count started over: one trip, not two
    slow.failed(ServerBusyError("HTTP 503", status=503))  # other failures are the range's business
    with pytest.raises(RetriesExhaustedError, match="every connection stayed below"):
        slow.failed(trip)
    live = 3
    slow.arrived(1000)
    for _ in range(5):
        slow.failed(trip)  # three live connections: six trips in a row end it
    with pytest.raises(RetriesExhaustedError):
        slow.failed(trip)


def test_speed_limit_zero_turns_the_rule_off(srv: RangeServer, tmp_path: Path) -> None:
    srv.add_file("tiny.bin", DATA[:300])
    url = srv.url("tiny.bin", slow_rate=TRICKLE, skip=1, times=1)  # three seconds at 100 B/s
    proc = rangefetch("get", url, "-o", "tiny.bin", "--speed-limit", "0", "--speed-time", "1", cwd=tmp_path)
    assert_success(proc, tmp_path / "tiny.bin", hashlib.sha256(DATA[:300]).hexdigest())
    assert len(range_gets(srv.requests_for("tiny.bin"))) == 1  # never re-opened


def test_lowest_speed_limit_is_an_alias(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url(NAME, slow_rate=TRICKLE, skip=1, times=1)
    proc = rangefetch(
        "get", url, "-o", "out.bin", "-c", "1", "--chunk-size", str(CHUNK),
        "--lowest-speed-limit", "1000", "-y", "1", cwd=tmp_path,
    )  # fmt: skip
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert len(range_gets(srv.requests_for(NAME))) == 3 + 1


def test_the_rule_is_on_by_default() -> None:
    assert Settings().low_speed == DEFAULT_LOW_SPEED == LowSpeed(limit=1024, time=30.0)
    assert DEFAULT_LOW_SPEED.window == 30 * 1024
    assert LowSpeed(limit=0).window == 0


def test_low_speed_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANGEFETCH_SPEED_LIMIT", "2K")
    monkeypatch.setenv("RANGEFETCH_SPEED_TIME", "5")
    monkeypatch.setenv("RANGEFETCH_MAX_TIME", "90")
    built = Settings()
    assert (built.low_speed, built.max_time) == (LowSpeed(limit=2048, time=5.0), 90.0)
    monkeypatch.setenv("RANGEFETCH_SPEED_LIMIT", "0")
    monkeypatch.setenv("RANGEFETCH_MAX_TIME", "0")
    assert (Settings().speed_limit, Settings().max_time) == (0, None)


def test_a_bad_speed_limit_is_a_usage_error(tmp_path: Path) -> None:
    proc = rangefetch("get", "http://127.0.0.1:9/x.bin", "--speed-limit", "fast", cwd=tmp_path)
    assert "invalid size 'fast'" in assert_clean_failure(proc, 2)


# --- --max-time -------------------------------------------------------------------


def test_max_time_keeps_the_part_file_for_a_rerun(srv: RangeServer, tmp_path: Path) -> None:
    data = os.urandom(1_000_000)
    srv.add_file("big.bin", data)
    # About 4 s at 2 x 120 kB/s; ranges of 64 KiB finish (and are recorded) from the first second.
    slow = srv.url("big.bin", rate=120_000)
    args = ["-o", "big.bin", "-c", "2", "--chunk-size", "64K"]
    proc = rangefetch("get", slow, *args, "--max-time", "1.5", cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / "big.bin")
    part = tmp_path / "big.bin.part"
    assert line == (
        f"rangefetch: error: gave up after 1.5 s (--max-time); kept {part} and its record: "
        "run the same command again to resume"
    )
    assert part.exists() and (tmp_path / "big.bin.part.json").exists()

    mark = len(srv.requests_for("big.bin"))
    again = rangefetch("get", slow, *args, cwd=tmp_path)
    assert_success(again, tmp_path / "big.bin", hashlib.sha256(data).hexdigest())
    fetched = 0
    for rec in range_gets(srv.requests_for("big.bin")[mark:]):
        first, _, last = rec.headers["range"].removeprefix("bytes=").partition("-")
        fetched += int(last) - int(first) + 1
    assert fetched < len(data)  # what the first run recorded was not fetched again


def test_max_time_before_the_download_begins(tmp_path: Path) -> None:
    # A server that accepts the connection and never answers: the probe waits.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.bin"
        proc = rangefetch("get", url, "-o", "x.bin", "--max-time", "1", cwd=tmp_path)
    line = assert_clean_failure(proc, 1, tmp_path / "x.bin")
    assert line == "rangefetch: error: gave up after 1 s (--max-time), before the download began"


# --- retrying, said ---------------------------------------------------------------


def test_plain_lines_say_when_it_is_retrying(srv: RangeServer, tmp_path: Path) -> None:
    # The first range GET is answered 503 with Retry-After: 2; stderr is a pipe, so plain lines.
    url = srv.url(NAME, status=503, retry_after=2, skip=1, times=1)
    proc = rangefetch("get", url, "-o", "out.bin", "-c", "1", "--chunk-size", str(CHUNK), cwd=tmp_path)
    assert_success(proc, tmp_path / "out.bin", SHA)
    assert re.search(r"^rangefetch: 0 B / 293\.0 KiB \(0%\), retrying in [12] s \(HTTP 503\)$", proc.stderr, re.M), (
        proc.stderr
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_bar_says_when_it_is_retrying() -> None:
    tracker = Tracker()
    tracker.start(1000)
    tracker.advance(100)
    tracker.retrying(4.0, "HTTP 503")
    screen = _Terminal()
    async with show_progress(tracker, "rangefetch", stream=screen):
        await asyncio.sleep(0.5)
    last = screen.getvalue().split("\r")[-1]
    assert "retrying in 4 s (HTTP 503)" in last, last

    tracker.advance(100)  # bytes flow again: the speed column is back ("- MiB/s" before its first estimate)
    screen = _Terminal()
    async with show_progress(tracker, "rangefetch", stream=screen):
        await asyncio.sleep(0.3)
    last = screen.getvalue().split("\r")[-1]
    assert "200/1,000 bytes" in last and "retrying" not in last, last


def test_plain_line_shows_the_retry_until_bytes_flow() -> None:
    now = [100.0]
    tracker = Tracker(clock=lambda: now[0])
    tracker.start(2048)
    tracker.retrying(3.2, "connection refused")
    assert (
        plain_line("rangefetch", tracker, 0.0) == "rangefetch: 0 B / 2.0 KiB (0%), retrying in 4 s (connection refused)"
    )
    now[0] += 5
    assert plain_line("rangefetch", tracker, 0.0).endswith(", retrying now (connection refused)")
    tracker.advance(1024)
    assert plain_line("rangefetch", tracker, 512.0) == "rangefetch: 1.0 KiB / 2.0 KiB (50%), 512 B/s, ETA 2s"


async def test_backoff_tells_the_hook_before_each_wait() -> None:
    slept: list[float] = []
    heard: list[tuple[float, str]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def hook(delay: float, exc: object) -> None:
        assert isinstance(exc, ServerBusyError | TooSlowError)
        heard.append((delay, exc.reason))
        assert slept == [d for d, _ in heard[:-1]]  # told before the wait begins

    backoff = Backoff(RetryPolicy(backoff=1.0, jitter=0), sleep=sleep, on_retry=hook)
    await backoff.wait(ServerBusyError("HTTP 503 Service Unavailable", status=503, retry_after=4))
    await backoff.wait(TooSlowError("below 1.0 KiB/s for 30 s"))
    assert heard == [(4.0, "HTTP 503"), (2.0, "too slow")]
    assert slept == [4.0, 2.0]


async def test_a_refused_connection_says_so_in_a_few_words() -> None:
    url = f"http://127.0.0.1:{free_port()}/x.bin"
    async with make_client(Settings()) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(url)
    assert translate_error(info.value, url=url).reason == "connection refused"  # type: ignore[attr-defined]
