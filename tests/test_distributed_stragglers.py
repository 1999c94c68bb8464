"""Stragglers in distributed mode: a range run far slower than its peers hands its range to another connection.

Real ``rangefetch worker`` processes, a real redis-server, and the range
server's ``straggle=BPS`` mode (the first connection that asks for a range
is served at BPS for every request it makes); ``rate=BPS`` paces every
connection alike.  The rule itself (``worker.handoff.Pace``) is tested on
its own with a fake clock.  Also here: what a quiet worker logs.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from byteranges import merged, total
from distributed_helpers import WorkerProcess, worker_env
from rangeserver import RangeServer, RequestRecord

from rangefetch.plan import MiB
from rangefetch.worker.handoff import (
    MAX_HANDOFFS,
    MIN_AGE,
    MIN_PEERS,
    MIN_SAMPLE,
    MIN_SAVING,
    MIN_STALL,
    SLOWER,
    Pace,
    RunPace,
)

StartWorker = Callable[..., WorkerProcess]
DATA = os.urandom(8 * MiB)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "straggle.bin"
HANG_GUARD = 120  # seconds; a download here takes one or two
# Leases long enough that a busy machine never makes a run lose its range:
# these tests count GETs and log lines, and a lapsed lease adds some.
CALM = {"RANGEFETCH_DISTRIBUTED__JOBS__LEASE": "20"}


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]


def span(rec: RequestRecord) -> tuple[int, int]:
    start, _, end = rec.headers["range"].removeprefix("bytes=").partition("-")
    return int(start), int(end)


@pytest.fixture
def env(redis_url: str, download_dir: Path) -> dict[str, str]:
    return worker_env(redis_url, download_dir)


def get(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``rangefetch get`` through Redis (the workers' environment), by default 1 MiB ranges over 8 connections."""
    argv = [sys.executable, "-m", "rangefetch", "get", url, "-q", *(args or ("--chunk-size", "1M", "-c", "8"))]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HANG_GUARD, check=False)


def check_file(proc: subprocess.CompletedProcess[str], path: Path, data: bytes = DATA) -> None:
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not path.with_name(path.name + ".part").exists()


# --- against the server, with real workers ------------------------------------------


