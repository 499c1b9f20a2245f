"""Processing's state changes, each a compare-and-set on status and lease.

A document is worked on only by the holder of its lease. Every change below
names the owner in its WHERE clause, so a late or duplicate actor (whose lease
expired and was taken by another) changes nothing. A batch's own bookkeeping
(recorded, submitted, closed, parked) is ``oms.store.batches``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec

from oms import domain
from oms.db.pool import Connection
from oms.store import journal

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
    waits: int
    trace_id: str
    created_at: datetime
    previous_status: domain.Status
    last_reason: str | None
    lease: str  # this claim's own token: every later change must present it
    # A batch this document was put in whose submission may have reached
    # Thunderhead (being sent when a process died, or its answer was lost):
    # reconcile the batch before anything is sent again.
    unresolved_batch: uuid.UUID | None


async def claim(
    conn: Connection,
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
                         d.data::text AS data_json, d.attempts, d.waits, d.trace_id,
                         d.created_at,
                         coalesce(d.last_error->>'detail', d.last_error->>'reason') AS last_reason,
                         old.status AS previous_status, old.lease_owner AS previous_owner,
                         (SELECT b.id FROM thunderhead_batches b
                          WHERE b.id = d.batch_id AND b.job_id IS NULL
                            AND b.status IN ('SUBMITTING', 'RECONCILING')) AS unresolved_batch""",
            document_id,
            lease_token,
            now,
            lease,
        )
        if row is None:
            return None
        previous = domain.Status(row["previous_status"])
        if previous is domain.Status.RECEIVED:
            entry = journal.TimelineRow(row["id"], previous, domain.Status.PROCESSING)
        elif row["previous_owner"] is not None:
            entry = journal.TimelineRow(
                row["id"],
                previous,
                domain.Status.PROCESSING,
                {"event": "lease_expired_recovered", "previous_owner": row["previous_owner"]},
            )
        else:
            entry = journal.TimelineRow(
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
        waits=row["waits"],
        trace_id=row["trace_id"],
        created_at=row["created_at"],
        previous_status=previous,
        last_reason=row["last_reason"],
        lease=lease_token,
        unresolved_batch=row["unresolved_batch"],
    )


async def release(conn: Connection, document_id: uuid.UUID, lease: str, now: datetime) -> None:
    """Give the lease back without counting an attempt: the document is due again now."""
    await conn.execute(
        """UPDATE documents SET lease_owner = NULL, lease_expires_at = NULL,
               next_attempt_at = $3, updated_at = $3
           WHERE id = $1 AND status = 'PROCESSING' AND lease_owner = $2""",
        document_id,
        lease,
        now,
    )


class Retry(msgspec.Struct, frozen=True):
    document_id: uuid.UUID
    next_attempt_at: datetime


