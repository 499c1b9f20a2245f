"""Group commit: many concurrent intake requests share one transaction.

A request hands its row to the writer and waits for the outcome. Each writer
loop takes whatever has queued up while the previous transaction ran (natural
batching: no added delay at low load, large batches under high load), stores it
in one transaction and wakes every waiter. ``group_commit = false`` turns this
into one transaction per request: the naive variant the benchmark compares with.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio
import asyncpg
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from oms import config, exceptions, metrics
from oms.db.pool import CONNECTION_ERRORS
from oms.lifecycle import Component
from oms.store import documents, journal

logger = logging.getLogger(__name__)

_Pending = tuple[documents.NewDocument, "asyncio.Future[documents.InsertOutcome]"]


class DocumentWriter(Component):
    name = "intake writer"

    def __init__(
        self,
        db: asyncpg.Pool,
        topics: journal.Topics,
        settings: config.IntakeSettings,
    ) -> None:
        self._db = db
        self._topics = topics
        self._settings = settings
        self._send, self._receive = anyio.create_memory_object_stream[_Pending](
            settings.commit_max_rows * 4
        )
        self._finished = anyio.Event()

    async def write(self, item: documents.NewDocument) -> documents.InsertOutcome:
        """Store one request; raises DatabaseError if the database is unavailable."""
        if not self._settings.group_commit:
            return (await self._store([item]))[0]
        future: asyncio.Future[documents.InsertOutcome] = asyncio.get_running_loop().create_future()
        try:
            await self._send.send((item, future))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise exceptions.Overloaded("intake is shutting down") from exc
        return await future

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the writer loops until ``close`` is called and the queue is drained."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._settings.commit_writers):
                    tg.start_soon(self._loop, self._receive.clone())
                self._receive.close()
                task_status.started()
        finally:
            self._finished.set()

    async def drain(self) -> None:
        """Take no more requests; return once the queued ones are written."""
        self.close()
        await self._finished.wait()

    def close(self) -> None:
        """Stop taking requests; queued ones are still written by running loops."""
        self._send.close()
        self._receive.close()  # the loops read from clones; this one only if never run

    async def _loop(self, receive: MemoryObjectReceiveStream[_Pending]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < self._settings.commit_max_rows:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[_Pending]) -> None:
        """Write one group and wake its waiters; never raises (the loop must live on)."""
        items = [item for item, _ in batch]
        try:
            outcomes = await self._store(items)
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                _settle(batch[0][1], _as_client_error(exc))
                return
            # One bad row must not fail its neighbours: write them one by one.
            logger.warning("group commit failed (%s); retrying row by row", exc)
            for pending in batch:
                await self._write_batch([pending])
            return
        except Exception as exc:
            if not isinstance(exc, exceptions.DatabaseError):
                logger.exception("intake write failed unexpectedly")
            for _, future in batch:
                _settle(future, exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _store(self, items: list[documents.NewDocument]) -> list[documents.InsertOutcome]:
        started = time.perf_counter()
        try:
            async with self._db.acquire() as conn:
                outcomes = await documents.insert_many(conn, items, self._topics)
        except CONNECTION_ERRORS as exc:
            metrics.COMMIT_FAILURES.labels("database_unavailable").inc()
            raise exceptions.DatabaseError(f"database unavailable: {exc}") from exc
        except asyncpg.PostgresError:
            metrics.COMMIT_FAILURES.labels("rejected").inc()
            raise
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_SIZE.observe(len(items))
        return outcomes


def _as_client_error(exc: asyncpg.PostgresError) -> BaseException:
    """A data exception (SQLSTATE class 22) is the request's fault, not OMS's."""
    if isinstance(exc, asyncpg.DataError):
        # The typed fields are validated before; only the free-form data can hit this.
        return exceptions.UnstorableRequest("data", f"cannot be stored: {exc}", code="unstorable")
    return exc


def _settle(future: asyncio.Future[documents.InsertOutcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
