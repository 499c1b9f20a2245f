"""Group enriched documents into Thunderhead batches, flushed by size, bytes or age.

One open group per ``batchConfigResId``. A group is handed to the submitters
when it reaches ``batch_max_documents`` or ``batch_max_bytes``, or when its first
document has waited ``batch_max_age_s``. The hand-over stream is small and
bounded, so when Thunderhead is slow the actors wait here instead of piling up
work in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from oms import config

logger = logging.getLogger(__name__)
T = TypeVar("T")
Submit = Callable[[str, list[T]], Awaitable[None]]


class _Group(Generic[T]):
    def __init__(self) -> None:
        self.items: list[T] = []
        self.bytes = 0
        self.opened_at = time.monotonic()


class Batcher(Generic[T]):
    def __init__(self, settings: config.ProcessingSettings, submit: Submit[T]) -> None:
        self._settings = settings
        self._submit = submit
        self._groups: dict[str, _Group[T]] = {}
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, list[T]]](
            settings.submitters
        )
        self._opened = anyio.Event()
        self._flusher = anyio.CancelScope()
        self.finished = anyio.Event()

    async def add(self, key: str, item: T, size: int) -> None:
        """Add to the open group for ``key``; may wait while submitters are busy."""
        group = self._groups.get(key)
        if group is not None and group.bytes + size > self._settings.batch_max_bytes:
            await self._flush(key)
            # Another actor may have opened a new group while this one waited.
            group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            self._opened.set()
        group.items.append(item)
        group.bytes += size
        if len(group.items) >= self._settings.batch_max_documents:
            await self._flush(key)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Submitters plus the age-based flusher; returns after ``close`` once all is sent."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._settings.submitters):
                    tg.start_soon(self._submitter, self._receive.clone())
                self._receive.close()
                tg.start_soon(self._flush_by_age)
                task_status.started()
        finally:
            self.finished.set()

    async def close(self) -> None:
        """Send every open group now, then let the submitters finish and stop.

        The caller bounds this with a deadline: what is not sent by then keeps
        its lease in the database and is recovered when the lease expires.
        """
        self._flusher.cancel()
        try:
            for key in list(self._groups):
                await self._flush(key)
        finally:
            self._send.close()

    async def _flush(self, key: str) -> None:
        group = self._groups.pop(key, None)
        if group is None or not group.items:
            return
        try:
            await self._send.send((key, group.items))
        except BaseException:
            # Not handed over (cancelled, closed): put the documents back, ahead of
            # any group opened meanwhile, so close() or the next flush sends them.
            newer = self._groups.get(key)
            if newer is not None:
                group.items.extend(newer.items)
                group.bytes += newer.bytes
            self._groups[key] = group
            raise

    async def _flush_by_age(self) -> None:
        max_age = self._settings.batch_max_age_s
        with self._flusher:
            while True:
                if not self._groups:
                    self._opened = anyio.Event()
                    await self._opened.wait()
                    continue
                now = time.monotonic()
                oldest_key, oldest = min(self._groups.items(), key=lambda kv: kv[1].opened_at)
                wait = oldest.opened_at + max_age - now
                if wait > 0:
                    await anyio.sleep(wait)
                    continue
                await self._flush(oldest_key)

    async def _submitter(self, receive: anyio.abc.ObjectReceiveStream[tuple[str, list[T]]]) -> None:
        async with receive:
            async for key, items in receive:
                try:
                    await self._submit(key, items)
                except Exception:
                    # The documents keep their lease and batch row: recoverable.
                    logger.exception("batch submission failed unexpectedly")