@pytest.mark.redis
def test_a_slow_connection_hands_its_range_to_another(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # 8 ranges of 1 MiB over two workers of 4 jobs; one connection runs at
    # 100 kB/s, which alone would take 10 s for its range.
    server.add_file(NAME, DATA)
    start_worker("-c", "4", **CALM)
    start_worker("-c", "4", **CALM)
    proc = get(server.url(NAME, straggle=100_000), env=env)
    check_file(proc, download_dir / NAME)
    requests = range_gets(server.requests_for(NAME))
    slow = [r for r in requests if r.straggler]
    assert len(slow) == 1, "the test server throttled no connection, or more than one"
    # The slow connection sent a small part of its range; the rest came over
    # other connections, resuming inside the range (off the 1 MiB grid).
    assert slow[0].sent < MiB // 2
    start, end = span(slow[0])
    assert start % MiB == 0 and end == start + MiB - 1
    rest = [r for r in requests if not r.straggler and start < span(r)[0] <= end]
    assert len(rest) == 1 and span(rest[0])[1] == end
    assert rest[0].client != slow[0].client
    # Every other request asked for its bytes once; with what the slow one
    # sent (some maybe unread in socket buffers when it was dropped) they cover the file.
    fast = [span(r) for r in requests if not r.straggler]
    assert total(fast) == sum(e - s + 1 for s, e in fast)
    assert merged([*fast, (start, start + slow[0].sent - 1)]) == [(0, len(DATA) - 1)]


@pytest.mark.redis
def test_a_uniformly_slow_server_hands_nothing_off(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # Every connection at 1 MiB/s: 8 ranges of 1 MiB, 4 at a time, about 2 s.
    # No run is slower than its peers, so each range is one GET.
    data = DATA[: 4 * MiB]
    server.add_file("uniform.bin", data)
    start_worker("-c", "2", **CALM)
    start_worker("-c", "2", **CALM)
    proc = get(server.url("uniform.bin", rate=256 * 1024), "--chunk-size", "512K", "-c", "4", env=env)
    check_file(proc, download_dir / "uniform.bin", data)
    spans = sorted(span(r) for r in range_gets(server.requests_for("uniform.bin")))
    assert spans == [(i * 512 * 1024, (i + 1) * 512 * 1024 - 1) for i in range(8)]


@pytest.mark.redis
def test_a_range_slow_on_every_connection_is_handed_off_at_most_twice(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    # One job at a time, so the worker compares with its finished runs: the
    # probe and two ranges at full speed, then three GETs at 50 kB/s, then
    # full speed again.  The third range is slow on each connection it
    # tries: handed off twice, it then stays on the third and finishes there.
    data = DATA[: 4 * 256 * 1024]
    server.add_file("slowrange.bin", data)
    start_worker("-c", "1", **CALM)
    url = server.url("slowrange.bin", slow_rate=50_000, skip=3, times=MAX_HANDOFFS + 1)
    check_file(get(url, "--chunk-size", "256K", "-c", "1", env=env), download_dir / "slowrange.bin", data)
    requests = range_gets(server.requests_for("slowrange.bin"))
    third = [span(r) for r in requests if 2 * 256 * 1024 <= span(r)[0] < 3 * 256 * 1024]
    assert len(third) == MAX_HANDOFFS + 1
    starts = [s for s, _ in third]
    assert starts[0] == 2 * 256 * 1024 and starts == sorted(set(starts))  # each run resumed where the last stopped
    assert all(e == 3 * 256 * 1024 - 1 for _, e in third)
    assert len(requests) == 4 + MAX_HANDOFFS


# --- a quiet worker ---------------------------------------------------------------


PER_RANGE = re.compile(r"\b\d+-\d{5,}\b")  # a range in a line ("0-1048575"), not a date ("2026-12-02")


def failing_download(server: RangeServer, name: str, env: dict[str, str]) -> None:
    """A download whose every range GET answers 404: a permanent, expected failure."""
    server.add_file(name, DATA[:MiB])
    failed = get(server.url(name, status=404, skip=1, times=100), env=env)
    assert failed.returncode == 1 and "HTTP 404" in failed.stderr


@pytest.mark.redis
def test_a_worker_logs_one_line_per_download_started_and_ended(
    server: RangeServer, env: dict[str, str], download_dir: Path, start_worker: StartWorker
) -> None:
    server.add_file("quiet.bin", DATA)
    worker = start_worker("-c", "4", **CALM)
    check_file(get(server.url("quiet.bin"), env=env), download_dir / "quiet.bin")
    failing_download(server, "gone.bin", env)
    assert worker.stop() == 0
    lines = worker.output().splitlines()
    assert not [line for line in lines if "Traceback" in line or PER_RANGE.search(line)]
    started = [line for line in lines if "started: " in line]
    assert len(started) == 2
    quiet = r"INFO rangefetch\.worker\.\w+: download \w+ started: quiet\.bin \(8\.0 MiB, 8 ranges\)$"
    assert re.search(quiet, started[0])
    assert "started: gone.bin (1.0 MiB, 1 range)" in started[1]
    assert len([line for line in lines if f"complete: quiet.bin (sha256 {SHA})" in line]) == 1
    assert len([line for line in lines if re.search(r"ERROR .*download \w+ failed: .*HTTP 404", line)]) == 1
    # The worker's start and stop, the two downloads' starts and ends: nothing else.
    assert len(lines) == 2 + 2 * 2, lines


@pytest.mark.redis
def test_a_verbose_worker_logs_ranges_and_no_traceback_for_an_expected_error(
    server: RangeServer, env: dict[str, str], start_worker: StartWorker
) -> None:
    worker = start_worker("-v", **CALM)
    failing_download(server, "gone.bin", env)
    assert worker.stop() == 0
    out = worker.output()
    assert "Traceback" not in out
    assert re.search(r"failed, HTTPStatusError: .*404", out)  # arq's line, without its traceback
    assert any(PER_RANGE.search(line) for line in out.splitlines())


# --- the rule on its own, with a fake clock ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fast_history(pace: Pace, clock: Clock, *, runs: int = 3, speed: float = 50 * MiB, latency: float = 0.01) -> None:
    """``runs`` finished runs of 1 MiB at ``speed`` after ``latency``."""
    for _ in range(runs):
        run = pace.start("d")
        clock.now += latency
        run.arrived(MiB)
        clock.now += MiB / speed
        pace.finish("d", run, sample=True)


def test_a_run_far_slower_than_recent_runs_hands_off() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock)
    slow = pace.start("d")
    clock.now += 0.01
    slow.arrived(1000)
    assert not pace.slow("d", slow, left=MiB)  # too young to judge
    clock.now += MIN_AGE
    slow.arrived(50_000)  # 100 kB/s
    assert pace.slow("d", slow, left=MiB)


def test_nothing_to_compare_with_hands_nothing_off() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock, runs=MIN_PEERS - 1)
    slow = pace.start("d")
    slow.arrived(1)
    clock.now += 10
    assert not pace.slow("d", slow, left=MiB)
    assert not pace.slow("other", slow, left=MiB)


def test_a_run_a_little_slower_keeps_its_connection() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock, speed=4 * MiB)
    run = pace.start("d")
    run.arrived(1)
    clock.now += 1.0
    run.arrived(int(4 * MiB * 1.01 / SLOWER))  # just above typical / SLOWER
    assert not pace.slow("d", run, left=8 * MiB)
    clock.now += 1.0  # nothing more for a second: now far slower
    assert pace.slow("d", run, left=8 * MiB)


