"""One token bucket and one global pause, shared by every call of a Thunderhead client.

The bucket holds up to ``burst`` tokens and refills at ``rate_per_s``. A caller
reserves the next token, possibly in the future, and sleeps until it is due, so
callers are served in arrival order without polling, and in any window of T
seconds at most ``burst + rate_per_s * T`` calls start.

A 429 or 503 pauses everything until its Retry-After has passed. Short pauses
(at most ``max_wait_s``) are waited out; a caller facing a longer one gets
``ThunderheadTransient`` at once, carrying the time left, and reschedules its work
instead of holding on to it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from oms import exceptions
from oms.thunderhead import metrics


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)  # negative: tokens already promised to waiting callers
        self._updated = clock()
        self._paused_until = clock()

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 if none)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Stop every caller for ``seconds`` from now; never shortens a longer pause."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def check(self) -> None:
        """Raise ``ThunderheadTransient`` if a pause longer than ``max_wait_s`` is on."""
        left = self.paused_for()
        if left > self._max_wait_s:
            raise exceptions.ThunderheadTransient("Thunderhead asked OMS to wait", left)

    def reserve(self) -> float:
        """Take the next token; return how long until it is due (0: now)."""
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate_per_s)
        self._updated = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate_per_s

    async def acquire(self) -> None:
        """Wait for a pause to end (if short) and for a token; then the caller may send."""
        while True:
            self.check()
            left = self.paused_for()
            if left > 0:
                await self._wait("pause", left)
                continue
            delay = self.reserve()
            if delay > 0:
                await self._wait("rate", delay)
            if self.paused_for() == 0:
                return
            # A 429/503 came in while this caller waited: its token is void (it
            # was for a moment that is now inside the pause); queue again.

    async def _wait(self, reason: str, seconds: float) -> None:
        metrics.RATE_LIMIT_WAITS.labels(reason).inc()
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(reason).inc(seconds)
        await self._sleep(seconds)
