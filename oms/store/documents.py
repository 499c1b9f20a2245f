"""Documents: intake inserts (many per transaction), reads, listing and cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from oms import domain
from oms.db.pool import Connection
from oms.store import idempotency, journal
from oms.store.idempotency import IdempotencyRecord

INTAKE_ACTOR = "intake"


class NewDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A validated request ready to be stored, with what the first answer will say."""

    id: uuid.UUID
    source_system: str
    request: domain.DocumentRequest
    trace_id: str
    created_at: datetime
    idempotency: IdempotencyRecord | None = None


class Inserted(msgspec.Struct, frozen=True):
    """Stored, with the ``document.requested`` event its outbox row announces."""

    document_id: uuid.UUID
    requested: domain.DocumentRequested


class DuplicateReference(msgspec.Struct, frozen=True):
    existing_id: uuid.UUID


class IdempotencyHit(msgspec.Struct, frozen=True):
    """The key was used before: the stored record decides replay (same body) or 422."""

    record: IdempotencyRecord


InsertOutcome = Inserted | DuplicateReference | IdempotencyHit

_encode = msgspec.json.encode


async def insert_many(
    conn: Connection, items: Sequence[NewDocument], topics: journal.Topics
) -> list[InsertOutcome]:
    """Store many requests: rows, first timeline rows, outbox rows, atomically.

    Without Idempotency-Keys that is ONE statement (intake's hot path: one round
    trip per group); with keys, the keys are claimed first in the same
    transaction. Each item gets its own outcome, in order; a duplicate or a
    reused key never aborts the others.
    """
    if not any(item.idempotency is not None for item in items):
        inserted = await _insert(conn, items, topics)
        duplicates = await _duplicates(conn, [item for item in items if item.id not in inserted])
        return [inserted.get(i.id) or duplicates[i.id] for i in items]
    async with conn.transaction():
        hits = await _claim_keys(conn, items)
        fresh = [item for item in items if item.id not in hits]
        inserted = await _insert(conn, fresh, topics)
        duplicates = await _duplicates(conn, [item for item in fresh if item.id not in inserted])
    return [hits.get(i.id) or inserted.get(i.id) or duplicates[i.id] for i in items]


async def _claim_keys(
    conn: Connection, items: Sequence[NewDocument]
) -> dict[uuid.UUID, IdempotencyHit]:
    """Claim the items' Idempotency-Keys; the items whose key was taken, by id."""
    claims = _claims(items)
    taken = await idempotency.claim(conn, list(claims.values()))
    return {
        document_id: IdempotencyHit(taken[(c.source_system, c.record.key)])
        for document_id, c in claims.items()
        if (c.source_system, c.record.key) in taken
    }


def _claims(items: Sequence[NewDocument]) -> dict[uuid.UUID, idempotency.Claim]:
    return {
        i.id: idempotency.Claim(i.source_system, i.idempotency, i.id, i.created_at)
        for i in items
        if i.idempotency is not None
    }


async def _insert(
    conn: Connection, items: Sequence[NewDocument], topics: journal.Topics
) -> dict[uuid.UUID, Inserted]:
    """Rows (a client_reference already used is skipped), and for each one inserted its
    first timeline row and its ``document.requested`` outbox row: one statement, the
    journal's two inserts taking only the documents the first one inserted."""
    if not items:
        return {}
    at = max(i.created_at for i in items)
    requested = {i.id: _requested(i) for i in items}
    timeline = [
        journal.TimelineRow(i.id, None, domain.Status.RECEIVED, at=i.created_at) for i in items
    ]
    events = [journal.OutboxEvent(requested[i.id], i.trace_id, at=i.created_at) for i in items]
    rows = await conn.fetch(
        f"""WITH inserted AS ({_INSERT_DOCUMENTS}),
                 timeline AS ({journal.timeline_insert(13)}
                              WHERE u.document_id IN (SELECT id FROM inserted)),
                 events AS ({journal.outbox_insert(19)}
                            WHERE u.document_id IN (SELECT id FROM inserted))
            SELECT id FROM inserted""",
        *_document_args(items),
        *journal.timeline_args(timeline, INTAKE_ACTOR, at),
        *journal.outbox_args(events, topics, at),
    )
    return {r["id"]: Inserted(r["id"], requested[r["id"]]) for r in rows}


