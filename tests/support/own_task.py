"""Something served from a task of its own, started and stopped from a test.

The clients and the writer OMS builds hold task groups, which must be left in
the task that entered them; a fixture's setup and teardown run in different
tasks. So the whole thing runs in one task, and the test only starts it, waits
until it is ready and asks it to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")


class OwnTask(Generic[T]):
    def __init__(self) -> None:
        self._stop = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _start(self, serve: Callable[[asyncio.Future[T]], Coroutine[Any, Any, None]]) -> T:
        """Run ``serve(ready)`` until ``stop``; what it sets ``ready`` to, once it does.

        A start-up error is raised here; bounded: 60 s.
        """
        ready: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(serve(ready))
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # re-raise the start-up error
        return ready.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=60)
        self._task = None
