"""The Thunderhead token bucket and global pause, driven by a fake clock."""

from __future__ import annotations

import anyio
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


# --- AIMD after a 429 ---------------------------------------------------------------

RECOVERY_S = 10.0  # the full rate (10/s) over 10 s: the rate climbs 1/s
CEILING_TTL_S = 100.0


@pytest.fixture
def aimd(clock: Clock) -> RateLimiter:
    return RateLimiter(
        RATE,
        BURST,
        max_wait_s=MAX_WAIT,
        min_rate_per_s=0.5,
        decrease_factor=0.5,
        recovery_s=RECOVERY_S,
        ceiling_ttl_s=CEILING_TTL_S,
        clock=clock,
        sleep=clock.sleep,
    )


def rate_gauge() -> float | None:
    return REGISTRY.get_sample_value("oms_thunderhead_rate_limit_per_second")


async def throttle_after_eight_calls(limiter: RateLimiter, clock: Clock) -> float:
    """Send 8 calls within one second (5 of burst, 3 spaced), the 8th answered 429.

    Returns the time of the 429. 8 calls were sent; the tenant let 7 through.
    """
    for _ in range(8):
        await limiter.acquire()
    assert clock.now == pytest.approx(1_000.3)
    limiter.throttled(2.0)
    return clock.now


async def test_a_429_halves_what_was_sent_in_the_last_second(
    aimd: RateLimiter, clock: Clock
) -> None:
    assert aimd.rate_per_s == RATE
    await throttle_after_eight_calls(aimd, clock)
    assert aimd.rate_per_s == pytest.approx(0.5 * 8)
    assert rate_gauge() == pytest.approx(0.5 * 8)
    assert aimd.paused_for() == pytest.approx(2.0)


async def test_a_429_counts_only_the_last_second(aimd: RateLimiter, clock: Clock) -> None:
    for _ in range(BURST):
        await aimd.acquire()
    clock.now += 5  # those calls are old news
    await aimd.acquire()
    aimd.throttled(1.0)
    assert aimd.rate_per_s == pytest.approx(0.5)  # one call sent: half of it (the minimum)


async def test_after_a_429_the_burst_is_one_call(aimd: RateLimiter, clock: Clock) -> None:
    await throttle_after_eight_calls(aimd, clock)
    clock.now += 2.0  # the pause is over; the bucket refilled, but holds one token
    assert aimd.reserve() == 0.0
    second = aimd.reserve()
    assert second == pytest.approx(1 / aimd.rate_per_s)
    assert second > 0
    clock.now += 50  # however long OMS waits, still no burst while the ceiling is fresh
    assert aimd.reserve() == 0.0
    assert aimd.reserve() > 0


async def test_the_rate_climbs_back_to_80_percent_of_what_got_through(
    aimd: RateLimiter, clock: Clock
) -> None:
    throttled_at = await throttle_after_eight_calls(aimd, clock)
    ceiling = 0.9 * 7 - 1  # 8 sent, the last refused: 7 let through; less one call
    clock.now = throttled_at + 1.0
    assert aimd.rate_per_s == pytest.approx(4.0 + 1.0)  # linear: 1/s
    clock.now = throttled_at + 1.3
    assert aimd.rate_per_s == pytest.approx(min(ceiling, 4.0 + 1.3))
    clock.now = throttled_at + RECOVERY_S
    assert aimd.rate_per_s == pytest.approx(ceiling)
    assert rate_gauge() == pytest.approx(ceiling)
    clock.now = throttled_at + CEILING_TTL_S - 1  # no climb above while the ceiling is fresh
    assert aimd.rate_per_s == pytest.approx(ceiling)
    assert ceiling < RATE


async def test_sending_at_the_lowered_rate_stays_under_the_ceiling(
    aimd: RateLimiter, clock: Clock
) -> None:
    throttled_at = await throttle_after_eight_calls(aimd, clock)
    clock.now = throttled_at + 2.0
    starts: list[float] = []
    for _ in range(100):  # bounded: 100 calls, about 20 s of fake time
        await aimd.acquire()
        starts.append(clock.now)
    assert starts[-1] - throttled_at < CEILING_TTL_S
    for i, start in enumerate(starts):
        in_window = sum(1 for t in starts[i:] if t < start + 1.0)
        assert in_window <= 0.9 * 7 - 1 + 1  # the rate ceiling plus a burst of one


async def test_the_ceiling_is_forgotten_after_its_ttl(aimd: RateLimiter, clock: Clock) -> None:
    throttled_at = await throttle_after_eight_calls(aimd, clock)
    ceiling = 0.9 * 7 - 1
    clock.now = throttled_at + CEILING_TTL_S - 0.001
    assert aimd.rate_per_s == pytest.approx(ceiling)
    clock.now = throttled_at + CEILING_TTL_S + 1.0
    assert aimd.rate_per_s == pytest.approx(ceiling + 1.0, abs=0.01)  # climbing again, 1/s
    clock.now += RECOVERY_S
    assert aimd.rate_per_s == RATE
    assert rate_gauge() == RATE
    clock.now += 1.0  # and the full burst is back
    assert [aimd.reserve() for _ in range(BURST)] == [0.0] * BURST
    assert aimd.reserve() > 0


