"""Documents: intake inserts (many per transaction), reads, listing and cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from oms import domain
from oms.db.pool import Connection

_STATUS_EVENT = "oms.document.cancelled"


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """The stored answer to a request made with an Idempotency-Key."""

    key: str
    request_sha256: bytes
    response_status: int
    response_body: bytes
    expires_at: datetime


class NewDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A validated request ready to be stored, with what the first answer will say."""

    id: uuid.UUID
    source_system: str
    request: domain.DocumentRequest
    trace_id: str
    created_at: datetime
    idempotency: IdempotencyRecord | None = None


class Topics(msgspec.Struct, frozen=True):
    requested: str
    submitted: str
    status: str


class Inserted(msgspec.Struct, frozen=True):
    document_id: uuid.UUID


class DuplicateReference(msgspec.Struct, frozen=True):
    existing_id: uuid.UUID


class IdempotencyHit(msgspec.Struct, frozen=True):
    """The key was used before: the stored record decides replay (same body) or 422."""

    record: IdempotencyRecord


InsertOutcome = Inserted | DuplicateReference | IdempotencyHit

_encode = msgspec.json.encode


async def insert_many(
    conn: Connection, items: Sequence[NewDocument], topics: Topics
) -> list[InsertOutcome]:
    """Store many requests atomically: rows, first timeline entries, outbox rows.

    Each item gets its own outcome; a duplicate or a reused key never aborts the
    others. Without Idempotency-Keys the write is one statement, atomic and
    committed on its own: one round trip for the whole group.
    """
    if any(item.idempotency is not None for item in items):
        async with conn.transaction():
            return await _insert_many(conn, items, topics)
    return await _insert_many(conn, items, topics)


async def _insert_many(
    conn: Connection, items: Sequence[NewDocument], topics: Topics
) -> list[InsertOutcome]:
    outcomes: list[InsertOutcome | None] = [None] * len(items)
    candidates = list(range(len(items)))

    keyed = [i for i in candidates if items[i].idempotency is not None]
    if keyed:
        claimed = await _claim_idempotency_keys(conn, [items[i] for i in keyed])
        for i in keyed:
            record = claimed.get((items[i].source_system, _key(items[i])))
            if record is not None:
                outcomes[i] = IdempotencyHit(record)
        candidates = [i for i in candidates if outcomes[i] is None]

    inserted_ids = await _insert_rows(conn, [items[i] for i in candidates], topics.requested)
    duplicates = [i for i in candidates if items[i].id not in inserted_ids]
    if duplicates:
        existing = await _existing_ids(conn, [items[i] for i in duplicates])
        for i in duplicates:
            item = items[i]
            outcomes[i] = DuplicateReference(
                existing[(item.source_system, item.request.client_reference)]
            )
        # The key was claimed for a request that made no document: release it, so
        # a retry meets the same duplicate answer rather than a stale replay.
        released = [items[i] for i in duplicates if items[i].idempotency is not None]
        if released:
            await conn.execute(
                """DELETE FROM idempotency_keys k
                   USING unnest($1::text[], $2::text[]) AS r(source_system, idempotency_key)
                   WHERE k.source_system = r.source_system
                     AND k.idempotency_key = r.idempotency_key""",
                [d.source_system for d in released],
                [_key(d) for d in released],
            )
    for i in candidates:
        if outcomes[i] is None:
            outcomes[i] = Inserted(items[i].id)
    return [o for o in outcomes if o is not None]


def _key(item: NewDocument) -> str:
    assert item.idempotency is not None
    return item.idempotency.key


async def _claim_idempotency_keys(
    conn: Connection, items: Sequence[NewDocument]
) -> dict[tuple[str, str], IdempotencyRecord]:
    """Insert key records; return the earlier records of keys that were taken.

    An expired record is overwritten: after the expiry a key may be used again.
    """
    records = [i.idempotency for i in items if i.idempotency is not None]
    rows = await conn.fetch(
        """INSERT INTO idempotency_keys AS k (source_system, idempotency_key, request_sha256,
               response_status, response_body, document_id, created_at, expires_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::smallint[],
                                $5::bytea[], $6::uuid[], $7::timestamptz[], $8::timestamptz[])
           ON CONFLICT (source_system, idempotency_key) DO UPDATE
               SET request_sha256 = EXCLUDED.request_sha256,
                   response_status = EXCLUDED.response_status,
                   response_body = EXCLUDED.response_body,
                   document_id = EXCLUDED.document_id,
                   created_at = EXCLUDED.created_at,
                   expires_at = EXCLUDED.expires_at
               WHERE k.expires_at <= EXCLUDED.created_at
           RETURNING source_system, idempotency_key""",
        [i.source_system for i in items],
        [r.key for r in records],
        [r.request_sha256 for r in records],
        [r.response_status for r in records],
        [r.response_body for r in records],
        [i.id for i in items],
        [i.created_at for i in items],
        [r.expires_at for r in records],
    )
    won = {(r["source_system"], r["idempotency_key"]) for r in rows}
    lost = [i for i in items if (i.source_system, _key(i)) not in won]
    if not lost:
        return {}
    earlier = await conn.fetch(
        """SELECT k.source_system, k.idempotency_key, k.request_sha256, k.response_status,
                  k.response_body, k.expires_at
           FROM idempotency_keys k
           JOIN unnest($1::text[], $2::text[]) AS r(source_system, idempotency_key)
             ON k.source_system = r.source_system AND k.idempotency_key = r.idempotency_key""",
        [i.source_system for i in lost],
        [_key(i) for i in lost],
    )
    return {(r["source_system"], r["idempotency_key"]): _idempotency_record(r) for r in earlier}


