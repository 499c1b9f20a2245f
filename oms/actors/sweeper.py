"""Timed database scans that re-feed work no event carried.

In ``events`` mode the sweeper is a safety net: it finds documents left RECEIVED
(a full mailbox, a restart), retries that came due without being re-fed,
leases that expired (a process killed mid-work) and jobs nobody polled for a
while, and hands them back to the stages — counted and written to the timeline.

In ``scheduled`` mode the same scans ARE the pipeline: with no threshold, at the
configured intervals, they feed every due document to processing and every due
job to monitoring; nothing is pushed between stages.

Safe with many processes: the scans only read, and every stage's claim or
settle is a compare-and-set, so work found twice is done once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
from anyio.abc import TaskStatus

from oms import config, domain, metrics
from oms.actors.mailbox import PriorityMailbox
from oms.actors.monitoring import MonitoringStage, PollJob
from oms.db.pool import CONNECTION_ERRORS
from oms.lifecycle import Component
from oms.store import monitoring as monitoring_store
from oms.store import reconciliation, sweeps

logger = logging.getLogger(__name__)


class Sweeper(Component):
    name = "sweeper"

    def __init__(
        self,
        db: asyncpg.Pool,
        settings: config.Settings,
        processing: PriorityMailbox[domain.DocumentRequested],
        monitoring: MonitoringStage,
    ) -> None:
        self._db = db
        self._settings = settings.sweeper
        self._scheduled = settings.pipeline.mode == "scheduled"
        self._pipeline = settings.pipeline
        self._processing = processing
        self._monitoring = monitoring
        # What this process re-fed lately, so a slow mailbox is not fed twice.
        self._recent: dict[uuid.UUID, float] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._scheduled:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    self._every,
                    self._pipeline.scheduled_processing_interval_s,
                    self.feed_processing,
                )
                tg.start_soon(
                    self._every,
                    self._pipeline.scheduled_monitoring_interval_s,
                    self.feed_monitoring,
                )
            return
        # Start-up: pick up what a previous run left (stopped or killed), at once.
        await self._guarded(lambda: self.sweep(startup=True))
        await self._every(self._settings.interval_s, self.sweep)

    async def _every(self, interval_s: float, scan: Callable[[], Awaitable[object]]) -> None:
        while True:
            await anyio.sleep(interval_s)
            await self._guarded(scan)

    async def _guarded(self, scan: Callable[[], Awaitable[object]]) -> None:
        """A failed pass is logged and the next one tries again: never kill the process."""
        try:
            await scan()
        except CONNECTION_ERRORS as exc:
            logger.warning("sweep skipped: database unavailable (%s)", exc)
        except Exception:
            logger.exception("sweep failed; trying again at the next interval")

    async def sweep(self, *, startup: bool = False) -> None:
        """One safety-net pass (events mode)."""
        threshold = 0.0 if startup else self._settings.received_after_s
        await self.feed_processing(threshold_s=threshold, note=not startup)
        overdue = 0.0 if startup else self._settings.submitted_unpolled_after_s
        await self.feed_monitoring(overdue_s=overdue)

    async def feed_processing(self, *, threshold_s: float = 0.0, note: bool = False) -> int:
        now = datetime.now(UTC)
        async with self._db.acquire() as conn:
            strays = await reconciliation.release_strays(conn, now)
            if strays:
                logger.error(
                    "parked documents without a reconciling batch were made due again",
                    extra={"count": strays},
                )
            found = await sweeps.due_for_processing(
                conn, now, now - timedelta(seconds=threshold_s), self._settings.batch_size
            )
        self._forget_old()
        fresh = [
            f
            for f in found
            if f.event.document_id not in self._recent and not self._processing.holds(f.event)
        ]
        fed = []
        for item in fresh:
            if not self._processing.offer(item.event):
                break  # full: the next pass continues
            self._recent[item.event.document_id] = time.monotonic()
            fed.append(item)
        if fed and note:
            async with self._db.acquire() as conn:
                await sweeps.note_recoveries(conn, fed, now)
        for item in fed:
            metrics.SWEEPER_RECOVERIES.labels(item.reason if note else "scheduled").inc()
        if fed and note:
            logger.info("sweeper re-fed documents", extra={"count": len(fed)})
        return len(fed)

    async def feed_monitoring(self, *, overdue_s: float = 0.0) -> int:
        now = datetime.now(UTC)
        async with self._db.acquire() as conn:
            jobs = await monitoring_store.due_jobs(
                conn, now - timedelta(seconds=overdue_s), self._settings.batch_size
            )
        count = 0
        for job in jobs:
            if self._monitoring.is_watching(job.job_id):
                continue
            self._monitoring.watch(
                PollJob(job.batch_id, job.job_id, job.submitted_at, job.polls, job.priority)
            )
            count += 1
        if count and not self._scheduled:
            metrics.SWEEPER_RECOVERIES.labels("job_unpolled").inc(count)
        return count

    def _forget_old(self) -> None:
        horizon = time.monotonic() - max(self._settings.received_after_s, 1.0)
        for document_id in [d for d, at in self._recent.items() if at < horizon]:
            del self._recent[document_id]
