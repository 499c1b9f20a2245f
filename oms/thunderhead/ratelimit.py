"""One token bucket and one global pause, shared by every call of a Thunderhead client.

The bucket holds up to ``burst`` tokens and refills at the current rate. It is
kept as a theoretical arrival time (GCRA, the virtual-scheduling form of a token
bucket): a caller reserves the next slot, possibly in the future, and sleeps until
it is due, so callers are served in arrival order without polling, slots never
overlap when the rate changes, and in any window of T seconds at most
``burst + rate * T`` calls start.

A 429 or 503 pauses everything until its Retry-After has passed. Short pauses
(at most ``max_wait_s``) are waited out; a caller facing a longer one gets
``ThunderheadTransient`` at once, carrying the time left, and reschedules its work
instead of holding on to it.

A 429 also means the tenant's limit is below what OMS sent (licence agreements set
it, not OMS), so the rate adapts, AIMD-style: it drops to ``decrease_factor`` times
what was sent in the last second, the burst shrinks to one call, and the rate then
climbs back linearly (the full rate over ``recovery_s``) but only up to 90% of the
rate the tenant let through in the second before the 429, less one call. That
ceiling is forgotten after ``ceiling_ttl_s`` without a 429; only then does OMS
probe above it. So a tenant limit below OMS's setting costs one 429 per
``ceiling_ttl_s``, not one per pause. A 503 (maintenance) pauses but
leaves the rate alone: it says nothing about the limit.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable

import anyio

from oms import exceptions
from oms.thunderhead import metrics

_SLACK_S = 0.1
_KEEP_STARTS_S = 120.0  # as long as a call may take (a submit's timeout), and more
_MIN_SAMPLE = 3.0  # calls a second, at least, to learn a ceiling from
_HEADROOM = 0.9  # climb back to this share of what the tenant let through, less one
# call (the burst token): in any second at most burst (1) + rate calls start, so
# this keeps a whole call of margin for arrival jitter at the tenant's window.


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_wait_s: float,
        min_rate_per_s: float = 0.5,
        decrease_factor: float = 0.5,
        recovery_s: float = 30.0,
        ceiling_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        if not 0 < decrease_factor < 1 or recovery_s <= 0 or min_rate_per_s <= 0:
            raise ValueError("decrease_factor must be in (0, 1); recovery_s, min_rate_per_s > 0")
        self._max_rate = rate_per_s
        self._min_rate = min(min_rate_per_s, rate_per_s)
        self._burst = float(burst)
        self._max_wait_s = max_wait_s
        self._decrease = decrease_factor
        self._climb_per_s = rate_per_s / recovery_s
        self._ceiling_ttl_s = ceiling_ttl_s
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._rate = rate_per_s
        self._ceiling: float | None = None  # the sending rate a 429 refused
        self._ceiling_at = now
        self._tat = now  # the theoretical arrival time of the next call (GCRA)
        self._epoch = 0  # bumped by every pause: slots promised before it are void
        self._decreased_at = float("-inf")
        self._updated = now
        self._paused_until = now
        self._starts: collections.deque[float] = collections.deque()  # call start times
        metrics.RATE_LIMIT.set(rate_per_s)

    @property
    def rate_per_s(self) -> float:
        """The rate in force now (below the setting for a while after a 429)."""
        self._refill(self._clock())
        return self._rate

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 if none)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Stop every caller for ``seconds`` from now; never shortens a longer pause."""
        now = self._clock()
        self._paused_until = max(self._paused_until, now + seconds)
        # Every slot already promised is void: its caller sees the epoch change and
        # queues again, so the schedule can start afresh at the pause's end.
        self._epoch += 1
        self._tat = self._paused_until

    def throttled(self, seconds: float, *, sent_at: float | None = None) -> None:
        """Thunderhead answered 429 to a call started at ``sent_at`` (default: now):
        pause, and send slower afterwards."""
        now = self._clock()
        self._refill(now)
        at = now if sent_at is None else min(now, sent_at)
        if at <= self._decreased_at:
            # Sent before the last slow-down, at the old rate: already answered for.
            self.pause(seconds)
            return
        # The calls started in the second before the refused one (the window's end
        # is lenient: its own start may read a hair before it was recorded).
        sent = float(sum(1 for t in self._starts if at - 1.0 < t <= at + _SLACK_S))
        # What the tenant let through in the second before it refused this call.
        allowed = sent - 1.0
        if allowed >= _MIN_SAMPLE:
            self._ceiling, self._ceiling_at = allowed, now
        # else: too few calls to say where the limit is (light traffic, a limit
        # shared with other clients): slow down, but set no ceiling from that.
        self._rate = max(self._min_rate, min(self._rate, max(sent, 1.0)) * self._decrease)
        self._decreased_at = now
        metrics.RATE_LIMIT.set(self._rate)
        self.pause(seconds)

    def check(self) -> None:
        """Raise ``ThunderheadTransient`` if a pause longer than ``max_wait_s`` is on."""
        left = self.paused_for()
        if left > self._max_wait_s:
            raise exceptions.ThunderheadTransient("Thunderhead asked OMS to wait", left)

    def reserve(self) -> float:
        """Take the next slot; return how long until it is due (0: now)."""
        now = self._clock()
        capacity = self._refill(now)
        interval = 1.0 / self._rate
        tat = max(self._tat, now)
        due = max(now, tat - (capacity - 1.0) * interval)
        if due - now < 1e-9:  # float dust is not a wait
            due = now
        self._tat = tat + interval
        return due - now

    async def acquire(self) -> None:
        """Wait for a pause to end (if short) and for a token; then the caller may send."""
        while True:
            self.check()
            left = self.paused_for()
            if left > 0:
                await self._wait("pause", left)
                continue
            epoch = self._epoch
            delay = self.reserve()
            if delay > 0:
                await self._wait("rate", delay)
            if self._epoch == epoch and self.paused_for() == 0:
                self._started(self._clock())
                return
            # A 429/503 came in while this caller waited: its slot is void (the
            # schedule restarts at the pause's end); queue again.

    def _started(self, at: float) -> None:
        """Remember a call's start, long enough for a slow answer's 429 to count it."""
        self._starts.append(at)
        while self._starts and self._starts[0] <= at - _KEEP_STARTS_S:
            self._starts.popleft()

    def _refill(self, now: float) -> float:
        """Climb the rate back towards its target; return the burst in force."""
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        target, capacity = self._max_rate, self._burst
        if self._ceiling is not None:
            if now - self._ceiling_at < self._ceiling_ttl_s:
                target = min(self._max_rate, self._ceiling * _HEADROOM - 1.0)
                target = max(self._min_rate, target)
                capacity = 1.0
            else:
                self._ceiling = None
        before = self._rate
        if self._rate < target:
            self._rate = min(target, self._rate + elapsed * self._climb_per_s)
        else:
            self._rate = target
        if self._rate != before:
            metrics.RATE_LIMIT.set(self._rate)
        return capacity

    async def _wait(self, reason: str, seconds: float) -> None:
        metrics.RATE_LIMIT_WAITS.labels(reason).inc()
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(reason).inc(seconds)
        await self._sleep(seconds)
