"""In-memory, bounded queues between stages.

A queue is only a push hint: the document row is the truth, so an event the
queue cannot take is not lost. The sweeper re-feeds work that no event carried.
"""

from __future__ import annotations

import logging
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from oms import metrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


class MemoryQueue(Generic[T]):
    """A bounded FIFO with a non-blocking ``offer`` for producers that must not wait."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._send: MemoryObjectSendStream[T]
        self._receive: MemoryObjectReceiveStream[T]
        self._send, self._receive = anyio.create_memory_object_stream[T](capacity)
        metrics.QUEUE_CAPACITY.labels(name).set(capacity)

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    @property
    def free(self) -> int:
        return self.capacity - self.depth

    def offer(self, item: T) -> bool:
        """Put without waiting; False (and counted) when full."""
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            metrics.QUEUE_DROPPED.labels(self.name).inc()
            return False
        finally:
            metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
        return True

    async def get(self) -> T:
        item = await self._receive.receive()
        metrics.QUEUE_DEPTH.labels(self.name).set(self.depth)
        return item

    def close(self) -> None:
        self._send.close()
        self._receive.close()