async def find_idempotency_record(
    conn: Connection, source_system: str, key: str, now: datetime
) -> IdempotencyRecord | None:
    row = await conn.fetchrow(
        """SELECT idempotency_key, request_sha256, response_status, response_body, expires_at
           FROM idempotency_keys
           WHERE source_system = $1 AND idempotency_key = $2 AND expires_at > $3""",
        source_system,
        key,
        now,
    )
    return None if row is None else _idempotency_record(row)


def _idempotency_record(row: asyncpg.Record) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row["idempotency_key"],
        request_sha256=bytes(row["request_sha256"]),
        response_status=row["response_status"],
        response_body=bytes(row["response_body"]),
        expires_at=row["expires_at"],
    )


async def _insert_rows(
    conn: Connection, items: Sequence[NewDocument], requested_topic: str
) -> set[uuid.UUID]:
    """Rows, first timeline entries and outbox rows in ONE statement: one round trip.

    Only rows actually inserted (no client_reference conflict) get a timeline
    entry and an event; the sibling CTEs see exactly the ``RETURNING`` set.
    """
    if not items:
        return set()
    rows = await conn.fetch(
        """WITH input AS (
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[],
                   $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[],
                   $11::text[], $12::timestamptz[], $13::uuid[], $14::jsonb[])
               AS u(id, source_system, client_reference, priority, document_type, channel,
                    language, brand, recipient, data, trace_id, created_at, event_id, event)
           ),
           stored AS (
               INSERT INTO documents (id, source_system, client_reference, status, priority,
                   document_type, channel, language, brand, recipient, data, trace_id,
                   created_at, updated_at)
               SELECT id, source_system, client_reference, 'RECEIVED', priority, document_type,
                      channel, language, brand, recipient, data, trace_id, created_at, created_at
               FROM input
               ON CONFLICT (source_system, client_reference) DO NOTHING
               RETURNING id
           ),
           timeline AS (
               INSERT INTO document_timeline (document_id, at, actor, from_status, to_status)
               SELECT i.id, i.created_at, 'intake', NULL, 'RECEIVED'
               FROM input i JOIN stored USING (id)
           ),
           events AS (
               INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
                   trace_id, created_at)
               SELECT i.event_id, $15, i.id::text, 'oms.document.requested', i.id::text,
                      i.event, i.trace_id, i.created_at
               FROM input i JOIN stored USING (id)
           )
           SELECT id FROM stored""",
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
        [domain.uuid7() for _ in items],
        [_encode(requested_event(i)) for i in items],
        requested_topic,
    )
    return {r["id"] for r in rows}


async def _existing_ids(
    conn: Connection, items: Sequence[NewDocument]
) -> dict[tuple[str, str], uuid.UUID]:
    rows = await conn.fetch(
        """SELECT d.source_system, d.client_reference, d.id
           FROM documents d
           JOIN unnest($1::text[], $2::text[]) AS r(source_system, client_reference)
             ON d.source_system = r.source_system AND d.client_reference = r.client_reference""",
        [i.source_system for i in items],
        [i.request.client_reference for i in items],
    )
    return {(r["source_system"], r["client_reference"]): r["id"] for r in rows}


def requested_event(item: NewDocument) -> domain.DocumentRequested:
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
    topics: Topics,
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
        await conn.execute(
            """INSERT INTO document_timeline (document_id, at, actor, from_status, to_status)
               VALUES ($1, $2, $3, $4, 'CANCELLED')""",
            document_id,
            now,
            actor,
            row["from_status"],
        )
        event = domain.DocumentCancelled(
            document_id=document_id,
            source_system=row["source_system"],
            client_reference=row["client_reference"],
            status="CANCELLED",
            cancelled_by=actor,
        )
        await conn.execute(
            """INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
                   trace_id, created_at)
               VALUES ($1, $2, $3, $4, $3, $5, $6, $7)""",
            domain.uuid7(),
            topics.status,
            str(document_id),
            _STATUS_EVENT,
            _encode(event),
            row["trace_id"],
            now,
        )
    return CancelResult(domain.Status.CANCELLED, True)


async def purge_expired_idempotency_keys(conn: Connection, now: datetime) -> int:
    result: str = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= $1", now)
    return int(result.split()[-1])