def test_a_slow_run_nearly_done_is_left_to_finish() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock)
    slow = pace.start("d")
    slow.arrived(1)
    clock.now += 1.0
    slow.arrived(100_000)
    left = int(100_000 * MIN_SAVING * 0.9)  # less than MIN_SAVING at its own speed
    assert not pace.slow("d", slow, left=left)
    assert pace.slow("d", slow, left=10 * left)
    assert not pace.slow("d", slow, left=0)


def test_live_peers_are_the_measure_when_there_are_enough() -> None:
    # History says 50 MiB/s, but the server slowed for everyone: the live
    # peers, as slow as this run, say it is not a straggler.
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock)
    runs = [pace.start("d") for _ in range(MIN_PEERS + 1)]
    for run in runs:
        run.arrived(1)
    clock.now += 2.0
    for run in runs:
        run.arrived(200_000)
    assert not any(pace.slow("d", run, left=MiB) for run in runs)
    # One of them stops: next to its live peers it is soon far slower.
    clock.now += 8.0
    for run in runs[1:]:
        run.arrived(800_000)
    assert pace.slow("d", runs[0], left=MiB)
    assert not pace.slow("d", runs[1], left=MiB)


def test_a_run_without_a_first_byte_waits_for_several_typical_latencies() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock, latency=1.0)  # a server slow to answer, for everyone
    silent = pace.start("d")
    clock.now += MIN_STALL + 0.5
    assert not pace.slow("d", silent, left=MiB)  # 2.5 s is less than 4 latencies
    clock.now += 2.0
    assert pace.slow("d", silent, left=MiB)


def test_handed_off_runs_and_tiny_runs_are_not_samples() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock, runs=MIN_PEERS - 1)
    tiny = pace.start("d")
    tiny.arrived(MIN_SAMPLE - 1)
    clock.now += 0.01
    pace.finish("d", tiny, sample=True)
    slow = pace.start("d")
    slow.arrived(MIN_SAMPLE)
    clock.now += 1.0
    pace.finish("d", slow, sample=False)
    run = pace.start("d")
    run.arrived(1)
    clock.now += 10.0
    assert not pace.slow("d", run, left=MiB)  # still one sample only
    fast_history(pace, clock, runs=1)
    assert pace.slow("d", run, left=MiB)


def test_time_spent_waiting_for_our_own_rate_limit_is_not_held_against_the_server() -> None:
    clock = Clock()
    pace = Pace(clock=clock)
    fast_history(pace, clock, speed=2 * MiB)
    run = pace.start("d")
    run.arrived(1)
    clock.now += 10.0
    run.arrived(MiB)  # 100 KiB/s over 10 s...
    assert pace.slow("d", run, left=8 * MiB)
    run.held = 9.5  # ...of which 9.5 s waiting for tokens: 2 MiB/s while it fetched
    assert not pace.slow("d", run, left=8 * MiB)


def test_run_pace_counts_from_its_first_byte() -> None:
    clock = Clock()
    run = RunPace(clock)
    clock.now += 5.0  # connecting, waiting for the headers
    run.arrived(100)
    assert run.speed(clock.now) is None
    clock.now += 1.0
    run.arrived(900)
    assert run.speed(clock.now) == 1000.0
    assert MAX_HANDOFFS >= 1
