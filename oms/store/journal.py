"""What every state change writes beside itself: timeline rows and outbox rows.

Every timeline row is written by one statement (``timeline_insert``) and every
outbox row by another (``outbox_insert``), whoever changes the state (intake,
processing, monitoring, reconciliation, cancel): through ``append_timeline`` and
``append_outbox``, or, where one round trip matters (intake's group commit),
as parts of the caller's own statement. Both take many rows at once, so a group
of documents changing state costs one round trip each, inside the caller's
transaction.

An outbox row names its Kafka topic itself: ``Topics`` routes each event type
to its topic once, when the row is written, so any relay (of any OMS process)
can publish any row as it stands.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from oms import config, domain
from oms.db.pool import Connection

_encode = msgspec.json.encode


class Topics:
    """Event type → Kafka topic: the one routing table, built once from ``settings.events``."""

    def __init__(self, by_type: Mapping[str, str]) -> None:
        self._by_type = dict(by_type)

    @classmethod
    def from_settings(cls, events: config.EventsSettings) -> Topics:
        return cls(
            {
                domain.event_type(domain.DocumentRequested): events.topic_requested,
                domain.event_type(domain.DocumentSubmitted): events.topic_submitted,
                domain.event_type(domain.DocumentCompleted): events.topic_status,
                domain.event_type(domain.DocumentFailed): events.topic_status,
                domain.event_type(domain.DocumentCancelled): events.topic_status,
            }
        )

    def topic_for(self, event: domain.Event) -> str:
        return self._by_type[domain.event_type(event)]

    def names(self) -> list[str]:
        """Every topic OMS publishes to, each once."""
        return sorted(set(self._by_type.values()))


class TimelineRow(msgspec.Struct, frozen=True):
    """One row of a document's timeline, as written (``domain.TimelineEntry`` is as read)."""

    document_id: uuid.UUID
    from_status: domain.Status | None
    to_status: domain.Status
    detail: dict[str, Any] | None = None
    at: datetime | None = None  # None: the time of the whole write


class OutboxEvent(msgspec.Struct, frozen=True):
    """An event to announce, with the trace of the request behind it."""

    event: domain.Event
    trace_id: str | None
    at: datetime | None = None  # None: the time of the whole write


def timeline_insert(first: int = 1) -> str:
    """The one statement that writes timeline rows, its parameters numbered from ``first``
    (so a caller can make it part of a larger statement; see ``timeline_args``)."""
    p = [f"${n}" for n in range(first, first + 6)]
    return f"""INSERT INTO document_timeline
               (document_id, at, actor, from_status, to_status, detail)
           SELECT document_id, at, {p[0]}, from_status, to_status, detail
           FROM unnest({p[1]}::uuid[], {p[2]}::timestamptz[], {p[3]}::text[], {p[4]}::text[],
                       {p[5]}::jsonb[])
                AS u(document_id, at, from_status, to_status, detail)"""


def timeline_args(rows: Sequence[TimelineRow], actor: str, at: datetime) -> list[Any]:
    return [
        actor,
        [r.document_id for r in rows],
        [r.at or at for r in rows],
        [r.from_status.value if r.from_status else None for r in rows],
        [r.to_status.value for r in rows],
        [_encode(r.detail) if r.detail is not None else None for r in rows],
    ]


async def append_timeline(
    conn: Connection, rows: Sequence[TimelineRow], actor: str, at: datetime
) -> None:
    if rows:
        await conn.execute(timeline_insert(), *timeline_args(rows, actor, at))


def outbox_insert(first: int = 1) -> str:
    """The one statement that writes outbox rows, its parameters numbered from ``first``
    (see ``outbox_args``)."""
    p = [f"${n}" for n in range(first, first + 7)]
    return f"""INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
               trace_id, created_at)
           SELECT event_id, topic, document_id::text, event_type, document_id::text, payload,
                  trace_id, created_at
           FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::uuid[], {p[3]}::text[],
                       {p[4]}::jsonb[], {p[5]}::text[], {p[6]}::timestamptz[])
                AS u(event_id, topic, document_id, event_type, payload, trace_id, created_at)"""


def outbox_args(events: Sequence[OutboxEvent], topics: Topics, at: datetime) -> list[Any]:
    """One row per event: its type from its tag, its topic from ``topics``, keyed by document."""
    return [
        [domain.uuid7() for _ in events],
        [topics.topic_for(e.event) for e in events],
        [e.event.document_id for e in events],
        [domain.event_type(e.event) for e in events],
        [_encode(e.event) for e in events],
        [e.trace_id for e in events],
        [e.at or at for e in events],
    ]


async def append_outbox(
    conn: Connection, events: Sequence[OutboxEvent], topics: Topics, at: datetime
) -> None:
    if events:
        await conn.execute(outbox_insert(), *outbox_args(events, topics, at))


def failed_event(row: asyncpg.Record, error: domain.DocumentError) -> OutboxEvent:
    """``oms.document.failed`` for a document row (id, source_system, client_reference,
    trace_id)."""
    return OutboxEvent(
        domain.DocumentFailed(
            document_id=row["id"],
            source_system=row["source_system"],
            client_reference=row["client_reference"],
            status="FAILED",
            reason=error.reason,
            detail=error.detail,
            messages=error.messages,
        ),
        row["trace_id"],
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
    topics: Topics,
    now: datetime,
    **detail: Any,
) -> None:
    """Timeline rows and Event Hub ``oms.document.failed`` rows for documents just
    FAILED (``rows`` carry id, source_system, client_reference and trace_id)."""
    await append_timeline(
        conn,
        [
            TimelineRow(
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
    await append_outbox(conn, [failed_event(r, errors[r["id"]]) for r in rows], topics, now)


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
        conn, [TimelineRow(i, status, status, detail) for i in document_ids], actor, now
    )
