"""The rate limit (``--limit-rate``): the GCRA schedule, the throttles, and embedded downloads held to it.

Units run on an injected clock and sleep.  The downloads run ``rangefetch
get`` as a subprocess against the range server, and the rate is read at the
server: a client asks for its next range only once it has taken in the last
one, so the times at which range GETs *begin* at the server trace the bytes
the client took, within a range per connection whatever the kernel's socket
buffers hold (on loopback they take megabytes, so the server's ``sent``
count runs ahead of the client by that much).  The tolerance is a generous
25 %; bench/ratelimit.py measures the 10 % target over longer runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rangeserver import RangeServer, RequestRecord

from rangefetch.ratelimit import (
    MAX_BATCH,
    MIN_BATCH,
    BatchedThrottle,
    Gcra,
    LocalThrottle,
    TimedThrottle,
    batch_for,
    throttle_for,
)

KIB, MIB = 1024, 1024 * 1024
TOLERANCE = 0.25  # of the rate, for rates measured at the server

# --- the schedule --------------------------------------------------------------


def test_gcra_lets_the_tolerance_run_ahead_and_no_more() -> None:
    g = Gcra(1000, tolerance=0.1)  # 1000 B/s, 100 bytes ahead
    assert g.charge(100, now=10.0) == 0  # exactly the tolerance
    assert g.charge(100, now=10.0) == pytest.approx(0.1)
    assert g.charge(300, now=10.0) == pytest.approx(0.4)  # 500 bytes by t=10: 0.5 s ahead, 0.1 allowed


def test_gcra_saves_no_idle_time() -> None:
    g = Gcra(1000, tolerance=0.0)
    g.charge(1000, now=0.0)  # scheduled until t=1
    # Idle from t=1 to t=5: the next bytes are scheduled from now, not from t=1.
    assert g.charge(1000, now=5.0) == pytest.approx(1.0)


def test_gcra_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="positive"):
        Gcra(0)


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_a_local_throttle_spreads_the_bytes_at_the_rate() -> None:
    clock = FakeTime()
    throttle = LocalThrottle(100 * KIB, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        await throttle.take(10 * KIB)  # 1000 KiB at 100 KiB/s: 10 s, less the 0.1 s tolerance
    assert clock.now == pytest.approx(9.9)


async def test_connections_share_one_local_throttle() -> None:
    # Four connections take 250 KiB each at the same moment: they are served
    # in turn, 2.5 s apart, as one 100 KiB/s budget (each its own would be 2.4 s).
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    throttle = LocalThrottle(100 * KIB, clock=lambda: 0.0, sleep=sleep)
    await asyncio.gather(*(throttle.take(250 * KIB) for _ in range(4)))
    assert slept == pytest.approx([2.4, 4.9, 7.4, 9.9])


def test_throttle_for_zero_is_none() -> None:
    assert throttle_for(0) is None
    assert isinstance(throttle_for(1), LocalThrottle)


def test_held_back_while_a_taker_waits() -> None:
    clock = FakeTime()
    throttle = LocalThrottle(1000, clock=clock, sleep=clock.sleep)
    assert not throttle.held_back()
    throttle._gcra.charge(500, clock.now)  # 0.5 s ahead
    assert throttle.held_back()
    clock.now = 0.45
    assert not throttle.held_back()  # within the tolerance


class FakeLimiter:
    """The cluster's GCRA on a fake clock: counts the reservations."""

    def __init__(self, rate: float, clock: FakeTime) -> None:
        self.gcra = Gcra(rate)
        self.clock = clock
        self.calls: list[int] = []

    async def reserve(self, n: int) -> float:
        self.calls.append(n)
        return self.gcra.charge(n, self.clock.now)


async def test_a_batched_throttle_takes_from_the_limiter_a_batch_at_a_time() -> None:
    clock = FakeTime()
    limiter = FakeLimiter(1 * MIB, clock)
    throttle = BatchedThrottle(limiter.reserve, batch=256 * KIB, sleep=clock.sleep)

    async def connection() -> None:
        for _ in range(64):
            await throttle.take(16 * KIB)

    await asyncio.gather(*(connection() for _ in range(4)))  # 4 MiB at 1 MiB/s
    assert 15 <= len(limiter.calls) <= 17  # 4 MiB in batches of 256 KiB, not 256 calls
    assert sum(limiter.calls) >= 4 * MIB
    assert clock.now == pytest.approx(4.0 - 0.1, abs=0.3)


async def test_a_batched_throttle_pays_a_chunk_larger_than_its_batch() -> None:
    clock = FakeTime()
    limiter = FakeLimiter(1 * MIB, clock)
    throttle = BatchedThrottle(limiter.reserve, batch=64 * KIB, sleep=clock.sleep)
    await throttle.take(1 * MIB)
    assert limiter.calls == [1 * MIB]
    await throttle.take(1)
    assert limiter.calls == [1 * MIB, 64 * KIB]


async def test_batched_takers_wait_their_own_turn_not_behind_each_other() -> None:
    # Two takers short at once each reserve and wait what the limiter says
    # for them (0.9 s and 1.9 s at 1000 B/s), side by side: not a convoy.
    clock = FakeTime()
    limiter = FakeLimiter(1000, clock)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    throttle = BatchedThrottle(limiter.reserve, batch=1000, clock=clock, sleep=sleep)
    await asyncio.gather(throttle.take(1000), throttle.take(1000))
    assert limiter.calls == [1000, 1000]
    assert slept == pytest.approx([0.9, 1.9])
    assert throttle.held_back()
    clock.now = 1.9 + 1.0 + 0.01  # a second after the last wait ended
    assert not throttle.held_back()


