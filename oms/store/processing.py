"""Processing's state changes, each a compare-and-set on status and lease.

A document is worked on only by the holder of its lease. Every change below
names the owner in its WHERE clause, so a late or duplicate actor (whose lease
expired and was taken by another) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from oms import domain
from oms.store import journal
from oms.store.documents import Topics

ACTOR = "processing"


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """A document this process now holds the lease on, with what processing needs."""

    id: uuid.UUID
    source_system: str
    client_reference: str
    priority: domain.Priority
    document_type: str
    channel: str
    language: str
    brand: str
    recipient: dict[str, Any]
    data: msgspec.Raw
    attempts: int
    trace_id: str
    previous_status: domain.Status
    lease: str  # this claim's own token: every later change must present it
    # A batch this document was put in before and never settled: Thunderhead may
    # have it, so reconcile before sending again.
    unresolved_batch: uuid.UUID | None
    unresolved_batch_created_at: datetime | None


async def claim(
    conn: asyncpg.Connection,
    document_id: uuid.UUID,
    lease_token: str,
    lease: timedelta,
    now: datetime,
) -> Claimed | None:
    """Take the lease: RECEIVED, or PROCESSING that is due for a retry or whose lease expired.

    None when another actor holds it, it is not due yet, or it moved on.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE documents d
               SET status = 'PROCESSING', lease_owner = $2,
                   lease_expires_at = $3::timestamptz + $4::interval, updated_at = $3::timestamptz
               FROM documents old
               WHERE d.id = $1 AND old.id = d.id
                 AND (d.status = 'RECEIVED'
                      OR (d.status = 'PROCESSING'
                          AND ((d.lease_owner IS NULL
                                AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $3))
                               OR d.lease_expires_at < $3)))
               RETURNING d.id, d.source_system, d.client_reference, d.priority,
                         d.document_type, d.channel, d.language, d.brand, d.recipient,
                         d.data::text AS data_json, d.attempts, d.trace_id,
                         old.status AS previous_status, old.lease_owner AS previous_owner,
                         d.batch_id AS unresolved_batch,
                         (SELECT b.created_at FROM thunderhead_batches b WHERE b.id = d.batch_id)
                             AS unresolved_batch_created_at""",
            document_id,
            lease_token,
            now,
            lease,
        )
        if row is None:
            return None
        previous = domain.Status(row["previous_status"])
        if previous is domain.Status.RECEIVED:
            entry = journal.TimelineEntry(row["id"], previous, domain.Status.PROCESSING)
        elif row["previous_owner"] is not None:
            entry = journal.TimelineEntry(
                row["id"],
                previous,
                domain.Status.PROCESSING,
                {"event": "lease_expired_recovered", "previous_owner": row["previous_owner"]},
            )
        else:
            entry = journal.TimelineEntry(
                row["id"],
                previous,
                domain.Status.PROCESSING,
                {"event": "retry", "attempt": row["attempts"] + 1},
            )
        await journal.append_timeline(conn, [entry], ACTOR, now)
    return Claimed(
        id=row["id"],
        source_system=row["source_system"],
        client_reference=row["client_reference"],
        priority=domain.Priority.from_rank(row["priority"]),
        document_type=row["document_type"],
        channel=row["channel"],
        language=row["language"],
        brand=row["brand"],
        recipient=row["recipient"],
        data=msgspec.Raw(row["data_json"].encode()),
        attempts=row["attempts"],
        trace_id=row["trace_id"],
        previous_status=previous,
        lease=lease_token,
        unresolved_batch=row["unresolved_batch"],
        unresolved_batch_created_at=row["unresolved_batch_created_at"],
    )


async def release(
    conn: asyncpg.Connection, document_id: uuid.UUID, lease: str, now: datetime
) -> None:
    """Give the lease back without counting an attempt: the document is due again now."""
    await conn.execute(
        """UPDATE documents SET lease_owner = NULL, lease_expires_at = NULL,
               next_attempt_at = $3, updated_at = $3
           WHERE id = $1 AND status = 'PROCESSING' AND lease_owner = $2""",
        document_id,
        lease,
        now,
    )


async def start_batch(
    conn: asyncpg.Connection,
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


class SubmittedDocument(msgspec.Struct, frozen=True):
    id: uuid.UUID
    source_system: str
    client_reference: str
    priority: domain.Priority
    trace_id: str


async def mark_submitted(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    job_id: str,
    document_ids: Sequence[uuid.UUID],
    topics: Topics,
    now: datetime,
    *,
    reconciled: bool = False,
) -> list[domain.DocumentSubmitted]:
    """PROCESSING → SUBMITTED for the batch's documents, with timeline and outbox rows.

    Not conditional on the lease: Thunderhead HAS the job, so the truth is
    SUBMITTED whoever holds the lease now — for every document of the batch
    still PROCESSING, not only the one that found the job (the others must not
    be sent again).
    """
    async with conn.transaction():
        await conn.execute(
            """UPDATE thunderhead_batches SET status = 'PENDING', job_id = $2,
                   submitted_at = coalesce(submitted_at, $3), next_poll_at = $3
               WHERE id = $1""",
            batch_id,
            job_id,
            now,
        )
        rows = await conn.fetch(
            """UPDATE documents SET status = 'SUBMITTED', thunderhead_job_id = $2,
                   batch_id = $3, lease_owner = NULL, lease_expires_at = NULL,
                   next_attempt_at = NULL, last_error = NULL, updated_at = $4
               WHERE (id = ANY($1::uuid[]) OR batch_id = $3) AND status = 'PROCESSING'
               RETURNING id, source_system, client_reference, priority, trace_id""",
            list(document_ids),
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
                journal.TimelineEntry(
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
            conn,
            [
                journal.OutboxEvent(
                    topic=topics.submitted,
                    document_id=e.document_id,
                    event_type="oms.document.submitted",
                    payload=e,
                    trace_id=e.trace_id,
                )
                for e in events
            ],
            now,
        )
    return events


class Retry(msgspec.Struct, frozen=True):
    document_id: uuid.UUID
    next_attempt_at: datetime


async def retry_or_exhaust(
    conn: asyncpg.Connection,
    leases: dict[uuid.UUID, str],
    error: domain.DocumentError,
    delays: dict[uuid.UUID, timedelta],
    max_attempts: int | None,
    topics: Topics,
    now: datetime,
    *,
    keep_batch: bool = False,
) -> tuple[list[Retry], list[uuid.UUID]]:
    """A transient failure: attempts + 1 and a retry time, or FAILED past max_attempts
    (``None``: never, the caller decides later).

    The lease is released, so a document waiting for its retry can be cancelled.
    ``keep_batch`` keeps the link to a batch whose outcome is unknown, so the
    retry reconciles before it re-sends. Returns (retries, exhausted ids).
    """
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE documents d
               SET attempts = d.attempts + 1,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = $3::timestamptz,
                   last_error = $4::jsonb,
                   batch_id = CASE WHEN $7::boolean THEN d.batch_id END,
                   next_attempt_at = CASE WHEN d.attempts + 1 >= $5::integer THEN NULL
                                          ELSE $3::timestamptz + u.delay END,
                   status = CASE WHEN d.attempts + 1 >= $5::integer THEN 'FAILED'
                                 ELSE d.status END
               FROM unnest($1::uuid[], $6::interval[], $2::text[]) AS u(id, delay, lease)
               WHERE d.id = u.id AND d.status = 'PROCESSING' AND d.lease_owner = u.lease
               RETURNING d.id, d.status, d.next_attempt_at, d.attempts, d.source_system,
                         d.client_reference, d.trace_id""",
            list(leases),
            list(leases.values()),
            now,
            msgspec.to_builtins(error),
            max_attempts if max_attempts is not None else 2**31 - 1,
            [delays[i] for i in leases],
            keep_batch,
        )
        retries = [Retry(r["id"], r["next_attempt_at"]) for r in rows if r["status"] != "FAILED"]
        exhausted = [r for r in rows if r["status"] == "FAILED"]
        entries = [
            journal.TimelineEntry(
                r["id"],
                domain.Status.PROCESSING,
                domain.Status.PROCESSING,
                {
                    "event": "retry_scheduled",
                    "attempt": r["attempts"],
                    "next_attempt_at": r["next_attempt_at"].isoformat(),
                    "error": error.detail or error.reason,
                },
            )
            for r in rows
            if r["status"] != "FAILED"
        ]
        failure = domain.DocumentError(
            reason="retries_exhausted", detail=error.detail or error.reason, messages=error.messages
        )
        if exhausted:
            await conn.execute(
                "UPDATE documents SET last_error = $2 WHERE id = ANY($1::uuid[])",
                [r["id"] for r in exhausted],
                msgspec.to_builtins(failure),
            )
        entries += [
            journal.TimelineEntry(
                r["id"],
                domain.Status.PROCESSING,
                domain.Status.FAILED,
                {"reason": "retries_exhausted"},
            )
            for r in exhausted
        ]
        await journal.append_timeline(conn, entries, ACTOR, now)
        await journal.append_outbox(
            conn, [_failed_event(r, failure, topics) for r in exhausted], now
        )
    return retries, [r["id"] for r in exhausted]


