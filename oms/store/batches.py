"""A Thunderhead batch's bookkeeping: recorded before it is sent, then its fate.

A batch is one Thunderhead job or nothing. It is recorded (SUBMITTING) before
it is sent, so a crash after sending can be reconciled; then it becomes a job
(``mark_submitted``), is closed without one (``close_batch``), or its outcome is
unknown and it waits for reconciliation (``park_for_reconciliation``). Its
documents move with it, in the same transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from oms import domain
from oms.db.pool import Connection
from oms.store import journal
from oms.store.processing import ACTOR

logger = logging.getLogger(__name__)


async def start_batch(
    conn: Connection,
    batch_id: uuid.UUID,
    batch_config_res_id: str,
    enrichments: dict[uuid.UUID, bytes],
    leases: dict[uuid.UUID, str],
    lease_until: datetime,
    now: datetime,
) -> set[tuple[uuid.UUID, str]]:
    """Record the batch BEFORE it is sent, so a crash after sending can be reconciled.

    Only documents whose lease is still this claim's (and not expired) go in,
    and their lease is extended to cover the send: nobody else may reconcile
    or resend them while it may still be on its way.
    """
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE documents d SET batch_id = $1, enrichment = u.enrichment, updated_at = $4,
                   lease_expires_at = $6
               FROM unnest($2::uuid[], $3::jsonb[], $5::text[]) AS u(id, enrichment, lease)
               WHERE d.id = u.id AND d.status = 'PROCESSING' AND d.lease_owner = u.lease
                 AND d.lease_expires_at > $4
               RETURNING d.id, d.lease_owner""",
            batch_id,
            list(enrichments),
            list(enrichments.values()),
            now,
            [leases[i] for i in enrichments],
            lease_until,
        )
        held = {(r["id"], r["lease_owner"]) for r in rows}
        if not held:
            return held
        await conn.execute(
            """INSERT INTO thunderhead_batches (id, batch_config_res_id, status, document_count,
                   created_at)
               VALUES ($1, $2, 'SUBMITTING', $3, $4)""",
            batch_id,
            batch_config_res_id,
            len(held),
            now,
        )
    return held


async def mark_submitted(
    conn: Connection,
    batch_id: uuid.UUID,
    job_id: str,
    document_ids: Sequence[uuid.UUID],
    topics: journal.Topics,
    now: datetime,
    *,
    reconciled: bool = False,
) -> list[domain.DocumentSubmitted]:
    """PROCESSING → SUBMITTED for the batch's documents, with timeline and outbox rows.

    Not conditional on the lease: Thunderhead HAS the job, so the truth is
    SUBMITTED whoever holds the lease now — for every document of the batch
    still PROCESSING (parked ones included), and only while the batch is still
    waiting for its answer (SUBMITTING or RECONCILING).
    """
    async with conn.transaction():
        taken = await conn.execute(
            """UPDATE thunderhead_batches SET status = 'PENDING', job_id = $2,
                   submitted_at = coalesce(submitted_at, $3), next_poll_at = $3,
                   finished_at = NULL, next_reconcile_at = NULL, reconcile_owner = NULL,
                   reconcile_until = NULL
               WHERE id = $1 AND job_id IS NULL AND status IN ('SUBMITTING', 'RECONCILING')""",
            batch_id,
            job_id,
            now,
        )
        if taken.endswith(" 0"):
            known = await conn.fetchval(
                "SELECT job_id FROM thunderhead_batches WHERE id = $1", batch_id
            )
            if known != job_id:
                # Given up on already (another process decided it): its documents
                # moved on. Thunderhead has them in this job too: say so loudly.
                logger.error(
                    "Thunderhead accepted a batch OMS had already given up on",
                    extra={"batch_id": str(batch_id), "job_id": job_id},
                )
            return []  # else: reconciliation adopted this very job already
        rows = await conn.fetch(
            """UPDATE documents SET status = 'SUBMITTED', thunderhead_job_id = $1,
                   lease_owner = NULL, lease_expires_at = NULL,
                   next_attempt_at = NULL, last_error = NULL, updated_at = $3
               WHERE batch_id = $2 AND status = 'PROCESSING'
               RETURNING id, source_system, client_reference, priority, trace_id""",
            job_id,
            batch_id,
            now,
        )
        detail: dict[str, Any] = {"job_id": job_id, "batch_id": str(batch_id)}
        if reconciled:
            detail["reconciled"] = True
        await journal.append_timeline(
            conn,
            [
                journal.TimelineRow(
                    r["id"], domain.Status.PROCESSING, domain.Status.SUBMITTED, detail
                )
                for r in rows
            ],
            ACTOR,
            now,
        )
        events = [
            domain.DocumentSubmitted(
                document_id=r["id"],
                source_system=r["source_system"],
                client_reference=r["client_reference"],
                priority=domain.Priority.from_rank(r["priority"]),
                job_id=job_id,
                batch_id=batch_id,
                trace_id=r["trace_id"],
            )
            for r in rows
        ]
        await journal.append_outbox(
            conn, [journal.OutboxEvent(e, e.trace_id) for e in events], topics, now
        )
    return events


async def close_batch(conn: Connection, batch_id: uuid.UUID, status: str, now: datetime) -> bool:
    """A batch that never became a job: ABANDONED (a transient refusal: send again),
    REJECTED (refused for good) or SPLIT (sent again in halves).

    Only while it is still SUBMITTING: False when it was meanwhile handed to
    reconciliation (this sender outlived its lease), which then decides.
    """
    result = await conn.execute(
        """UPDATE thunderhead_batches SET status = $2::text, finished_at = $3::timestamptz
           WHERE id = $1 AND job_id IS NULL AND status = 'SUBMITTING'""",
        batch_id,
        status,
        now,
    )
    return not result.endswith(" 0")


async def park_for_reconciliation(
    conn: Connection,
    batch_id: uuid.UUID,
    error: domain.DocumentError,
    reconcile_at: datetime,
    now: datetime,
) -> int:
    """The batch's submission outcome is unknown: RECONCILING, its documents parked.

    Parked documents hold no lease and are not due (``next_attempt_at`` infinity),
    so nobody claims them one by one: reconciliation decides for the whole batch
    (``oms.store.reconciliation``). Their attempts are untouched. Returns how many
    documents were parked.
    """
    async with conn.transaction():
        changed = await conn.execute(
            """UPDATE thunderhead_batches
               SET status = 'RECONCILING', finished_at = NULL,
                   next_reconcile_at = least(coalesce(next_reconcile_at, $2), $2),
                   unknown_since = coalesce(unknown_since, $2), last_error = $3
               WHERE id = $1 AND job_id IS NULL AND status IN ('SUBMITTING', 'RECONCILING')""",
            batch_id,
            reconcile_at,
            error.detail or error.reason,
        )
        if changed.endswith(" 0"):
            return 0
        rows = await conn.fetch(
            """UPDATE documents SET lease_owner = NULL, lease_expires_at = NULL,
                   next_attempt_at = 'infinity', last_error = $2, updated_at = $3
               WHERE batch_id = $1 AND status = 'PROCESSING'
                 AND next_attempt_at IS DISTINCT FROM 'infinity'
               RETURNING id""",
            batch_id,
            msgspec.to_builtins(error),
            now,
        )
        await journal.note_all(
            conn,
            [r["id"] for r in rows],
            domain.Status.PROCESSING,
            {"event": "reconciling", "batch_id": str(batch_id), "error": error.detail},
            ACTOR,
            now,
        )
    return len(rows)
