"""A small async cache that keeps serving while its source is down.

Per key: younger than ``ttl_s`` is served as is; up to ``ttl_s +
revalidate_window_s`` it is served and refreshed in the background; older or
absent, the caller waits for a fetch. Every fetch is single-flight (one per
key at a time, shared by all callers) and runs in the owner's task group, so a
caller that gives up does not cancel the fetch others are waiting for.

A fetch signals "the source is down" by raising ``ReferenceDataUnavailable``;
then any cached value, however old, is served instead. Other errors propagate.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from anyio.abc import TaskGroup

from oms import exceptions, metrics
from oms.singleflight import SingleFlight

log = logging.getLogger("oms.refdata")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    fetched_at: float


class Cache(Generic[K, V]):
    """Cache of ``fetch(key)`` results; see the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[K], Awaitable[V]],
        *,
        ttl_s: float,
        revalidate_window_s: float,
        task_group: TaskGroup,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name  # for logs; keys are never logged
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._stale_until_s = ttl_s + revalidate_window_s
        # Keys can come from requests (brand codes), so the cache is bounded.
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._flights: SingleFlight[K, V] = SingleFlight(
            task_group,
            closed=lambda: exceptions.ReferenceDataUnavailable("reference data client closed"),
        )

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            if age < self._ttl_s:
                return entry.value
            if age < self._stale_until_s:
                self._flights.start(key, functools.partial(self._fetch_and_store, key))
                return entry.value
        try:
            return await self._flights.join(key, functools.partial(self._fetch_and_store, key))
        except exceptions.ReferenceDataUnavailable:
            entry = self._entries.get(key)
            if entry is None:
                raise
            return entry.value

    async def _fetch_and_store(self, key: K) -> V:
        """One fetch, counted and logged; its error goes to the callers waiting on it."""
        try:
            value = await self._fetch(key)
        except exceptions.ReferenceDataUnavailable as exc:
            metrics.REFDATA_CALLS.labels(self._name, "unavailable").inc()
            entry = self._entries.get(key)
            if entry is not None:
                metrics.REFDATA_STALE_SERVED.inc()
                age = self._clock() - entry.fetched_at
                log.warning("refdata %s: %s; serving cached value aged %.0fs", self._name, exc, age)
            else:
                log.warning("refdata %s: %s; nothing cached", self._name, exc)
            raise
        except exceptions.ReferenceDataError as exc:
            metrics.REFDATA_CALLS.labels(self._name, "error").inc()
            log.error("refdata %s: %s", self._name, exc)
            raise
        except Exception:
            log.exception("refdata %s: fetch failed unexpectedly", self._name)
            raise
        metrics.REFDATA_CALLS.labels(self._name, "ok").inc()
        self._store(key, value)
        return value

    def _store(self, key: K, value: V) -> None:
        self._entries.pop(key, None)  # re-insert so dict order is fetch order
        self._entries[key] = _Entry(value, self._clock())
        if len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