async def test_a_batched_take_that_could_not_reserve_leaves_nothing_in_hand() -> None:
    async def failing(n: int) -> float:
        raise ConnectionError("Redis is away")

    throttle = BatchedThrottle(failing, batch=64 * KIB)
    with pytest.raises(ConnectionError):
        await throttle.take(1000)
    calls: list[int] = []

    async def reserve(n: int) -> float:
        calls.append(n)
        return 0.0

    throttle._reserve = reserve
    await throttle.take(1000)
    assert calls == [64 * KIB]  # the batch the failed take credited was not there


async def test_timed_throttle_adds_up_its_waits() -> None:
    clock = FakeTime()
    timed = TimedThrottle(LocalThrottle(1000, clock=clock, sleep=clock.sleep), clock=clock)
    await timed.take(1100)
    await timed.take(1000)
    assert timed.waited == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "batch"), [(1, MIN_BATCH), (2 * MIB, 2 * MIB // 10), (100 * MIB, MAX_BATCH)])
def test_batch_for(rate: int, batch: int) -> None:
    assert batch_for(rate) == batch


# --- embedded downloads through the CLI -------------------------------------------------

FAST_ENV = {"RANGEFETCH_RETRY__BACKOFF": "0.01", "RANGEFETCH_RETRY__BACKOFF_MAX": "0.05"}


def get(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEFETCH_")} | FAST_ENV
    return subprocess.run(
        [sys.executable, "-m", "rangefetch", "get", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def range_gets(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The GETs that fetched ranges (not the probe's ``bytes=0-0``), in the order the server began them."""
    gets = [r for r in requests if r.method == "GET" and r.headers.get("range") not in (None, "bytes=0-0")]
    return sorted(gets, key=lambda r: r.started)


def length(rec: RequestRecord) -> int:
    first, _, last = rec.headers["range"].removeprefix("bytes=").partition("-")
    return int(last) - int(first) + 1


def rate_asked(gets: list[RequestRecord], connections: int) -> float:
    """Bytes/s the client took, from when the server saw its range GETs begin.

    A connection asks for its next range once it has taken in the last:
    between the first GET after the first wave and the last GET, the client
    took the ranges asked for in between, give or take a range per connection.
    """
    first, last = gets[connections], gets[-1]
    taken = sum(length(r) for r in gets[connections:-1])
    return taken / (last.started - first.started)


def within(measured: float, rate: float) -> bool:
    return abs(measured / rate - 1) <= TOLERANCE


@pytest.mark.parametrize("flag", ["--limit-rate", "--max-download-limit"])
def test_a_download_keeps_to_its_rate_over_all_its_connections(server: RangeServer, tmp_path: Path, flag: str) -> None:
    data = os.urandom(12 * MIB)
    server.add_file("limited.bin", data)
    proc = get(server.url("limited.bin"), "-o", "out.bin", flag, "2M", "-c", "4", "--chunk-size", "256K", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    gets = range_gets(server.requests_for("limited.bin"))
    assert len(gets) == 48  # every range once: no range split for "idle" connections
    assert sum(r.sent for r in gets) == len(data)  # and no byte sent for nothing
    measured = rate_asked(gets, 4)
    assert within(measured, 2 * MIB), f"{measured / MIB:.2f} MiB/s, not 2 MiB/s"


def test_without_a_rate_the_same_download_is_not_held_back(server: RangeServer, tmp_path: Path) -> None:
    # The measure above tells the difference: unthrottled, the ranges go out far faster.
    data = os.urandom(12 * MIB)
    server.add_file("free.bin", data)
    proc = get(server.url("free.bin"), "-o", "out.bin", "-c", "4", "--chunk-size", "256K", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert rate_asked(range_gets(server.requests_for("free.bin")), 4) > 4 * MIB


def test_a_rate_below_the_low_speed_rule_times_the_connections_does_not_trip_it(
    server: RangeServer, tmp_path: Path
) -> None:
    # 256 KiB/s over 4 connections is 64 KiB/s each, below the rule's 128 KiB/s:
    # the rule must count the server's speed, not the wait we impose.
    data = os.urandom(1 * MIB)
    server.add_file("rule.bin", data)
    proc = get(
        server.url("rule.bin"), "-o", "out.bin", "--limit-rate", "256K", "-c", "4", "--chunk-size", "256K",
        "--speed-limit", "128K", "--speed-time", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(range_gets(server.requests_for("rule.bin"))) == 4  # no range re-opened as too slow
    assert "too slow" not in proc.stderr and "below" not in proc.stderr


def test_one_stream_keeps_to_the_rate_too(server: RangeServer, tmp_path: Path) -> None:
    # A server without ranges: one plain GET, throttled the same way.  With one
    # request there are no request times to read, so the bound is the command's
    # time: 3 MiB at 1 MiB/s takes at least ~2.9 s however busy the machine is
    # (unthrottled, well under one).
    data = os.urandom(3 * MIB)
    server.add_file("stream.bin", data)
    began = time.monotonic()
    proc = get(server.url("stream.bin", norange=1), "-o", "out.bin", "--limit-rate", "1M", cwd=tmp_path)
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    (stream,) = [r for r in server.requests_for("stream.bin") if r.method == "GET" and "range" not in r.headers]
    assert stream.sent == len(data)
    assert took >= 3 * (1 - TOLERANCE)


@pytest.mark.parametrize("value", ["fast", "-1", "1.5M"])
def test_a_bad_rate_is_a_usage_error(tmp_path: Path, value: str) -> None:
    proc = get("http://127.0.0.1:9/x.bin", "--limit-rate", value, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "invalid size" in proc.stderr
