"""Processing's outcomes, recorded: submitted, try again later, failed, or parked.

Each outcome is one transaction on the documents a claim holds (compare-and-set
on the claim, so stale work changes nothing), then the resulting events are
handed on: submitted documents to monitoring, documents to try again to
processing's own retry schedule, parked batches to the reconciler.

Only a 5xx answer from Thunderhead (not 503) uses an attempt (FAILED
``retries_exhausted`` after ``max_attempts``); OMS's own waits (429/503 pause,
token refused, Reference Data down) do not, and end only at the document's
``deadline_s`` (FAILED ``deadline_exceeded``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from oms import config, domain, metrics
from oms.actors.handoff import Handoff
from oms.actors.reconciler import Reconciler
from oms.backoff import jittered_backoff
from oms.store import batches
from oms.store import processing as store
from oms.store.journal import Topics

logger = logging.getLogger(__name__)


class Settler:
    def __init__(
        self,
        db: asyncpg.Pool,
        settings: config.ProcessingSettings,
        topics: Topics,
        *,
        requested: Handoff[domain.DocumentRequested],
        submitted: Handoff[domain.DocumentSubmitted],
        reconciler: Reconciler,
    ) -> None:
        self._db = db
        self._settings = settings
        self._topics = topics
        self._requested = requested
        self._submitted = submitted
        self._reconciler = reconciler
        self.deadline = timedelta(seconds=settings.deadline_s)

    async def submitted(
        self, batch_id: uuid.UUID, job_id: str, document_ids: list[uuid.UUID]
    ) -> None:
        async with self._db.acquire() as conn:
            events = await batches.mark_submitted(
                conn, batch_id, job_id, document_ids, self._topics, _now()
            )
        metrics.PROCESSING_OUTCOMES.labels("submitted").inc(len(events))
        for event in events:
            self._submitted.hand_over(event)

    async def retry(
        self,
        events: list[domain.DocumentRequested],
        documents: list[store.Claimed],
        reason: str,
        detail: str,
        retry_after_s: float,
        *,
        charge: bool,
        keep_batch: bool = False,
    ) -> None:
        """Try again later; ``charge`` when Thunderhead answered with a transient failure."""
        delays = {
            d.id: timedelta(
                seconds=self.backoff(d.attempts, retry_after_s)
                if charge
                else self.wait(d.waits, retry_after_s)
            )
            for d in documents
        }
        error = domain.DocumentError(reason=reason, detail=detail)
        async with self._db.acquire() as conn:
            retries, failed = await store.retry_or_exhaust(
                conn,
                {d.id: d.lease for d in documents},
                error,
                delays,
                self._settings.max_attempts,
                self._topics,
                _now(),
                charge=charge,
                deadline=self.deadline,
                keep_batch=keep_batch,
            )
        metrics.PROCESSING_OUTCOMES.labels("retry" if charge else "wait").inc(len(retries))
        metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(failed))
        by_id = {e.document_id: e for e in events}
        now = _now()
        for retry in retries:
            delay_s = (retry.next_attempt_at - now).total_seconds()
            self._requested.hand_over(by_id[retry.document_id], delay_s)

    async def fail(
        self,
        documents: list[store.Claimed],
        reason: str,
        detail: str,
        messages: list[dict[str, object]] | None = None,
    ) -> None:
        error = domain.DocumentError(reason=reason, detail=detail, messages=messages or [])
        async with self._db.acquire() as conn:
            failed = await store.fail(
                conn, {d.id: d.lease for d in documents}, error, self._topics, _now()
            )
        metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(failed))

    async def release(self, document: store.Claimed) -> None:
        """Give a claim back unchanged: the document is due again now."""
        async with self._db.acquire() as conn:
            await store.release(conn, document.id, document.lease, _now())

    async def park(self, batch_id: uuid.UUID, reason: str) -> int:
        """Hand a batch whose fate is unknown to reconciliation; no attempt is used.

        Returns how many documents were parked (0: the batch was settled meanwhile).
        """
        error = domain.DocumentError(reason="thunderhead_outcome_unknown", detail=reason)
        async with self._db.acquire() as conn:
            parked = await batches.park_for_reconciliation(conn, batch_id, error, _now(), _now())
        metrics.PROCESSING_OUTCOMES.labels("reconciling").inc(parked)
        self._reconciler.poke()
        return parked

    async def close_batch(self, batch_id: uuid.UUID, status: str) -> bool:
        async with self._db.acquire() as conn:
            closed = await batches.close_batch(conn, batch_id, status, _now())
        if not closed:
            logger.warning(
                "a send ended after its batch was handed to reconciliation; it decides",
                extra={"batch_id": str(batch_id), "status": status},
            )
        return closed

    def backoff(self, attempts: int, at_least_s: float) -> float:
        """Exponential backoff with jitter, never shorter than Thunderhead asked."""
        s = self._settings
        return max(at_least_s, jittered_backoff(s.backoff_base_s, attempts, s.backoff_max_s))

    def wait(self, waits: int, at_least_s: float) -> float:
        """Backoff for OMS's own waits: capped lower, so work resumes soon after."""
        s = self._settings
        return max(at_least_s, jittered_backoff(s.backoff_base_s, waits, s.wait_backoff_max_s))


def _now() -> datetime:
    return datetime.now(UTC)
