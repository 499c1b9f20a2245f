"""What every state change writes beside itself: timeline entries and outbox rows.

Both take many rows in one statement, so a batch of documents changing state
costs one round trip each, inside the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from oms import domain
from oms.db.pool import Connection

_encode = msgspec.json.encode


class TimelineEntry(msgspec.Struct, frozen=True):
    document_id: uuid.UUID
    from_status: domain.Status | None
    to_status: domain.Status
    detail: dict[str, Any] | None = None


class OutboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    document_id: uuid.UUID
    event_type: str
    payload: msgspec.Struct
    trace_id: str | None
    event_id: uuid.UUID = msgspec.field(default_factory=domain.uuid7)


async def append_timeline(
    conn: Connection, entries: Sequence[TimelineEntry], actor: str, at: datetime
) -> None:
    if not entries:
        return
    await conn.execute(
        """INSERT INTO document_timeline (document_id, at, actor, from_status, to_status, detail)
           SELECT document_id, $1, $2, from_status, to_status, detail
           FROM unnest($3::uuid[], $4::text[], $5::text[], $6::jsonb[])
                AS u(document_id, from_status, to_status, detail)""",
        at,
        actor,
        [e.document_id for e in entries],
        [e.from_status.value if e.from_status else None for e in entries],
        [e.to_status.value for e in entries],
        [_encode(e.detail) if e.detail is not None else None for e in entries],
    )


async def append_outbox(conn: Connection, events: Sequence[OutboxEvent], at: datetime) -> None:
    if not events:
        return
    await conn.execute(
        """INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
               trace_id, created_at)
           SELECT event_id, topic, document_id::text, event_type, document_id::text, payload,
                  trace_id, $1
           FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::jsonb[], $7::text[])
                AS u(event_id, topic, document_id, event_type, payload, trace_id)""",
        at,
        [e.event_id for e in events],
        [e.topic for e in events],
        [e.document_id for e in events],
        [e.event_type for e in events],
        [_encode(e.payload) for e in events],
        [e.trace_id for e in events],
    )


def failed_event(
    document_id: uuid.UUID,
    source_system: str,
    client_reference: str,
    trace_id: str | None,
    error: domain.DocumentError,
    topic: str,
) -> OutboxEvent:
    """The Event Hub's ``oms.document.failed`` for one document."""
    return OutboxEvent(
        topic=topic,
        document_id=document_id,
        event_type="oms.document.failed",
        payload=domain.DocumentFailed(
            document_id=document_id,
            source_system=source_system,
            client_reference=client_reference,
            status="FAILED",
            reason=error.reason,
            detail=error.detail,
            messages=error.messages,
        ),
        trace_id=trace_id,
    )


def requested_from_row(row: asyncpg.Record) -> domain.DocumentRequested:
    """A ``document.requested`` event re-made from a document row (recoveries, re-sends)."""
    return domain.DocumentRequested(
        document_id=row["id"],
        source_system=row["source_system"],
        client_reference=row["client_reference"],
        priority=domain.Priority.from_rank(row["priority"]),
        document_type=row["document_type"],
        channel=domain.Channel(row["channel"]),
        trace_id=row["trace_id"],
    )


async def record_failures(
    conn: Connection,
    rows: Sequence[asyncpg.Record],
    errors: dict[uuid.UUID, domain.DocumentError],
    from_status: domain.Status,
    actor: str,
    topic: str,
    now: datetime,
    **detail: Any,
) -> None:
    """Timeline entries and Event Hub ``oms.document.failed`` rows for documents just
    FAILED (``rows`` carry id, source_system, client_reference and trace_id)."""
    await append_timeline(
        conn,
        [
            TimelineEntry(
                r["id"],
                from_status,
                domain.Status.FAILED,
                {"reason": errors[r["id"]].reason, "error": errors[r["id"]].detail, **detail},
            )
            for r in rows
        ],
        actor,
        now,
    )
    await append_outbox(
        conn,
        [
            failed_event(
                r["id"],
                r["source_system"],
                r["client_reference"],
                r["trace_id"],
                errors[r["id"]],
                topic,
            )
            for r in rows
        ],
        now,
    )


async def note_all(
    conn: Connection,
    document_ids: Sequence[uuid.UUID],
    status: domain.Status,
    detail: dict[str, Any],
    actor: str,
    now: datetime,
) -> None:
    """The same timeline note (no change of status) on each of these documents."""
    await append_timeline(
        conn, [TimelineEntry(i, status, status, detail) for i in document_ids], actor, now
    )
