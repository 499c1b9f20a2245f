"""Group enriched documents into Thunderhead batches, flushed by size, bytes or age.

One open group per ``batchConfigResId``. A group is flushed to ``groups`` when
it reaches ``batch_max_documents`` or ``batch_max_bytes``, or when its first
document has waited ``batch_max_age_s``. ``groups`` is small and bounded, so
when the submitters (``oms.actors.submitter``) are slow the actors wait here
instead of piling up work in memory.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from oms import config

T = TypeVar("T")


class _Group(Generic[T]):
    def __init__(self) -> None:
        self.items: list[T] = []
        self.bytes = 0
        self.opened_at = time.monotonic()


class Batcher(Generic[T]):
    def __init__(self, settings: config.ProcessingSettings) -> None:
        self._settings = settings
        self._groups: dict[str, _Group[T]] = {}
        self._send, self.groups = anyio.create_memory_object_stream[tuple[str, list[T]]](
            settings.submitters
        )
        self._opened = anyio.Event()
        self._flusher = anyio.CancelScope()

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

    async def flush_by_age(self) -> None:
        """Flush each group once its first document has waited long enough, until ``close``."""
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

    async def close(self) -> None:
        """Flush every open group now, then end ``groups`` once they are taken.

        The caller bounds this with a deadline: what is not sent by then keeps
        its lease in the database and is recovered when the lease expires.
        """
        self._flusher.cancel()
        try:
            for key in list(self._groups):
                await self._flush(key)
        finally:
            self._send.close()

    def receiver(self) -> MemoryObjectReceiveStream[tuple[str, list[T]]]:
        """A receiving end for one submitter (call before ``groups.close()``)."""
        return self.groups.clone()

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