async def fail(
    conn: asyncpg.Connection,
    leases: dict[uuid.UUID, str],
    error: domain.DocumentError,
    topics: Topics,
    now: datetime,
) -> list[uuid.UUID]:
    """A permanent failure: FAILED at once, Thunderhead's messages kept."""
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE documents d SET status = 'FAILED', last_error = $3, lease_owner = NULL,
                   lease_expires_at = NULL, next_attempt_at = NULL, updated_at = $4
               FROM unnest($1::uuid[], $2::text[]) AS u(id, lease)
               WHERE d.id = u.id AND d.status = 'PROCESSING' AND d.lease_owner = u.lease
               RETURNING d.id, d.source_system, d.client_reference, d.trace_id""",
            list(leases),
            list(leases.values()),
            msgspec.to_builtins(error),
            now,
        )
        await journal.append_timeline(
            conn,
            [
                journal.TimelineEntry(
                    r["id"],
                    domain.Status.PROCESSING,
                    domain.Status.FAILED,
                    {"reason": error.reason},
                )
                for r in rows
            ],
            ACTOR,
            now,
        )
        await journal.append_outbox(conn, [_failed_event(r, error, topics) for r in rows], now)
    return [r["id"] for r in rows]


async def close_batch(
    conn: asyncpg.Connection, batch_id: uuid.UUID, status: str, now: datetime
) -> None:
    """A batch that never became a job (refused, abandoned) or whose outcome is unknown."""
    await conn.execute(
        """UPDATE thunderhead_batches SET status = $2::text,
               finished_at = CASE WHEN $2::text = 'UNKNOWN' THEN NULL ELSE $3::timestamptz END
           WHERE id = $1 AND job_id IS NULL""",
        batch_id,
        status,
        now,
    )


def _failed_event(
    row: asyncpg.Record, error: domain.DocumentError, topics: Topics
) -> journal.OutboxEvent:
    return journal.failed_event(
        row["id"],
        row["source_system"],
        row["client_reference"],
        row["trace_id"],
        error,
        topics.status,
    )