async def test_a_second_429_renews_the_ceiling(aimd: RateLimiter, clock: Clock) -> None:
    first = await throttle_after_eight_calls(aimd, clock)
    clock.now = first + 90
    for _ in range(6):  # about a second's worth at the lowered rate
        await aimd.acquire()
    aimd.throttled(1.0)
    second = clock.now
    clock.now = first + CEILING_TTL_S + 50  # the first ceiling would be gone by now
    capped = aimd.rate_per_s
    assert capped < RATE
    clock.now = second + CEILING_TTL_S + RECOVERY_S + 1
    assert aimd.rate_per_s == RATE


async def test_the_rate_never_drops_below_the_minimum(clock: Clock) -> None:
    limiter = RateLimiter(
        RATE, BURST, max_wait_s=MAX_WAIT, min_rate_per_s=2.0, clock=clock, sleep=clock.sleep
    )
    for _ in range(5):  # bounded: five 429s in a row
        await limiter.acquire()
        limiter.throttled(0.5)
        assert limiter.rate_per_s >= 2.0
    assert limiter.rate_per_s == pytest.approx(2.0)


async def test_a_pause_leaves_the_rate_and_burst_alone(aimd: RateLimiter, clock: Clock) -> None:
    for _ in range(8):
        await aimd.acquire()
    aimd.pause(2.0)  # a 503: maintenance says nothing about the tenant's limit
    assert aimd.rate_per_s == RATE
    assert rate_gauge() == RATE
    clock.now += 2.0
    assert [aimd.reserve() for _ in range(BURST)] == [0.0] * BURST


async def test_a_long_429_refuses_callers_at_once(aimd: RateLimiter, clock: Clock) -> None:
    await aimd.acquire()
    aimd.throttled(30.0)
    with pytest.raises(exceptions.ThunderheadTransient) as caught:
        await aimd.acquire()
    assert caught.value.retry_after_s == pytest.approx(30.0)
    assert not caught.value.attempt
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"decrease_factor": 0.0},
        {"decrease_factor": 1.0},
        {"recovery_s": 0.0},
        {"min_rate_per_s": 0.0},
    ],
)
def test_nonsense_aimd_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="decrease_factor"):
        RateLimiter(RATE, BURST, max_wait_s=1.0, **overrides)


async def test_a_429_after_too_few_calls_sets_no_ceiling(aimd: RateLimiter, clock: Clock) -> None:
    # Two calls in the last second say nothing about where the limit is (the
    # tenant's limit may be shared): slow down, then climb all the way back.
    await aimd.acquire()
    await aimd.acquire()
    aimd.throttled(1.0)
    assert aimd.rate_per_s == pytest.approx(0.5 * 2)
    clock.now += RECOVERY_S + 1
    assert aimd.rate_per_s == RATE


async def test_a_429_counts_the_calls_before_the_refused_one_was_sent(
    aimd: RateLimiter, clock: Clock
) -> None:
    sent_at = await throttle_after_eight_calls_unanswered(aimd, clock)
    clock.now += 1.5  # the 429 arrives late: none of the 8 is in the last second now
    aimd.throttled(1.0, sent_at=sent_at)
    clock.now += RECOVERY_S + 5
    assert aimd.rate_per_s == pytest.approx(0.9 * 7 - 1)  # the ceiling was still learnt


async def throttle_after_eight_calls_unanswered(limiter: RateLimiter, clock: Clock) -> float:
    for _ in range(8):
        await limiter.acquire()
    return clock.now


async def test_a_pause_never_lets_old_and_new_slots_overlap() -> None:
    # Real time, small numbers: 8 callers queue for slots at 10/s; a short pause
    # comes in while slots past its end are already promised. Those are void: the
    # schedule restarts at the pause's end, so no second ever holds more than
    # burst + rate calls (old and new slots on top of each other would).
    limiter = RateLimiter(10.0, 1, max_wait_s=5.0)
    starts: list[float] = []

    async def caller() -> None:
        for _ in range(4):
            await limiter.acquire()
            starts.append(anyio.current_time())

    async def pause_soon() -> None:
        await anyio.sleep(1.0)
        limiter.pause(0.3)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(caller)
        tg.start_soon(pause_soon)
    starts.sort()
    assert len(starts) == 32
    busiest = max(sum(1 for t in starts[i:] if t < start + 1.0) for i, start in enumerate(starts))
    assert busiest <= 1 + 10 + 1  # burst + rate, and one for the clock's grain


async def test_429s_to_calls_sent_before_a_slow_down_slow_it_down_once(
    aimd: RateLimiter, clock: Clock
) -> None:
    for _ in range(8):
        await aimd.acquire()
    sent_at = clock.now
    aimd.throttled(1.0, sent_at=sent_at)
    once = aimd.rate_per_s
    for _ in range(3):  # the other calls of that second come back 429 too
        aimd.throttled(1.0, sent_at=sent_at)
    assert aimd.rate_per_s == once
    assert aimd.paused_for() == pytest.approx(1.0)
