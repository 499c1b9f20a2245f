"""Reconciliation: decide, per batch, the fate of a submission whose answer was lost.

A submitBatch that timed out, lost its connection, or was being sent when a
process died may or may not have become a Thunderhead job. Its batch is parked as
RECONCILING (``oms.store.processing.park_for_reconciliation``) and this loop asks
Thunderhead once per round, with ONE reference (a batch is one job, so any of its
documents proves the batch's fate), for the job whose ``batchName`` is the batch:

- found → adopted for every document of the batch (never sent twice);
- not found once ``in_flight_window_s`` has passed since the send was over (no
  send can still land) → its documents are sent again, without using an attempt;
- not found yet, or Thunderhead cannot answer → asked again later, the round
  counted and its reason kept on the batch row;
- Thunderhead not answering for ``reconcile_deadline_s`` (from its first
  unanswered round, and at least three rounds) → the documents FAIL
  ``reconciliation_deadline_exceeded`` (sending again could generate them twice).

Due batches are read from the database every ``reconcile_interval_s`` (or at once
when poked), so this works the same in both pipeline modes and across processes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
from anyio.abc import TaskStatus

from oms import config, domain, exceptions, metrics
from oms.actors.handoff import Handoff
from oms.backoff import jittered_backoff
from oms.db.pool import CONNECTION_ERRORS
from oms.lifecycle import Component
from oms.store import batches
from oms.store import reconciliation as store
from oms.store.journal import Topics
from oms.thunderhead import JobRef, ThunderheadClient

logger = logging.getLogger(__name__)
_MIN_ROUNDS = 3  # never fail a batch on fewer unanswered questions, however late
_MAX_ROUND_GAP_S = 15.0


class Reconciler(Component):
    name = "reconciler"

    def __init__(
        self,
        db: asyncpg.Pool,
        thunderhead: ThunderheadClient,
        settings: config.ProcessingSettings,
        topics: Topics,
        owner: str,
        *,
        requested: Handoff[domain.DocumentRequested],
        submitted: Handoff[domain.DocumentSubmitted],
    ) -> None:
        self._db = db
        self._thunderhead = thunderhead
        self._settings = settings
        self._topics = topics
        self._owner = owner
        self._requested = requested
        self._submitted = submitted
        self._wake = anyio.Event()

    def poke(self) -> None:
        """A batch was just parked: look now rather than at the next interval."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with anyio.move_on_after(self._settings.reconcile_interval_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.reconcile_due()
            except CONNECTION_ERRORS as exc:
                logger.warning("reconciliation skipped: database unavailable (%s)", exc)
            except Exception:
                logger.exception("reconciliation pass failed; trying again")

    async def reconcile_due(self) -> int:
        """One pass: take the due batches (up to ``reconcilers`` at once) and decide each."""
        hold = timedelta(seconds=self._settings.lease_s)
        async with self._db.acquire() as conn:
            due = await store.take_due(
                conn, self._owner, hold, _now(), self._settings.reconcilers * 4
            )
        slots = anyio.CapacityLimiter(self._settings.reconcilers)

        async def one(batch: store.Reconciling) -> None:
            async with slots:
                try:
                    await self.reconcile(batch)
                except Exception:
                    # Its hold expires and a later pass takes it again.
                    logger.exception(
                        "reconciling a batch failed", extra={"batch_id": str(batch.batch_id)}
                    )

        async with anyio.create_task_group() as tg:
            for batch in due:
                tg.start_soon(one, batch)
        return len(due)

    async def reconcile(self, batch: store.Reconciling) -> None:
        now = _now()
        age_s = (now - batch.unknown_since).total_seconds()
        if batch.reference is None:  # nothing waits on it any more
            async with self._db.acquire() as conn:
                await store.send_again(conn, batch.batch_id, self._owner, "no document left", now)
            return
        try:
            jobs = await self._thunderhead.find_by_reference(str(batch.reference))
        except exceptions.ThunderheadError as exc:
            retry_after = (
                exc.retry_after_s if isinstance(exc, exceptions.ThunderheadTransient) else 0
            )
            await self._undecided(batch, str(exc), retry_after)
            return
        job = _the_batch_job(jobs, str(batch.batch_id))
        if job is not None:
            async with self._db.acquire() as conn:
                events = await batches.mark_submitted(
                    conn, batch.batch_id, job.job_id, [], self._topics, _now(), reconciled=True
                )
            metrics.RECONCILIATIONS.labels("adopted").inc()
            logger.info(
                "reconciled: Thunderhead has the batch; job adopted",
                extra={"batch_id": str(batch.batch_id), "job_id": job.job_id, "count": len(events)},
            )
            for submitted in events:
                self._submitted.hand_over(submitted)
            return
        if age_s >= self._settings.in_flight_window_s:
            reason = "Thunderhead does not have the batch and no send can still land"
            async with self._db.acquire() as conn:
                again = await store.send_again(conn, batch.batch_id, self._owner, reason, _now())
            metrics.RECONCILIATIONS.labels("sent_again").inc()
            logger.info(
                "reconciled: Thunderhead does not have the batch; sending again",
                extra={"batch_id": str(batch.batch_id), "count": len(again)},
            )
            for event in again:
                self._requested.hand_over(event)
            return
        # Too young to be sure: a send may still be on its way. Ask again, at the
        # latest when the in-flight window closes.
        window_ends = batch.unknown_since + timedelta(seconds=self._settings.in_flight_window_s)
        when = min(
            window_ends + timedelta(seconds=0.5), now + timedelta(seconds=self._delay(batch.rounds))
        )
        async with self._db.acquire() as conn:
            await store.again_at(
                conn,
                batch.batch_id,
                self._owner,
                when,
                "not found yet; a send may be in flight",
                answered=True,
                now=now,
            )
        metrics.RECONCILIATIONS.labels("pending").inc()

    async def _undecided(self, batch: store.Reconciling, reason: str, retry_after_s: float) -> None:
        """Thunderhead could not answer: again later, or FAILED once it has not answered
        for ``reconcile_deadline_s`` (counted from its first unanswered round, so
        OMS's own downtime is not held against the batch) and at least three rounds."""
        now = _now()
        since = batch.unanswered_since or now
        silent_s = (now - since).total_seconds()
        if silent_s >= self._settings.reconcile_deadline_s and batch.rounds + 1 >= _MIN_ROUNDS:
            error = domain.DocumentError(
                reason="reconciliation_deadline_exceeded",
                detail=(
                    "Thunderhead could not say whether it has this document's batch; "
                    f"not sent again, to never generate it twice (last: {reason})"
                ),
            )
            async with self._db.acquire() as conn:
                failed = await store.fail(
                    conn, batch.batch_id, self._owner, error, self._topics, _now()
                )
            metrics.RECONCILIATIONS.labels("failed").inc()
            metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(failed))
            logger.warning(
                "reconciliation deadline passed; documents failed",
                extra={"batch_id": str(batch.batch_id), "count": len(failed)},
            )
            return
        when = now + timedelta(seconds=max(retry_after_s, self._delay(batch.rounds)))
        async with self._db.acquire() as conn:
            await store.again_at(
                conn, batch.batch_id, self._owner, when, reason, answered=False, now=now
            )
        metrics.RECONCILIATIONS.labels("unanswered").inc()

    def _delay(self, rounds: int) -> float:
        """Backoff between rounds, capped low: a round is one call for a whole batch,
        and documents wait on its answer."""
        cap = min(self._settings.wait_backoff_max_s, _MAX_ROUND_GAP_S)
        return jittered_backoff(self._settings.backoff_base_s, rounds, cap)


def _the_batch_job(jobs: list[JobRef], batch_name: str) -> JobRef | None:
    """The job that is this batch (a job that names no batch is taken as it)."""
    mine = [j for j in jobs if j.batch_name in (batch_name, "")]
    return mine[-1] if mine else None


def _now() -> datetime:
    return datetime.now(UTC)
