"""Batches whose submission outcome is unknown, decided one batch at a time.

A batch is one Thunderhead job or nothing, so one answer settles all its documents:
adopt the job Thunderhead has (``batches.mark_submitted``), send the documents
again (Thunderhead does not have it and no send can still be on its way), or fail
them when Thunderhead could not tell in time. A batch is worked on by one
reconciler at a time: a short lease on the batch row (``reconcile_owner``), taken
with a compare-and-set, so several processes share the work safely.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import msgspec

from oms import domain
from oms.db.pool import Connection
from oms.store import journal

ACTOR = "reconciliation"


class Reconciling(msgspec.Struct, frozen=True):
    """A batch to ask Thunderhead about now, with one reference that proves its fate."""

    batch_id: uuid.UUID
    unknown_since: datetime
    """When its send was over (answered by a timeout, or its process gone)."""
    rounds: int
    unanswered_since: datetime | None
    """Since when Thunderhead has not answered this batch's find (None: it answers)."""
    reference: uuid.UUID | None  # None: no document waits on it any more


async def take_due(
    conn: Connection, owner: str, hold: timedelta, now: datetime, limit: int
) -> list[Reconciling]:
    """Take up to ``limit`` due batches for ``hold`` (skipping those another holds)."""
    rows = await conn.fetch(
        """UPDATE thunderhead_batches b
           SET reconcile_owner = $1, reconcile_until = $2::timestamptz + $3::interval
           WHERE b.id IN (SELECT id FROM thunderhead_batches
                          WHERE status = 'RECONCILING' AND next_reconcile_at <= $2
                            AND (reconcile_owner IS NULL OR reconcile_until < $2)
                          ORDER BY next_reconcile_at
                          LIMIT $4
                          FOR UPDATE SKIP LOCKED)
           RETURNING b.id, coalesce(b.unknown_since, b.created_at) AS unknown_since,
                     b.reconcile_rounds, b.unanswered_since,
                     (SELECT d.id FROM documents d
                      WHERE d.batch_id = b.id AND d.status = 'PROCESSING'
                      ORDER BY d.id LIMIT 1) AS reference""",
        owner,
        now,
        hold,
        limit,
    )
    return [
        Reconciling(
            r["id"],
            r["unknown_since"],
            r["reconcile_rounds"],
            r["unanswered_since"],
            r["reference"],
        )
        for r in rows
    ]


async def again_at(
    conn: Connection,
    batch_id: uuid.UUID,
    owner: str,
    when: datetime,
    error: str,
    *,
    answered: bool,
    now: datetime,
) -> None:
    """No decision yet: ask again at ``when``; the round is counted and shown.

    ``answered``: Thunderhead answered the find (not found yet), which ends any
    stretch of it not answering; otherwise that stretch starts now if it had not.
    """
    await conn.execute(
        """UPDATE thunderhead_batches
           SET reconcile_rounds = reconcile_rounds + 1, next_reconcile_at = $3,
               last_error = $4, reconcile_owner = NULL, reconcile_until = NULL,
               unanswered_since = CASE WHEN $5 THEN NULL ELSE coalesce(unanswered_since, $6) END
           WHERE id = $1 AND status = 'RECONCILING' AND reconcile_owner = $2""",
        batch_id,
        owner,
        when,
        error,
        answered,
        now,
    )


async def send_again(
    conn: Connection, batch_id: uuid.UUID, owner: str, reason: str, now: datetime
) -> list[domain.DocumentRequested]:
    """Thunderhead does not have the batch: close it, make its documents due now.

    No attempt is used: Thunderhead never answered those documents with a failure.
    Returns the events that put them back in processing.
    """
    async with conn.transaction():
        closed = await conn.execute(
            """UPDATE thunderhead_batches
               SET status = 'ABANDONED', finished_at = $3, reconcile_rounds = reconcile_rounds + 1,
                   last_error = $4, reconcile_owner = NULL, reconcile_until = NULL
               WHERE id = $1 AND status = 'RECONCILING' AND reconcile_owner = $2
                 AND job_id IS NULL""",
            batch_id,
            owner,
            now,
            reason,
        )
        if closed.endswith(" 0"):
            return []
        rows = await conn.fetch(
            """UPDATE documents SET batch_id = NULL, next_attempt_at = $2, lease_owner = NULL,
                   lease_expires_at = NULL, updated_at = $2
               WHERE batch_id = $1 AND status = 'PROCESSING'
               RETURNING id, source_system, client_reference, priority, document_type,
                         channel, trace_id""",
            batch_id,
            now,
        )
        await journal.note_all(
            conn,
            [r["id"] for r in rows],
            domain.Status.PROCESSING,
            {"event": "send_again", "batch_id": str(batch_id), "reason": reason},
            ACTOR,
            now,
        )
    return [journal.requested_from_row(r) for r in rows]


async def fail(
    conn: Connection,
    batch_id: uuid.UUID,
    owner: str,
    error: domain.DocumentError,
    topics: journal.Topics,
    now: datetime,
) -> list[uuid.UUID]:
    """Thunderhead could not say in time whether it has the batch: FAILED, all of it."""
    async with conn.transaction():
        closed = await conn.execute(
            """UPDATE thunderhead_batches
               SET status = 'FAILED', finished_at = $3, last_error = $4,
                   reconcile_owner = NULL, reconcile_until = NULL
               WHERE id = $1 AND status = 'RECONCILING' AND reconcile_owner = $2
                 AND job_id IS NULL""",
            batch_id,
            owner,
            now,
            error.detail or error.reason,
        )
        if closed.endswith(" 0"):
            return []
        rows = await conn.fetch(
            """UPDATE documents SET status = 'FAILED', last_error = $2, lease_owner = NULL,
                   lease_expires_at = NULL, next_attempt_at = NULL, updated_at = $3
               WHERE batch_id = $1 AND status = 'PROCESSING'
               RETURNING id, source_system, client_reference, trace_id""",
            batch_id,
            msgspec.to_builtins(error),
            now,
        )
        await journal.record_failures(
            conn,
            rows,
            {r["id"]: error for r in rows},
            domain.Status.PROCESSING,
            ACTOR,
            topics,
            now,
            batch_id=str(batch_id),
        )
    return [r["id"] for r in rows]


async def release_strays(conn: Connection, now: datetime) -> int:
    """Parked documents whose batch is no longer RECONCILING are due again.

    A safety net: every path that settles a batch moves its documents on in the
    same transaction, so this finds nothing unless that promise was broken.
    """
    rows = await conn.fetch(
        """UPDATE documents d SET next_attempt_at = $1, updated_at = $1
           WHERE d.status = 'PROCESSING' AND d.next_attempt_at = 'infinity'
             AND NOT EXISTS (SELECT 1 FROM thunderhead_batches b
                             WHERE b.id = d.batch_id AND b.status = 'RECONCILING')
           RETURNING d.id""",
        now,
    )
    return len(rows)
