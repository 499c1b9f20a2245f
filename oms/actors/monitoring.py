"""The monitoring stage: poll Thunderhead per job until it is final, then settle it.

Jobs, not documents, are scheduled: one entry per job in a due-time heap, so
100k documents in flight cost a few thousand entries. A due job goes to the
poller actors through a bounded mailbox; each poll goes through the shared,
rate-limited Thunderhead client, and the interval grows while the job runs.
A final job is settled in one transaction (``oms.store.monitoring.settle``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from oms import config, domain, exceptions, metrics
from oms.actors.mailbox import PriorityMailbox
from oms.actors.schedule import DueSchedule
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


class MonitoringStage:
    def __init__(
        self,
        db: asyncpg.Pool,
        thunderhead: ThunderheadClient,
        settings: config.MonitoringSettings,
        topics: Topics,
        mailbox: PriorityMailbox[PollJob],
        *,
        push: bool,
    ) -> None:
        self._db = db
        self._thunderhead = thunderhead
        self._settings = settings
        self._topics = topics
        self.mailbox = mailbox
        self._push = push  # events mode: keep the in-memory schedule; scheduled: the DB does
        # Events mode: due jobs go to the pollers; a full mailbox means try again shortly.
        self.schedule = DueSchedule[PollJob](
            "monitoring",
            settings.schedule_max,
            key=lambda job: job.job_id,
            deliver=self._hand_to_pollers,
            size=metrics.POLL_SCHEDULE_SIZE,
            redeliver_after_s=1.0,
        )
        # Jobs handed to the pollers and not finished yet: never handed over twice.
        self._in_hand: set[str] = set()

    def is_watching(self, job_id: str) -> bool:
        return job_id in self.schedule or job_id in self._in_hand

    # --- feeding ----------------------------------------------------------------------------

    def watch_submitted(self, event: domain.DocumentSubmitted) -> None:
        """A document was submitted: watch its job (one entry per job)."""
        if event.job_id not in self.schedule:
            job = PollJob(event.batch_id, event.job_id, datetime.now(UTC), 0, event.priority)
            self.schedule.add(job, self._settings.poll_initial_s)

    def watch(self, job: PollJob, delay_s: float = 0.0) -> None:
        """A job found in the database (start-up, sweeper, scheduled scan)."""
        if self.is_watching(job.job_id):
            return
        if self._push:
            self.schedule.add(job, delay_s)
        elif not self._hand_to_pollers(job):
            logger.warning("poll mailbox full; the next scan brings the job back")

    def _hand_to_pollers(self, job: PollJob) -> bool:
        if not self.mailbox.offer(job):
            return False
        self._in_hand.add(job.job_id)
        return True

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
