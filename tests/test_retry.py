"""Backoff timing with an injected sleep and random source: nothing really sleeps."""

from __future__ import annotations

import pytest

from rangefetch import Backoff, ConnectionLostError, RetriesExhaustedError, RetryPolicy, ServerBusyError
from rangefetch.plan import Range


class FakeSleep:
    """Records the delays asked for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def lost() -> ConnectionLostError:
    return ConnectionLostError("dropped", url="http://h/f?token=secret", range=Range(0, 9))


async def fail(backoff: Backoff, times: int) -> None:
    for _ in range(times):
        await backoff.wait(lost())


async def test_delays_grow_exponentially_and_are_capped() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_tries=10, backoff=0.5, backoff_max=5.0, jitter=0)
    backoff = Backoff(policy, sleep=sleep, rand=lambda: 0.999)
    await fail(backoff, 9)
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 1.0), (0.5, 0.75), (0.999, 1 - 0.5 * 0.999)])
async def test_jitter_scales_down_within_bounds(rand: float, factor: float) -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_tries=5, backoff=1.0, backoff_max=100.0, jitter=0.5)
    await fail(Backoff(policy, sleep=sleep, rand=lambda: rand), 4)
    assert sleep.delays == pytest.approx([1.0 * factor, 2.0 * factor, 4.0 * factor, 8.0 * factor])


async def test_jitter_never_leaves_its_band() -> None:
    import random

    sleep = FakeSleep()
    source = random.Random(7)
    policy = RetryPolicy(max_tries=1000, backoff=2.0, backoff_max=2.0, jitter=0.3)
    await fail(Backoff(policy, sleep=sleep, rand=source.random), 500)
    assert all(2.0 * 0.7 <= d <= 2.0 for d in sleep.delays)
    assert max(sleep.delays) - min(sleep.delays) > 0.3  # it does vary


async def test_retry_after_wins_and_is_capped() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_tries=10, backoff=0.5, jitter=0.5, retry_after_max=60)
    backoff = Backoff(policy, sleep=sleep, rand=lambda: 0.0)
    await backoff.wait(ServerBusyError("busy", status=503, retry_after=7))
    await backoff.wait(ServerBusyError("busy", status=429, retry_after=3600))
    await backoff.wait(ServerBusyError("busy", status=503, retry_after=0))
    await backoff.wait(ServerBusyError("busy", status=503))  # none given: the usual backoff (4th try)
    assert sleep.delays == [7, 60, 0, 4.0]


async def test_reset_forgets_earlier_failures() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_tries=3, backoff=1.0, jitter=0)
    backoff = Backoff(policy, sleep=sleep)
    await fail(backoff, 2)
    backoff.reset()
    assert backoff.tries == 0
    await fail(backoff, 2)  # without the reset this would be the third failure in a row
    assert sleep.delays == [1.0, 2.0, 1.0, 2.0]


@pytest.mark.parametrize("max_tries", [1, 2, 5])
async def test_retries_exhausted_after_max_tries(max_tries: int) -> None:
    sleep = FakeSleep()
    backoff = Backoff(RetryPolicy(max_tries=max_tries, backoff=1.0, jitter=0), sleep=sleep)
    await fail(backoff, max_tries - 1)
    cause = lost()
    with pytest.raises(RetriesExhaustedError) as info:
        await backoff.wait(cause)
    exc = info.value
    assert len(sleep.delays) == max_tries - 1  # max_tries tries: a sleep between each pair
    assert exc.__cause__ is cause
    assert exc.url == cause.url and exc.range == Range(0, 9)
    assert f"gave up after {max_tries} tries: dropped" == str(exc)


async def test_zero_backoff_does_not_wait() -> None:
    sleep = FakeSleep()
    await fail(Backoff(RetryPolicy(max_tries=4, backoff=0), sleep=sleep), 3)
    assert sleep.delays == [0, 0, 0]


async def test_retry_log_does_not_leak_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="rangefetch.retry")
    await fail(Backoff(RetryPolicy(max_tries=3), sleep=FakeSleep()), 1)
    assert "retrying" in caplog.text and "secret" not in caplog.text
