"""The Thunderhead token bucket and global pause, driven by a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from oms import exceptions
from oms.thunderhead.ratelimit import RateLimiter

RATE = 10.0
BURST = 5
MAX_WAIT = 2.0


class Clock:
    """A fake clock whose sleep advances it and records each sleep."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> RateLimiter:
    return RateLimiter(RATE, BURST, max_wait_s=MAX_WAIT, clock=clock, sleep=clock.sleep)


def waits(reason: str) -> tuple[float, float]:
    labels = {"reason": reason}
    count = REGISTRY.get_sample_value("oms_thunderhead_ratelimit_waits_total", labels) or 0.0
    seconds = (
        REGISTRY.get_sample_value("oms_thunderhead_ratelimit_wait_seconds_total", labels) or 0.0
    )
    return count, seconds


def test_burst_is_free_then_tokens_are_spaced(limiter: RateLimiter) -> None:
    assert [limiter.reserve() for _ in range(BURST)] == [0.0] * BURST
    assert limiter.reserve() == pytest.approx(1 / RATE)
    assert limiter.reserve() == pytest.approx(2 / RATE)


def test_tokens_refill_at_the_rate(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(BURST):
        limiter.reserve()
    clock.now += 0.35  # three and a half tokens back
    assert [limiter.reserve() for _ in range(3)] == [0.0] * 3
    assert limiter.reserve() == pytest.approx(0.5 / RATE)


def test_refill_never_exceeds_the_burst(limiter: RateLimiter, clock: Clock) -> None:
    clock.now += 3_600
    assert [limiter.reserve() for _ in range(BURST)] == [0.0] * BURST
    assert limiter.reserve() > 0


def test_waiting_callers_repay_their_debt_before_new_ones(
    limiter: RateLimiter, clock: Clock
) -> None:
    for _ in range(BURST + 10):  # ten callers queued for one second
        limiter.reserve()
    clock.now += 0.5
    assert limiter.reserve() == pytest.approx(0.6)


async def test_acquire_sleeps_until_its_token_is_due(limiter: RateLimiter, clock: Clock) -> None:
    before = waits("rate")
    for _ in range(BURST + 2):
        await limiter.acquire()
    assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]
    after = waits("rate")
    assert after[0] - before[0] == 2
    assert after[1] - before[1] == pytest.approx(0.2)


async def test_no_second_window_holds_more_than_rate_plus_burst(
    limiter: RateLimiter, clock: Clock
) -> None:
    starts: list[float] = []
    for _ in range(200):
        await limiter.acquire()
        starts.append(clock.now)
    for i, start in enumerate(starts):
        in_window = sum(1 for t in starts[i:] if t < start + 1.0)
        assert in_window <= RATE + BURST
    # ... and the limiter is not slower than it must be.
    assert starts[-1] - starts[0] == pytest.approx((200 - BURST) / RATE)


def test_pause_is_reported_and_never_shortened(limiter: RateLimiter, clock: Clock) -> None:
    assert limiter.paused_for() == 0
    limiter.pause(30)
    clock.now += 10
    assert limiter.paused_for() == pytest.approx(20)
    limiter.pause(5)  # a shorter Retry-After does not end the longer pause
    assert limiter.paused_for() == pytest.approx(20)
    limiter.pause(60)
    assert limiter.paused_for() == pytest.approx(60)
    clock.now += 61
    assert limiter.paused_for() == 0


async def test_a_long_pause_refuses_at_once_with_the_time_left(
    limiter: RateLimiter, clock: Clock
) -> None:
    limiter.pause(30)
    clock.now += 4
    with pytest.raises(exceptions.ThunderheadTransient) as caught:
        await limiter.acquire()
    assert caught.value.retry_after_s == pytest.approx(26)
    with pytest.raises(exceptions.ThunderheadTransient):
        limiter.check()
    assert clock.sleeps == []


async def test_a_short_pause_is_waited_out(limiter: RateLimiter, clock: Clock) -> None:
    before = waits("pause")
    limiter.pause(MAX_WAIT)
    limiter.check()  # short: no refusal
    await limiter.acquire()
    assert clock.sleeps == [pytest.approx(MAX_WAIT)]
    after = waits("pause")
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == pytest.approx(MAX_WAIT)


async def test_the_bucket_refills_during_a_pause(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(BURST):
        await limiter.acquire()
    limiter.pause(1.0)
    for _ in range(BURST):
        await limiter.acquire()
    assert clock.sleeps == [pytest.approx(1.0)]  # the pause, then a full burst


async def test_a_pause_that_starts_during_a_rate_wait_voids_the_token(clock: Clock) -> None:
    paused = False

    async def sleep(seconds: float) -> None:
        nonlocal paused
        await clock.sleep(seconds)
        if not paused:  # a 429 arrives while this caller waits for its token
            paused = True
            limiter.pause(1.0)

    limiter = RateLimiter(1.0, 1, max_wait_s=MAX_WAIT, clock=clock, sleep=sleep)
    limiter.reserve()  # the bucket is empty
    await limiter.acquire()
    # rate wait, the pause, then a fresh reservation (due at once: the bucket refilled)
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]


async def test_a_long_pause_that_starts_during_a_rate_wait_refuses(clock: Clock) -> None:
    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        limiter.pause(60)

    limiter = RateLimiter(1.0, 1, max_wait_s=MAX_WAIT, clock=clock, sleep=sleep)
    limiter.reserve()
    with pytest.raises(exceptions.ThunderheadTransient) as caught:
        await limiter.acquire()
    assert caught.value.retry_after_s == pytest.approx(60)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate, burst, max_wait_s=1.0)
