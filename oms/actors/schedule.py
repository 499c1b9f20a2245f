"""A due-time schedule: hand each item on when its time comes.

One heap and one task, however many items wait: no sleeping coroutine per item.
It holds one entry per key, and a later ``add`` never delays an item (the
earlier time wins). It is a convenience, not the record: the due times are in
the database, and the sweeper re-feeds whatever the schedule forgets (a
restart, a full schedule, a refused delivery). Used for processing's retries
and monitoring's polls.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskStatus

from oms.lifecycle import Component

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SizeGauge(Protocol):
    def set(self, value: float) -> None: ...


class DueSchedule(Component, Generic[T]):
    def __init__(
        self,
        name: str,
        max_size: int,
        *,
        key: Callable[[T], Hashable],
        deliver: Callable[[T], bool],
        size: SizeGauge,
        redeliver_after_s: float | None = None,
    ) -> None:
        """``deliver`` returns False when the next stage has no room: the item comes
        back after ``redeliver_after_s``, or is left to the sweeper when None."""
        self.name = f"{name} schedule"
        self._max_size = max_size
        self._key = key
        self._deliver = deliver
        self._size = size
        self._redeliver_after_s = redeliver_after_s
        self._heap: list[tuple[float, int, Hashable]] = []
        self._items: dict[Hashable, tuple[float, T]] = {}
        self._order = itertools.count()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def add(self, item: T, delay_s: float) -> bool:
        """Schedule ``item`` in ``delay_s``; False when full (the database keeps it)."""
        key = self._key(item)
        due = time.monotonic() + delay_s
        current = self._items.get(key)
        if current is not None and current[0] <= due:
            return True
        if current is None and len(self._items) >= self._max_size:
            return False
        self._items[key] = (due, item)
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._size.set(len(self._items))
        self._changed.set()
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver due items, for ever."""
        task_status.started()
        while True:
            wait = self.next_due_in()
            if wait is None or wait > 0:
                self._changed = anyio.Event()
                with anyio.move_on_after(wait if wait is not None else float("inf")):
                    await self._changed.wait()
                continue
            item = self.pop()
            if self._deliver(item):
                continue
            if self._redeliver_after_s is not None:
                self.add(item, self._redeliver_after_s)  # the next stage is behind
            else:
                logger.warning("next stage full: a due item is left to the sweeper: %s", self.name)

    def next_due_in(self) -> float | None:
        """Seconds until the next item is due (<= 0: due now), None when empty."""
        while self._heap:
            due, _, key = self._heap[0]
            entry = self._items.get(key)
            if entry is not None and entry[0] == due:
                return due - time.monotonic()
            heapq.heappop(self._heap)  # superseded by an earlier entry
        return None

    def pop(self) -> T:
        """Take the next item (check ``next_due_in`` first)."""
        _, _, key = heapq.heappop(self._heap)
        _, item = self._items.pop(key)
        self._size.set(len(self._items))
        return item