# The documents rows, RECEIVED, with parameters $1..$12 (``_document_args``).
_INSERT_DOCUMENTS = """INSERT INTO documents (id, source_system, client_reference, status,
               priority, document_type, channel, language, brand, recipient, data, trace_id,
               created_at, updated_at)
           SELECT id, source_system, client_reference, 'RECEIVED', priority, document_type,
                  channel, language, brand, recipient, data, trace_id, created_at, created_at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[],
                       $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[],
                       $11::text[], $12::timestamptz[])
                AS u(id, source_system, client_reference, priority, document_type, channel,
                     language, brand, recipient, data, trace_id, created_at)
           ON CONFLICT (source_system, client_reference) DO NOTHING
           RETURNING id"""


def _document_args(items: Sequence[NewDocument]) -> list[Any]:
    return [
        [i.id for i in items],
        [i.source_system for i in items],
        [i.request.client_reference for i in items],
        [i.request.priority.rank for i in items],
        [i.request.document_type for i in items],
        [i.request.channel.value for i in items],
        [i.request.language for i in items],
        [i.request.brand for i in items],
        [_encode(i.request.recipient) for i in items],
        [bytes(i.request.data) for i in items],
        [i.trace_id for i in items],
        [i.created_at for i in items],
    ]


async def _duplicates(
    conn: Connection, items: Sequence[NewDocument]
) -> dict[uuid.UUID, DuplicateReference]:
    """Items whose client_reference is taken: the document that has it, by item id.

    A key claimed for such a request is released, so a retry meets the same
    duplicate answer rather than a stale replay.
    """
    if not items:
        return {}
    rows = await conn.fetch(
        """SELECT d.source_system, d.client_reference, d.id
           FROM documents d
           JOIN unnest($1::text[], $2::text[]) AS r(source_system, client_reference)
             ON d.source_system = r.source_system AND d.client_reference = r.client_reference""",
        [i.source_system for i in items],
        [i.request.client_reference for i in items],
    )
    existing = {(r["source_system"], r["client_reference"]): r["id"] for r in rows}
    await idempotency.release(conn, list(_claims(items).values()))
    return {
        i.id: DuplicateReference(existing[(i.source_system, i.request.client_reference)])
        for i in items
    }


def _requested(item: NewDocument) -> domain.DocumentRequested:
    return domain.DocumentRequested(
        document_id=item.id,
        source_system=item.source_system,
        client_reference=item.request.client_reference,
        priority=item.request.priority,
        document_type=item.request.document_type,
        channel=item.request.channel,
        trace_id=item.trace_id,
    )


# --- reads -----------------------------------------------------------------------------------

_INFINITY = datetime.max  # how asyncpg reads timestamptz 'infinity'

_DOCUMENT_COLUMNS = """id, client_reference, status, priority, document_type, channel, language,
    brand, attempts, next_attempt_at, thunderhead_job_id, result, last_error, created_at,
    updated_at"""


def _document(row: asyncpg.Record, timeline: list[domain.TimelineEntry] | None) -> domain.Document:
    error = row["last_error"]
    return domain.Document(
        id=row["id"],
        client_reference=row["client_reference"],
        status=domain.Status(row["status"]),
        priority=domain.Priority.from_rank(row["priority"]),
        document_type=row["document_type"],
        channel=domain.Channel(row["channel"]),
        language=row["language"],
        brand=row["brand"],
        attempts=row["attempts"],
        # Parked for reconciliation ('infinity'): no retry time to show.
        next_attempt_at=row["next_attempt_at"] if row["next_attempt_at"] != _INFINITY else None,
        thunderhead_job_id=row["thunderhead_job_id"],
        result=row["result"],
        last_error=msgspec.convert(error, domain.DocumentError) if error else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        timeline=timeline,
    )


