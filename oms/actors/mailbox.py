"""A bounded mailbox that serves urgent work first and source systems fairly.

Three priority lanes (urgent, normal, bulk); a message is always taken from the
most urgent non-empty lane, so urgent work never waits behind a bulk load.
Within a lane each source system has its own FIFO and the lane serves them in
turn, so one system's flood does not starve another's trickle.

Capacity is shared by all lanes. A producer that must not store work it cannot
hand on (intake) first ``reserve``s a slot: refused at once when full, so the
caller can answer 503 before anything is written.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import anyio

from oms import exceptions, metrics


class Routable(Protocol):
    @property
    def priority_rank(self) -> int: ...

    @property
    def fairness_key(self) -> str: ...


M = TypeVar("M", bound=Routable)
LANES = 3


class Reservation(Generic[M]):
    """One slot held in a mailbox: ``put`` uses it, ``release`` gives it back."""

    def __init__(self, mailbox: PriorityMailbox[M]) -> None:
        self._mailbox: PriorityMailbox[M] | None = mailbox

    def put(self, message: M) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is None:
            raise RuntimeError("reservation already used")
        mailbox._reserved -= 1
        mailbox._push(message, front=False)

    def release(self) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            mailbox._reserved -= 1
            mailbox._changed()


class PriorityMailbox(Generic[M]):
    def __init__(
        self, name: str, capacity: int, *, key: Callable[[M], Hashable] | None = None
    ) -> None:
        """``key`` names what a message is about: a message whose key is already
        waiting is not queued twice (the sweeper and a retry may both find it)."""
        self.name = name
        self.capacity = capacity
        self._key = key
        self._waiting: set[Hashable] = set()
        self._lanes: list[OrderedDict[str, deque[M]]] = [OrderedDict() for _ in range(LANES)]
        self._size = 0
        self._reserved = 0
        self._ready = anyio.Event()
        self._closed = False
        metrics.QUEUE_CAPACITY.labels(name).set(capacity)

    def __len__(self) -> int:
        return self._size

    @property
    def free(self) -> int:
        return self.capacity - self._size - self._reserved

    def reserve(self, retry_after_s: int = 1) -> Reservation[M]:
        """Hold a slot, or raise Overloaded at once when the mailbox is full."""
        if self._closed:
            raise exceptions.Overloaded(f"{self.name} is shutting down", retry_after_s)
        if self.free <= 0:
            metrics.QUEUE_DROPPED.labels(self.name).inc()
            raise exceptions.Overloaded(f"{self.name} is full", retry_after_s)
        self._reserved += 1
        return Reservation(self)

    def holds(self, message: M) -> bool:
        """True when a message with the same key is waiting already."""
        return self._key is not None and self._key(message) in self._waiting

    def offer(self, message: M) -> bool:
        """Put without a reservation; False (counted) when full or closed.

        True as well when the same key is waiting already: it is not queued twice.
        """
        if self.holds(message):
            return True
        if self._closed or self.free <= 0:
            metrics.QUEUE_DROPPED.labels(self.name).inc()
            return False
        self._push(message, front=False)
        return True

    def put_back(self, message: M) -> None:
        """Return a message taken by an actor that failed on it: it goes first in line.

        Allowed past capacity: the message held a slot until it was taken.
        """
        self._push(message, front=True)

    async def get(self) -> M:
        while True:
            message = self._pop()
            if message is not None:
                return message
            if self._closed:
                raise anyio.EndOfStream
            await self._ready.wait()

    def close(self) -> None:
        """Wake waiting getters; they end once the mailbox is empty."""
        self._closed = True
        self._ready.set()

    def _push(self, message: M, *, front: bool) -> None:
        if self._key is not None:
            key = self._key(message)
            if key in self._waiting:
                return
            self._waiting.add(key)
        lane = self._lanes[message.priority_rank]
        queue = lane.get(message.fairness_key)
        if queue is None:
            queue = lane[message.fairness_key] = deque()
        if front:
            queue.appendleft(message)
            lane.move_to_end(message.fairness_key, last=False)
        else:
            queue.append(message)
        self._size += 1
        self._changed()
        self._ready.set()

    def _pop(self) -> M | None:
        for lane in self._lanes:
            if not lane:
                continue
            key, queue = next(iter(lane.items()))
            message = queue.popleft()
            if queue:
                lane.move_to_end(key)  # round robin: this system goes to the back
            else:
                del lane[key]
            self._size -= 1
            if self._key is not None:
                self._waiting.discard(self._key(message))
            if self._size == 0 and not self._closed:
                self._ready = anyio.Event()
            self._changed()
            return message
        return None

    def _changed(self) -> None:
        metrics.QUEUE_DEPTH.labels(self.name).set(self._size)
