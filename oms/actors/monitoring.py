"""The monitoring stage: poll Thunderhead per job until it is final, then settle it.

Jobs, not documents, are scheduled: one entry per job in a due-time heap, so
100k documents in flight cost a few thousand entries. A due job goes to the
poller actors through a bounded mailbox; each poll goes through the shared,
rate-limited Thunderhead client, and the interval grows while the job runs.
A final job is settled in one transaction (``oms.store.monitoring.settle``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec
from anyio.abc import TaskStatus

from oms import bus, config, domain, exceptions, metrics
from oms.store import monitoring as store
from oms.store.journal import Topics
from oms.thunderhead import JobStatus, ThunderheadClient
from oms.thunderhead.types import messages

logger = logging.getLogger(__name__)

FINAL = frozenset({"COMPLETED", "FAILED"})


class PollJob(msgspec.Struct, frozen=True):
    """A Thunderhead job to ask about now."""

    batch_id: uuid.UUID
    job_id: str
    submitted_at: datetime
    polls: int
    priority: domain.Priority

    @property
    def priority_rank(self) -> int:
        return self.priority.rank

    @property
    def fairness_key(self) -> str:
        return "jobs"


class PollSchedule:
    """Due-time heap with one live entry per job (a later ``add`` never delays it)."""

    def __init__(self, max_size: int) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._jobs: dict[str, tuple[float, PollJob]] = {}
        self._order = itertools.count()
        self._max_size = max_size
        self.changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def add(self, job: PollJob, delay_s: float) -> bool:
        due = time.monotonic() + delay_s
        current = self._jobs.get(job.job_id)
        if current is not None and current[0] <= due:
            return True
        if current is None and len(self._jobs) >= self._max_size:
            return False  # the database remembers it; the sweeper brings it back
        self._jobs[job.job_id] = (due, job)
        heapq.heappush(self._heap, (due, next(self._order), job.job_id))
        metrics.POLL_SCHEDULE_SIZE.set(len(self._jobs))
        self.changed.set()
        return True

    def next_due_in(self) -> float | None:
        while self._heap:
            due, _, job_id = self._heap[0]
            entry = self._jobs.get(job_id)
            if entry is not None and entry[0] == due:
                return due - time.monotonic()
            heapq.heappop(self._heap)  # superseded by an earlier entry
        return None

    def pop(self) -> PollJob:
        _, _, job_id = heapq.heappop(self._heap)
        _, job = self._jobs.pop(job_id)
        metrics.POLL_SCHEDULE_SIZE.set(len(self._jobs))
        return job


class MonitoringStage:
    def __init__(
        self,
        db: asyncpg.Pool,
        thunderhead: ThunderheadClient,
        settings: config.MonitoringSettings,
        topics: Topics,
        mailbox: bus.PriorityMailbox[PollJob],
        *,
        push: bool,
    ) -> None:
        self._db = db
        self._thunderhead = thunderhead
        self._settings = settings
        self._topics = topics
        self.mailbox = mailbox
        self._push = push  # events mode: keep the in-memory schedule; scheduled: the DB does
        self.schedule = PollSchedule(settings.schedule_max)
        # Jobs handed to the pollers and not finished yet: never handed over twice.
        self._in_hand: set[str] = set()

    def is_watching(self, job_id: str) -> bool:
        return job_id in self.schedule or job_id in self._in_hand

    # --- feeding ----------------------------------------------------------------------------

    def register(self, events: Sequence[domain.DocumentSubmitted]) -> None:
        """Documents were submitted: watch their jobs (one entry per job)."""
        now = datetime.now(UTC)
        for event in events:
            if event.job_id not in self.schedule:
                job = PollJob(event.batch_id, event.job_id, now, 0, event.priority)
                self.schedule.add(job, self._settings.poll_initial_s)

    def watch(self, job: PollJob, delay_s: float = 0.0) -> None:
        """A job found in the database (start-up, sweeper, scheduled scan)."""
        if self.is_watching(job.job_id):
            return
        if self._push:
            self.schedule.add(job, delay_s)
        elif self.mailbox.offer(job):
            self._in_hand.add(job.job_id)
        else:
            logger.warning("poll mailbox full; the next scan brings the job back")

    async def run_schedule(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hand due jobs to the pollers, for ever."""
        task_status.started()
        while True:
            wait = self.schedule.next_due_in()
            if wait is None or wait > 0:
                self.schedule.changed = anyio.Event()
                with anyio.move_on_after(wait if wait is not None else float("inf")):
                    await self.schedule.changed.wait()
                continue
            job = self.schedule.pop()
            if self.mailbox.offer(job):
                self._in_hand.add(job.job_id)
            else:
                self.schedule.add(job, 1.0)  # pollers are behind: try again shortly

    # --- the poller actor's handler --------------------------------------------------------------

    async def poll(self, job: PollJob) -> None:
        try:
            await self._poll(job)
        finally:
            self._in_hand.discard(job.job_id)

    async def _poll(self, job: PollJob) -> None:
        overdue = datetime.now(UTC) - job.submitted_at > timedelta(
            seconds=self._settings.job_deadline_s
        )
        try:
            status = await self._thunderhead.job_status(job.job_id)
        except exceptions.ThunderheadTransient as exc:
            if overdue:  # Thunderhead never answered usefully in time: give up
                await self._settle_all_failed(job, "job_deadline_exceeded", exc.reason)
                return
            await self._again(job, "UNKNOWN", max(exc.retry_after_s, self._interval(job)))
            return
        except exceptions.ThunderheadRejected as exc:
            if exc.status == 404:
                await self._settle_all_failed(job, "thunderhead_job_lost", exc.reason)
                return
            if overdue:
                await self._settle_all_failed(job, "job_deadline_exceeded", exc.reason)
                return
            logger.warning("job status refused: %s", exc, extra={"job_id": job.job_id})
            await self._again(job, "UNKNOWN", self._interval(job))
            return
        if status.status in FINAL:
            await self._settle(job, status)
            return
        if overdue:
            await self._settle(job, status, deadline_passed=True)
            return
        await self._again(job, status.status, self._interval(job))

    def _interval(self, job: PollJob) -> float:
        growth = self._settings.poll_growth ** min(job.polls + 1, 64)
        return min(self._settings.poll_max_s, self._settings.poll_initial_s * growth)

    async def _again(self, job: PollJob, status: str, delay_s: float) -> None:
        next_poll_at = datetime.now(UTC) + timedelta(seconds=delay_s)
        async with self._db.acquire() as conn:
            await store.record_poll(conn, job.batch_id, status, next_poll_at)
        if self._push:
            self.schedule.add(msgspec.structs.replace(job, polls=job.polls + 1), delay_s)

    async def _settle(
        self, job: PollJob, status: JobStatus, *, deadline_passed: bool = False
    ) -> None:
        async with self._db.acquire() as conn:
            waiting = await store.submitted_documents(conn, job.job_id)
        reported = {t.correlation_reference: t for t in status.transactions}
        job_errors = messages(tuple(m for m in status.job_messages if m.msg_type == "E"))
        job_warnings = [m.msg_text for m in status.job_messages if m.msg_type == "W"]
        outcomes = []
        for document_id in waiting:
            transaction = reported.get(str(document_id))
            if transaction is not None and transaction.status == "COMPLETED":
                outputs = [
                    {
                        "channel": channel.type_name,
                        "document_name": channel.document_name,
                        "mime_type": channel.mime_type,
                        "part_location": channel.part_location,
                    }
                    for envelope in transaction.envelopes
                    for channel in envelope.channels()
                ]
                warnings = job_warnings + [
                    m.msg_text for m in transaction.job_messages if m.msg_type == "W"
                ]
                outcomes.append(
                    store.Outcome(
                        document_id,
                        True,
                        {"job_id": job.job_id, "outputs": outputs},
                        warnings=warnings,
                    )
                )
                continue
            if transaction is not None and transaction.status == "FAILED":
                said = messages(transaction.exceptions, transaction.job_messages)
                texts = [str(m.get("msg") or m.get("msgText") or "") for m in said]
                reason = "generation_failed"
                detail = "; ".join(t for t in texts if t) or "Thunderhead could not produce it"
            elif deadline_passed:
                reason, detail, said = "job_deadline_exceeded", None, []
            else:
                reason, detail, said = "missing_from_job", "the job did not report it", []
            error = domain.DocumentError(reason, detail, said + job_errors)
            outcomes.append(store.Outcome(document_id, False, error=error))
        await self._write_outcomes(job, "FAILED" if deadline_passed else status.status, outcomes)

    async def _settle_all_failed(self, job: PollJob, reason: str, detail: str) -> None:
        async with self._db.acquire() as conn:
            waiting = await store.submitted_documents(conn, job.job_id)
        error = domain.DocumentError(reason, detail)
        await self._write_outcomes(
            job, "FAILED", [store.Outcome(d, False, error=error) for d in waiting]
        )

    async def _write_outcomes(
        self, job: PollJob, job_status: str, outcomes: list[store.Outcome]
    ) -> None:
        now = datetime.now(UTC)
        async with self._db.acquire() as conn:
            settled = await store.settle(
                conn, job.batch_id, job.job_id, job_status, outcomes, self._topics, now
            )
        for document in settled:
            metrics.DOCUMENTS_FINISHED.labels(document.status.value).inc()
            metrics.STAGE_SECONDS.labels(document.status.value).observe(
                (now - document.created_at).total_seconds()
            )