async def get(
    conn: Connection, document_id: uuid.UUID, source_system: str | None
) -> domain.Document | None:
    """One document with its timeline; ``source_system=None`` is the admin's view."""
    row = await conn.fetchrow(
        f"""SELECT {_DOCUMENT_COLUMNS} FROM documents
            WHERE id = $1 AND ($2::text IS NULL OR source_system = $2)""",
        document_id,
        source_system,
    )
    if row is None:
        return None
    entries = await conn.fetch(
        """SELECT at, actor, from_status, to_status, detail FROM document_timeline
           WHERE document_id = $1 ORDER BY id""",
        document_id,
    )
    timeline = [
        domain.TimelineEntry(
            at=e["at"],
            actor=e["actor"],
            from_status=domain.Status(e["from_status"]) if e["from_status"] else None,
            to_status=domain.Status(e["to_status"]),
            detail=e["detail"],
        )
        for e in entries
    ]
    return _document(row, timeline)


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """Where the previous page ended: keyset pagination, stable under inserts."""

    created_at: datetime
    id: uuid.UUID


class ListFilter(msgspec.Struct, frozen=True, kw_only=True):
    source_system: str | None
    status: domain.Status | None = None
    client_reference: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def list_page(
    conn: Connection, where: ListFilter, after: Cursor | None, limit: int
) -> tuple[list[domain.Document], Cursor | None]:
    """A page of documents, newest first, and the cursor of the next page (None at the end)."""
    rows = await conn.fetch(
        f"""SELECT {_DOCUMENT_COLUMNS} FROM documents
            WHERE ($1::text IS NULL OR source_system = $1)
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR client_reference = $3)
              AND ($4::timestamptz IS NULL OR created_at > $4)
              AND ($5::timestamptz IS NULL OR created_at < $5)
              AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
            ORDER BY created_at DESC, id DESC
            LIMIT $8""",
        where.source_system,
        where.status.value if where.status else None,
        where.client_reference,
        where.created_after,
        where.created_before,
        after.created_at if after else None,
        after.id if after else None,
        limit + 1,
    )
    documents = [_document(r, None) for r in rows[:limit]]
    more = len(rows) > limit
    next_cursor = Cursor(documents[-1].created_at, documents[-1].id) if more else None
    return documents, next_cursor


# --- cancel ----------------------------------------------------------------------------------


class CancelResult(msgspec.Struct, frozen=True):
    status: domain.Status
    changed: bool


async def cancel(
    conn: Connection,
    document_id: uuid.UUID,
    source_system: str | None,
    actor: str,
    topics: journal.Topics,
    now: datetime,
) -> CancelResult | None:
    """Cancel while Thunderhead does not have the document; None if there is no such document.

    The race with a submit is settled here: the UPDATE only matches a document that
    is RECEIVED, or PROCESSING without a lease and without a batch (waiting for a
    retry, and never sent — a document whose submission's outcome is unknown may
    be at Thunderhead). A processing actor takes the lease with its own
    compare-and-set, so exactly one side wins.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE documents d SET status = 'CANCELLED', updated_at = $3,
                   lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = NULL
               FROM documents old
               WHERE d.id = $1 AND old.id = d.id
                 AND ($2::text IS NULL OR d.source_system = $2)
                 AND (d.status = 'RECEIVED'
                      OR (d.status = 'PROCESSING' AND d.lease_owner IS NULL
                          AND d.batch_id IS NULL))
               RETURNING d.source_system, d.client_reference, old.status AS from_status,
                         d.trace_id""",
            document_id,
            source_system,
            now,
        )
        if row is None:
            status = await conn.fetchval(
                """SELECT status FROM documents
                   WHERE id = $1 AND ($2::text IS NULL OR source_system = $2)""",
                document_id,
                source_system,
            )
            return None if status is None else CancelResult(domain.Status(status), False)
        from_status = domain.Status(row["from_status"])
        await journal.append_timeline(
            conn,
            [journal.TimelineRow(document_id, from_status, domain.Status.CANCELLED)],
            actor,
            now,
        )
        event = domain.DocumentCancelled(
            document_id=document_id,
            source_system=row["source_system"],
            client_reference=row["client_reference"],
            status="CANCELLED",
            cancelled_by=actor,
        )
        await journal.append_outbox(
            conn, [journal.OutboxEvent(event, row["trace_id"])], topics, now
        )
    return CancelResult(domain.Status.CANCELLED, True)
