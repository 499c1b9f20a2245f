"""The Reference Data cache's rules, driven by a fake clock and a fake source."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from oms import exceptions
from oms.refdata.cache import Cache

TTL = 60.0
WINDOW = 600.0
FRESH = TTL / 2
STALE = TTL + WINDOW / 2
EXPIRED = TTL + WINDOW + 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """What the cache fetches from: counts calls, can fail, can be held open."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.gate: anyio.Event | None = None
        self.started = anyio.Event()
        self.finished = anyio.Event()

    async def fetch(self, key: str) -> str:
        self.calls += 1
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            return f"{key}-v{self.calls}"
        finally:
            self.finished.set()

    def hold(self) -> None:
        self.gate = anyio.Event()
        self.started = anyio.Event()
        self.finished = anyio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None


@asynccontextmanager
async def open_cache(
    source: Source, clock: Clock, max_entries: int = 100
) -> AsyncIterator[Cache[str, str]]:
    async with anyio.create_task_group() as tg:
        yield Cache(
            "test",
            source.fetch,
            ttl_s=TTL,
            revalidate_window_s=WINDOW,
            task_group=tg,
            max_entries=max_entries,
            clock=clock,
        )
        tg.cancel_scope.cancel()


async def test_fresh_entry_is_served_without_fetching() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        assert await cache.get("a") == "a-v1"
        clock.now += FRESH
        assert await cache.get("a") == "a-v1"
    assert source.calls == 1


async def test_keys_are_cached_separately() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        assert await cache.get("a") == "a-v1"
        assert await cache.get("b") == "b-v2"
        assert await cache.get("a") == "a-v1"
    assert source.calls == 2


async def test_stale_entry_is_served_and_refreshed_once_in_background() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        await cache.get("a")
        clock.now += STALE
        source.hold()
        for _ in range(5):
            assert await cache.get("a") == "a-v1"  # answered at once, gate still shut
        with anyio.fail_after(1):
            await source.started.wait()
        assert source.calls == 2
        source.release()
        with anyio.fail_after(1):
            await source.finished.wait()
        assert await cache.get("a") == "a-v2"
    assert source.calls == 2


async def test_expired_entry_is_fetched_before_answering() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        await cache.get("a")
        clock.now += EXPIRED
        assert await cache.get("a") == "a-v2"
    assert source.calls == 2


async def test_concurrent_callers_share_one_fetch() -> None:
    source, clock = Source(), Clock()
    results: list[str] = []

    async def caller(cache: Cache[str, str]) -> None:
        results.append(await cache.get("a"))

    async with open_cache(source, clock) as cache:
        source.hold()
        async with anyio.create_task_group() as callers:
            for _ in range(20):
                callers.start_soon(caller, cache)
            with anyio.fail_after(1):
                await source.started.wait()
            source.release()
    assert results == ["a-v1"] * 20
    assert source.calls == 1


async def test_source_down_serves_stale_value_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        await cache.get("a")
        source.error = exceptions.ReferenceDataUnavailable("down")
        clock.now += EXPIRED * 10
        with caplog.at_level(logging.WARNING, logger="oms.refdata"):
            assert await cache.get("a") == "a-v1"
            assert await cache.get("a") == "a-v1"  # still stale: retried, not re-stamped
    assert source.calls == 3
    assert any("serving cached value" in r.getMessage() for r in caplog.records)


async def test_failed_background_refresh_keeps_the_stale_value() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        await cache.get("a")
        source.error = exceptions.ReferenceDataUnavailable("down")
        source.hold()
        clock.now += STALE
        assert await cache.get("a") == "a-v1"
        source.release()
        with anyio.fail_after(1):
            await source.finished.wait()
        assert await cache.get("a") == "a-v1"


async def test_cold_cache_with_source_down_raises_unavailable() -> None:
    source, clock = Source(), Clock()
    source.error = exceptions.ReferenceDataUnavailable("down")
    async with open_cache(source, clock) as cache:
        with pytest.raises(exceptions.ReferenceDataUnavailable):
            await cache.get("a")
        source.error = None
        assert await cache.get("a") == "a-v2"  # failures are not cached


async def test_wrong_answer_is_raised_even_with_a_stale_value() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        await cache.get("a")
        source.error = exceptions.ReferenceDataError("garbage")
        clock.now += EXPIRED
        with pytest.raises(exceptions.ReferenceDataError):
            await cache.get("a")


async def test_caller_giving_up_does_not_cancel_the_fetch() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock) as cache:
        source.hold()
        with anyio.move_on_after(0.05) as scope:
            await cache.get("a")
        assert scope.cancelled_caught
        source.release()
        with anyio.fail_after(1):
            await source.finished.wait()
        assert await cache.get("a") == "a-v1"
    assert source.calls == 1


async def test_closing_the_owner_fails_waiting_callers_as_unavailable() -> None:
    source, clock = Source(), Clock()
    source.hold()
    errors: list[BaseException] = []

    async def caller(cache: Cache[str, str]) -> None:
        try:
            await cache.get("a")
        except exceptions.ReferenceDataUnavailable as exc:
            errors.append(exc)

    # The callers outlive the cache's task group, as requests outlive a closing client.
    async with anyio.create_task_group() as callers, open_cache(source, clock) as cache:
        callers.start_soon(caller, cache)
        with anyio.fail_after(1):
            await source.started.wait()
    assert len(errors) == 1


async def test_oldest_entry_is_evicted_beyond_max_entries() -> None:
    source, clock = Source(), Clock()
    async with open_cache(source, clock, max_entries=2) as cache:
        for key in ("a", "b", "c"):
            await cache.get(key)
        assert await cache.get("c") == "c-v3"
        assert await cache.get("b") == "b-v2"
        assert await cache.get("a") == "a-v4"
