"""At most one call per key in flight; everyone who asks meanwhile shares its outcome.

The call runs in the owner's task group, not in a caller's task, so a caller that
gives up (a timeout, a cancelled request) does not cancel it for the others, and a
caller may start one without waiting for it (a background refresh). Its result or
its error goes to every caller waiting on it; an error is never raised into the
task group, which would cancel the owner's other work.

anyio has nothing ready for this: ``anyio.functools.lru_cache`` runs the call in
the first caller's task (that caller's cancellation cancels it) and lets each
waiter call again after an error instead of sharing it; a ``TaskHandle`` awaited
by many raises the task's error into its task group too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, cast

import anyio
from anyio.abc import TaskGroup

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclasses.dataclass(slots=True)
class _Flight(Generic[V]):
    error: BaseException  # the call's own error; as given only if it was cancelled
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    ok: bool = False
    value: V | None = None


class SingleFlight(Generic[K, V]):
    """Calls keyed by ``K`` returning ``V``, one at a time per key.

    ``closed()`` makes the error waiters get when the call was cancelled (the owner
    closed its task group).
    """

    def __init__(self, task_group: TaskGroup, *, closed: Callable[[], BaseException]) -> None:
        self._task_group = task_group
        self._closed = closed
        self._flights: dict[K, _Flight[V]] = {}

    def start(self, key: K, call: Callable[[], Awaitable[V]]) -> None:
        """Start ``call`` for ``key`` unless one is in flight; do not wait for it."""
        self._flight(key, call)

    async def join(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """The outcome of the call in flight for ``key`` (``call``, started if there
        is none): its value, or its error raised."""
        flight = self._flight(key, call)
        await flight.done.wait()
        if flight.ok:
            return cast(V, flight.value)
        raise flight.error

    def _flight(self, key: K, call: Callable[[], Awaitable[V]]) -> _Flight[V]:
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight(error=self._closed())
            self._task_group.start_soon(self._run, key, call, flight)
        return flight

    async def _run(self, key: K, call: Callable[[], Awaitable[V]], flight: _Flight[V]) -> None:
        try:
            flight.value = await call()
            flight.ok = True
        except Exception as exc:
            flight.error = exc
        finally:
            del self._flights[key]
            flight.done.set()