async def retry_or_exhaust(
    conn: Connection,
    leases: dict[uuid.UUID, str],
    error: domain.DocumentError,
    delays: dict[uuid.UUID, timedelta],
    max_attempts: int | None,
    topics: journal.Topics,
    now: datetime,
    *,
    charge: bool = True,
    deadline: timedelta,
    keep_batch: bool = False,
) -> tuple[list[Retry], list[uuid.UUID]]:
    """Try again later: the lease is released and a retry time set.

    ``charge``: Thunderhead answered with a transient failure, so this was an
    attempt (attempts + 1; FAILED ``retries_exhausted`` past ``max_attempts``, None:
    never). Otherwise it is one of OMS's own waits (waits + 1), which never
    exhausts. Either way a document older than ``deadline`` is FAILED
    ``deadline_exceeded``, and no retry is set past that deadline.
    ``keep_batch`` keeps the link to the document's batch. Returns (retries,
    failed ids).
    """
    limit = (max_attempts if max_attempts is not None else 2**31 - 1) if charge else 2**31 - 1
    async with conn.transaction():
        rows = await conn.fetch(
            """WITH verdict AS (
                   SELECT d.id, u.delay, u.lease,
                          CASE WHEN d.attempts + $8::integer >= $5::integer
                                   THEN 'retries_exhausted'
                               WHEN d.created_at + $9::interval <= $3::timestamptz
                                   THEN 'deadline_exceeded' END AS failure
                   FROM documents d
                   JOIN unnest($1::uuid[], $6::interval[], $2::text[]) AS u(id, delay, lease)
                     ON d.id = u.id
                   WHERE d.status = 'PROCESSING' AND d.lease_owner = u.lease)
               UPDATE documents d
               SET attempts = d.attempts + $8::integer,
                   waits = d.waits + 1 - $8::integer,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = $3::timestamptz,
                   last_error = $4::jsonb,
                   batch_id = CASE WHEN $7::boolean THEN d.batch_id END,
                   next_attempt_at = CASE WHEN v.failure IS NOT NULL THEN NULL
                                          ELSE least($3::timestamptz + v.delay,
                                                     d.created_at + $9::interval) END,
                   status = CASE WHEN v.failure IS NOT NULL THEN 'FAILED' ELSE d.status END
               FROM verdict v
               WHERE d.id = v.id AND d.status = 'PROCESSING' AND d.lease_owner = v.lease
               RETURNING d.id, d.status, d.next_attempt_at, d.attempts, d.waits,
                         d.source_system, d.client_reference, d.trace_id, d.created_at,
                         v.failure""",
            list(leases),
            list(leases.values()),
            now,
            msgspec.to_builtins(error),
            limit,
            [delays[i] for i in leases],
            keep_batch,
            1 if charge else 0,
            deadline,
        )
        retries = [Retry(r["id"], r["next_attempt_at"]) for r in rows if r["failure"] is None]
        failed = [r for r in rows if r["failure"] is not None]
        entries = [
            journal.TimelineRow(
                r["id"],
                domain.Status.PROCESSING,
                domain.Status.PROCESSING,
                {
                    "event": "retry_scheduled" if charge else "waiting",
                    "attempt" if charge else "wait": r["attempts"] if charge else r["waits"],
                    "next_attempt_at": r["next_attempt_at"].isoformat(),
                    "reason": error.reason,
                    "error": error.detail or error.reason,
                },
            )
            for r in rows
            if r["failure"] is None
        ]
        failures: dict[uuid.UUID, domain.DocumentError] = {}
        for r in failed:
            detail = error.detail or error.reason
            if r["failure"] == "deadline_exceeded":
                detail = f"not handed to Thunderhead by its deadline; last: {detail}"
            failures[r["id"]] = domain.DocumentError(
                reason=r["failure"], detail=detail, messages=error.messages
            )
        if failed:
            await conn.execute(
                """UPDATE documents d SET last_error = u.error
                   FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, error) WHERE d.id = u.id""",
                list(failures),
                [msgspec.to_builtins(e) for e in failures.values()],
            )
        await journal.append_timeline(conn, entries, ACTOR, now)
        await journal.record_failures(
            conn, failed, failures, domain.Status.PROCESSING, ACTOR, topics, now
        )
    return retries, [r["id"] for r in failed]


async def fail(
    conn: Connection,
    leases: dict[uuid.UUID, str],
    error: domain.DocumentError,
    topics: journal.Topics,
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
        await journal.record_failures(
            conn,
            rows,
            {r["id"]: error for r in rows},
            domain.Status.PROCESSING,
            ACTOR,
            topics,
            now,
        )
    return [r["id"] for r in rows]


async def extend_leases(conn: Connection, leases: dict[uuid.UUID, str], until: datetime) -> None:
    """Keep these claims over a longer piece of work (a batch sent again in parts)."""
    await conn.execute(
        """UPDATE documents d SET lease_expires_at = $3
           FROM unnest($1::uuid[], $2::text[]) AS u(id, lease)
           WHERE d.id = u.id AND d.status = 'PROCESSING' AND d.lease_owner = u.lease""",
        list(leases),
        list(leases.values()),
        until,
    )
