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
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, cast

import anyio
from anyio.abc import TaskGroup

from oms import exceptions, metrics

log = logging.getLogger("oms.refdata")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    fetched_at: float


@dataclasses.dataclass(slots=True)
class _Flight(Generic[V]):
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    ok: bool = False
    value: V | None = None
    # Overwritten by the fetch's own error; left as is only if it was cancelled.
    error: BaseException = dataclasses.field(
        default_factory=lambda: exceptions.ReferenceDataUnavailable("reference data client closed")
    )


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
        self._task_group = task_group
        # Keys can come from requests (brand codes), so the cache is bounded.
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._flights: dict[K, _Flight[V]] = {}

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            if age < self._ttl_s:
                return entry.value
            if age < self._stale_until_s:
                self._flight(key)
                return entry.value
        flight = self._flight(key)
        await flight.done.wait()
        if flight.ok:
            return cast(V, flight.value)
        entry = self._entries.get(key)
        if isinstance(flight.error, exceptions.ReferenceDataUnavailable) and entry is not None:
            return entry.value
        raise flight.error

    def _flight(self, key: K) -> _Flight[V]:
        """The fetch in progress for ``key``, started if there is none."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            self._task_group.start_soon(self._run, key, flight)
        return flight

    async def _run(self, key: K, flight: _Flight[V]) -> None:
        # Never raises: an error belongs to the callers waiting on this flight,
        # and raising would cancel the owner's whole task group.
        try:
            value = await self._fetch(key)
        except exceptions.ReferenceDataUnavailable as exc:
            metrics.REFDATA_CALLS.labels(self._name, "unavailable").inc()
            flight.error = exc
            entry = self._entries.get(key)
            if entry is not None:
                metrics.REFDATA_STALE_SERVED.inc()
                age = self._clock() - entry.fetched_at
                log.warning("refdata %s: %s; serving cached value aged %.0fs", self._name, exc, age)
            else:
                log.warning("refdata %s: %s; nothing cached", self._name, exc)
        except exceptions.ReferenceDataError as exc:
            metrics.REFDATA_CALLS.labels(self._name, "error").inc()
            flight.error = exc
            log.error("refdata %s: %s", self._name, exc)
        except Exception as exc:
            flight.error = exc
            log.exception("refdata %s: fetch failed unexpectedly", self._name)
        else:
            metrics.REFDATA_CALLS.labels(self._name, "ok").inc()
            self._store(key, value)
            flight.ok, flight.value = True, value
        finally:
            del self._flights[key]
            flight.done.set()

    def _store(self, key: K, value: V) -> None:
        self._entries.pop(key, None)  # re-insert so dict order is fetch order
        self._entries[key] = _Entry(value, self._clock())
        if len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
