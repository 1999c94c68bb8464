"""Stragglers and crash resume in embedded mode: a slow connection gives up its tail, a kill -9 loses little.

Against the real range server: ``straggle=BPS`` serves the first connection
that asks for a range at BPS for every request it makes, ``stall=`` holds one
request without sending.  ``segments.Scheduler`` is tested on its own with a
fake clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from byteranges import merged, overlap, total
from rangeserver import RangeServer, RequestRecord

from rangefetch import Downloader, Settings, download
from rangefetch.plan import MiB, Range
from rangefetch.segments import MIN_STEAL_SECONDS, Scheduler, Segment
from rangefetch.settings import RetryPolicy

DATA = os.urandom(8 * MiB)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "straggle.bin"
FAST_RETRY = RetryPolicy(max_tries=4, backoff=0.01, backoff_max=0.05)
HANG_GUARD = 60.0  # seconds; the cases below finish in one or two


@pytest.fixture
def srv(server: RangeServer) -> RangeServer:
    server.add_file(NAME, DATA)
    return server


def gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in requests if r.method == "GET" and r.headers.get("range") != "bytes=0-0"]


def span(rec: RequestRecord) -> tuple[int, int]:
    start, _, end = rec.headers["range"].removeprefix("bytes=").partition("-")
    return int(start), int(end)


def recorded_spans(record: Path) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in map(Range.parse, json.loads(record.read_text())["done"])]


def check_file(path: Path) -> None:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert not path.with_name(path.name + ".part").exists()


# --- against the server ---------------------------------------------------------


async def test_a_slow_connection_gives_its_range_to_the_fast_ones(srv: RangeServer, tmp_path: Path) -> None:
    # 8 ranges of 1 MiB over 8 connections; one connection runs at 100 kB/s,
    # which alone would take 10 s for its range.
    url = srv.url(NAME, straggle=100_000)
    settings = Settings(connections=8, retry=FAST_RETRY)
    async with asyncio.timeout(HANG_GUARD):
        result = await download(url, directory=tmp_path, settings=settings)
    check_file(result.path)
    requests = gets(srv.requests)
    slow = [r for r in requests if r.straggler]
    assert slow, "the test server throttled no connection"
    # The slow connection fetched a small part of its first range; the rest
    # came over the fast ones, as pieces starting off the 1 MiB grid.
    assert sum(r.sent for r in slow) < MiB // 2
    assert any(span(r)[0] % MiB for r in requests if not r.straggler)
    # The fast requests asked for each byte once; with what the slow one
    # sent (some of it still unread in socket buffers when its tail was
    # taken) they cover the file.
    fast = [span(r) for r in requests if not r.straggler]
    assert total(fast) == sum(end - start + 1 for start, end in fast)
    taken = [(span(r)[0], span(r)[0] + r.sent - 1) for r in slow if r.sent]
    assert merged([*fast, *taken]) == [(0, len(DATA) - 1)]


async def test_the_seed_api_splits_a_slow_range_too_and_yields_each_byte_once(srv: RangeServer) -> None:
    # Downloader runs the same fetchers as download() (rangefetch.pool): the
    # slow connection's range is split, and the pieces still tile the file.
    url = srv.url(NAME, straggle=100_000)
    pieces: list[tuple[int, int]] = []
    data = bytearray(len(DATA))
    settings = Settings(connections=8, retry=FAST_RETRY)
    async with asyncio.timeout(HANG_GUARD), Downloader(url, max_workers=8, settings=settings) as downloader:
        async for start, end, content in downloader.start():
            assert end == start + len(content)
            pieces.append((start, end - 1))
            data[start:end] = content
    assert hashlib.sha256(data).hexdigest() == SHA
    assert total(pieces) == len(DATA) and merged(pieces) == [(0, len(DATA) - 1)]  # each byte once
    slow = [r for r in gets(srv.requests) if r.straggler]
    assert slow and sum(r.sent for r in slow) < MiB // 2  # the straggler's range went to others
    assert any(span(r)[0] % MiB for r in gets(srv.requests) if not r.straggler)


async def test_a_stalled_range_is_taken_over_without_waiting_for_the_timeout(srv: RangeServer, tmp_path: Path) -> None:
    # The first range GET sends 64 KiB, then nothing for 120 s; the read
    # timeout is longer than the hang guard and the low-speed rule is off, so
    # only a steal can finish this.
    url = srv.url(NAME, stall=120, stall_after=65536, skip=1)
    settings = Settings(connections=4, retry=FAST_RETRY, timeouts={"stall": 300}, speed_limit=0)
    async with asyncio.timeout(HANG_GUARD):
        result = await download(url, directory=tmp_path, settings=settings)
    check_file(result.path)
    stalled = [r for r in gets(srv.requests) if r.sent == 65536 and span(r)[1] - span(r)[0] + 1 > 65536]
    assert len(stalled) == 1
    start, end = span(stalled[0])
    # The rest of the stalled range was asked for by another request, once.
    rest = [span(r) for r in gets(srv.requests) if r is not stalled[0] and start + 65536 <= span(r)[0] <= end]
    assert total(rest) == end - start + 1 - 65536


async def test_a_download_at_one_speed_splits_nothing(srv: RangeServer, tmp_path: Path) -> None:
    settings = Settings(connections=4, retry=FAST_RETRY)
    result = await download(srv.url(NAME), directory=tmp_path, settings=settings)
    check_file(result.path)
    assert all(span(r)[0] % MiB == 0 for r in gets(srv.requests))


# --- crash resume: per-range checkpoints ------------------------------------------


def test_kill_9_keeps_the_bytes_of_ranges_in_flight(srv: RangeServer, tmp_path: Path) -> None:
    # Two connections at 256 KiB/s each fetch 1 MiB ranges: after a few
    # checkpoints no range is whole yet, but the record holds their heads.
    # The first two range GETs (after the probe's) are slow; the rerun's are not.
    url = srv.url(NAME, slow_rate=256 * 1024, skip=1, times=2)
    record = tmp_path / f"{NAME}.part.json"
    env = {**os.environ, "RANGEFETCH_CHECKPOINT_INTERVAL": "0.2"}
    args = [sys.executable, "-m", "rangefetch", "get", "-c", "2", "-q", "-d", str(tmp_path), url]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_GUARD
        recorded: list[tuple[int, int]] = []
        while total(recorded) < 256 * 1024:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the record never held 256 KiB"
            try:
                recorded = recorded_spans(record)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kept = recorded_spans(record)
    assert all(end - start + 1 < MiB for start, end in kept), "a whole range finished: the test proves nothing"
    part = (tmp_path / f"{NAME}.part").read_bytes()
    for start, end in kept:  # what the record claims is really on disk
        assert part[start : end + 1] == DATA[start : end + 1]

    first = len(srv.requests)
    proc2 = subprocess.run(
        [sys.executable, "-m", "rangefetch", "get", "-c", "4", "-q", "-d", str(tmp_path), url],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr
    check_file(tmp_path / NAME)
    fetched = [span(r) for r in gets(srv.requests[first:])]
    assert not overlap(fetched, kept)
    assert total(fetched) == len(DATA) - total(kept)


# --- the scheduler on its own -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plan(n: int, size: int = MiB) -> list[Range]:
    return [Range(i * size, (i + 1) * size - 1) for i in range(n)]


async def test_scheduler_hands_out_the_plan_in_order_then_nothing_at_one_speed() -> None:
    clock = Clock()
    s = Scheduler(plan(3), clock=clock)
    segs = [s.take() for _ in range(3)]
    assert [seg.range() for seg in segs if seg] == plan(3)
    clock.now += 1.0
    for seg in segs[:2]:
        assert seg is not None
        s.progress(seg, MiB)
        s.finish(seg)
    # The third ran at the same speed and has a quarter left: not worth a request.
    assert segs[2] is not None
    s.progress(segs[2], 3 * MiB // 4)
    assert s.take() is None
    assert s.steals == 0


async def test_scheduler_splits_a_slow_range_in_proportion_to_the_speeds() -> None:
    clock = Clock()
    s = Scheduler(plan(2), clock=clock)
    fast, slow = s.take(), s.take()
    assert fast is not None and slow is not None
    clock.now += 1.0
    s.progress(fast, MiB)
    s.finish(fast)  # 1 MiB/s
    s.progress(slow, MiB // 16)  # 64 KiB/s
    tail = s.take()
    assert tail is not None and s.steals == 1
    assert tail.end == 2 * MiB - 1 and slow.end == tail.start - 1
    left = 2 * MiB - slow.claimed
    # The slow one keeps what it fetches while the fast one does the rest.
    assert tail.length == int(left * 16 / 17)
    assert slow.claimed <= tail.start


def one_fast_one_stalled() -> tuple[Clock, Scheduler, Segment]:
    """Two 1 MiB ranges: the first done at 1 MiB/s, the second (returned) still running."""
    clock = Clock()
    s = Scheduler(plan(2), clock=clock)
    first, second = s.take(), s.take()
    assert first is not None and second is not None
    clock.now += 1.0
    s.progress(first, MiB)
    s.finish(first)
    return clock, s, second


async def test_scheduler_never_takes_bytes_being_written() -> None:
    clock, s, stalled = one_fast_one_stalled()
    s.progress(stalled, 1000)
    clock.now += 30.0  # nothing more for 30 s: stalled, so all its rest is taken...
    stalled.writing = 4096  # ...but for the chunk it is writing now
    async with asyncio.timeout(None) as scope:
        stalled.scope = scope
        tail = s.take()
    assert tail is not None
    assert tail.start == MiB + 1000 + 4096 and stalled.end == tail.start - 1
    assert not scope.expired()  # it is writing: it stops after this chunk, not now


async def test_scheduler_splits_but_stops_no_one_when_every_range_is_as_slow() -> None:
    clock = Clock()
    s = Scheduler(plan(3), clock=clock)
    segs = [s.take(), s.take(), s.take()]
    clock.now += 20.0
    for seg in segs:
        assert seg is not None
        s.progress(seg, 1)  # one byte in 20 s each: a trickling server
    clock.now += 19.0
    async with asyncio.timeout(None) as scope:
        for seg in segs:
            assert seg is not None
            seg.scope = scope
        tail = s.take()
    # Not stalled (a connection here takes ages for any byte): the idle
    # connection takes half of one, and every range keeps going.
    assert tail is not None and abs(tail.length - MiB // 2) <= 1
    assert not scope.expired()


async def test_scheduler_stops_a_stalled_range_whose_rest_is_all_taken() -> None:
    clock, s, stalled = one_fast_one_stalled()
    clock.now += 30.0  # the second has sent nothing at all
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as scope:
            stalled.scope = scope
            tail = s.take()
            assert tail is not None and tail.range() == Range(MiB, 2 * MiB - 1)
            assert stalled.length == 0
            await asyncio.sleep(10)  # cancelled by the steal, at once
    assert scope.expired()


async def test_scheduler_written_lists_finished_ranges_and_heads_in_flight() -> None:
    s = Scheduler(plan(3), clock=Clock())
    a, b, c = s.take(), s.take(), s.take()
    assert a and b and c
    s.progress(a, MiB)
    s.finish(a)
    s.progress(b, 10)
    assert sorted(s.written()) == [Range(0, MiB - 1), Range(MiB, MiB + 9)]


async def test_idle_connection_waits_for_a_range_worth_splitting_then_for_the_end() -> None:
    clock = Clock()
    s = Scheduler(plan(1), clock=clock)
    only = s.take()
    assert only is not None
    waiter = asyncio.create_task(s.next())
    await asyncio.sleep(0)
    assert not waiter.done()  # one range in flight: maybe worth splitting later
    s.progress(only, MiB)
    s.finish(only)
    async with asyncio.timeout(5):
        assert await waiter is None  # woken by the finish, not by its recheck


def test_min_steal_is_a_fraction_of_a_second() -> None:
    assert 0 < MIN_STEAL_SECONDS < 1
    assert Segment(0, 9).length == 10
