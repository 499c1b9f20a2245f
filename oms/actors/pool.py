"""A supervised pool of actors sharing one mailbox.

Each actor takes one message at a time and runs the pool's handler on it. An
actor whose handler raises is logged, its message goes back to the head of the
mailbox, and the actor is replaced after a backoff that grows while failures
repeat; a message that keeps failing (``max_redeliveries``) is set aside and
logged — its document stays in the database, where the sweeper finds it.

Shutdown drains: ``drain`` closes the mailbox to new work and waits while the
actors finish the message in hand; the app's runner bounds that with the pool's
deadline and then cancels what is still running.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic

import anyio
from anyio.abc import TaskStatus

from oms import metrics
from oms.actors.mailbox import M, PriorityMailbox
from oms.backoff import jittered_backoff
from oms.lifecycle import Component

logger = logging.getLogger(__name__)

Handler = Callable[[M], Awaitable[None]]


@dataclass(frozen=True)
class PoolSettings:
    """Plain values: the pool is generic, its callers map config onto this."""

    size: int
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    max_redeliveries: int = 5


class ActorPool(Component, Generic[M]):
    def __init__(
        self,
        name: str,
        mailbox: PriorityMailbox[M],
        handler: Handler[M],
        settings: PoolSettings,
        *,
        message_id: Callable[[M], object] = id,
    ) -> None:
        self.name = name
        self.mailbox = mailbox
        self._handler = handler
        self._settings = settings
        self._message_id = message_id
        self._failures: dict[object, int] = {}
        self._running = anyio.Event()
        self._running.set()
        self._stopping = False
        self._busy = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._crashes: dict[int, int] = {}

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Actors finish their message in hand, then take no more until ``resume``."""
        if self._running.is_set():
            self._running = anyio.Event()
            metrics.POOL_PAUSED.labels(self.name).set(1)
            logger.info("pool paused", extra={"pool": self.name})

    def resume(self) -> None:
        self._running.set()
        metrics.POOL_PAUSED.labels(self.name).set(0)
        logger.info("pool resumed", extra={"pool": self.name})

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until ``drain``; returns once they have drained (or are cancelled)."""
        metrics.POOL_SIZE.labels(self.name).set(self._settings.size)
        async with anyio.create_task_group() as tg:
            for slot in range(self._settings.size):
                tg.start_soon(self._supervise, slot)
            task_status.started()

    async def drain(self) -> None:
        """Take no more messages; return once the messages in hand are finished."""
        self._stopping = True
        self.mailbox.close()
        self._running.set()  # a paused pool must wake up to see it is stopping
        await self._idle.wait()

    async def _supervise(self, slot: int) -> None:
        self._crashes[slot] = 0
        while not self._stopping:
            try:
                await self._actor(slot)
                return
            except Exception:
                self._crashes[slot] += 1
                delay = jittered_backoff(
                    self._settings.restart_backoff_s,
                    self._crashes[slot] - 1,
                    self._settings.restart_backoff_max_s,
                )
                logger.exception(
                    "actor crashed; replacing it",
                    extra={"pool": self.name, "slot": slot, "restart_in_s": delay},
                )
                metrics.ACTOR_RESTARTS.labels(self.name).inc()
                await anyio.sleep(delay)

    async def _actor(self, slot: int) -> None:
        while True:
            await self._running.wait()
            if self._stopping and len(self.mailbox) == 0:
                return
            try:
                message = await self.mailbox.get()
            except anyio.EndOfStream:
                return
            if self._stopping:
                # Shutting down: leave it; its document is safe in the database.
                return
            if self.paused:
                # Paused while this actor was already waiting: hold the message back.
                self.mailbox.put_back(message)
                continue
            await self._handle(message)
            self._crashes[slot] = 0  # a success ends the backoff

    async def _handle(self, message: M) -> None:
        self._busy += 1
        self._idle = anyio.Event() if self._busy == 1 else self._idle
        metrics.ACTORS_BUSY.labels(self.name).set(self._busy)
        key = self._message_id(message)
        try:
            await self._handler(message)
        except Exception:
            failures = self._failures.get(key, 0) + 1
            if failures > self._settings.max_redeliveries:
                self._failures.pop(key, None)
                logger.error(
                    "message failed too often; set aside for the sweeper",
                    extra={"pool": self.name, "failures": failures},
                )
                metrics.MESSAGES_SET_ASIDE.labels(self.name).inc()
            else:
                self._failures[key] = failures
                self.mailbox.put_back(message)
            raise
        else:
            self._failures.pop(key, None)
        finally:
            self._busy -= 1
            metrics.ACTORS_BUSY.labels(self.name).set(self._busy)
            if self._busy == 0:
                self._idle.set()
