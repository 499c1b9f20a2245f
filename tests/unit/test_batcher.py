"""The batcher: a group per key, flushed by size, bytes or age; ``close`` sends what is open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from oms import config
from oms.actors.batcher import Batcher


@asynccontextmanager
async def batcher(**settings: Any) -> AsyncIterator[Batcher[str]]:
    """A batcher whose streams are closed at the end, whatever the test left open."""
    b: Batcher[str] = Batcher(config.ProcessingSettings(**settings))
    try:
        yield b
    finally:
        await b.close()
        b.groups.close()


def nothing_flushed(b: Batcher[str]) -> bool:
    try:
        b.groups.receive_nowait()
    except anyio.WouldBlock:
        return True
    return False


async def test_a_group_flushes_when_it_is_full() -> None:
    async with batcher(batch_max_documents=3, batch_max_age_s=60) as b:
        await b.add("A", "a1", 10)
        await b.add("B", "b1", 10)
        await b.add("A", "a2", 10)
        assert nothing_flushed(b)
        await b.add("A", "a3", 10)
        assert b.groups.receive_nowait() == ("A", ["a1", "a2", "a3"])
        assert nothing_flushed(b)  # B is still open


async def test_a_group_flushes_before_it_would_outgrow_its_bytes() -> None:
    async with batcher(batch_max_bytes=100, batch_max_age_s=60) as b:
        await b.add("A", "a1", 60)
        await b.add("A", "a2", 30)
        assert nothing_flushed(b)
        await b.add("A", "a3", 20)  # 110 bytes would be too many: a1, a2 go, a3 opens a new group
        assert b.groups.receive_nowait() == ("A", ["a1", "a2"])
        assert nothing_flushed(b)
        await b.close()
        assert b.groups.receive_nowait() == ("A", ["a3"])


async def test_a_group_flushes_once_its_first_document_is_old_enough() -> None:
    async with batcher(batch_max_age_s=0.2) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.flush_by_age)
            await b.add("A", "a1", 10)
            await anyio.sleep(0.05)
            await b.add("A", "a2", 10)
            assert nothing_flushed(b)  # younger than its age
            with anyio.fail_after(2):
                flushed = await b.groups.receive()
            assert flushed == ("A", ["a1", "a2"])
            await b.close()  # also ends flush_by_age


async def test_close_sends_every_open_group_then_ends_the_stream() -> None:
    async with batcher(batch_max_age_s=60) as b:
        await b.add("A", "a1", 10)
        await b.add("B", "b1", 10)
        with b.receiver() as receiver:
            await b.close()
            assert sorted([await receiver.receive(), await receiver.receive()]) == [
                ("A", ["a1"]),
                ("B", ["b1"]),
            ]
            with pytest.raises(anyio.EndOfStream):
                await receiver.receive()
