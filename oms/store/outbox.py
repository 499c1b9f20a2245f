"""The outbox as the relay and the admin see it: due rows, publication, failures, dead rows.

Rows are written by ``journal.append_outbox`` in the transaction of the change
they announce. Here they are read in id order (commit order, near enough: the
per-document order the relay keeps), marked published many at a time, and
charged with failures that are specific to them; a row that fails
``max_attempts`` times is dead, which makes it an entry of the error table
until an admin republishes it.

Every query is written against the partial indexes of migration 0001
(``outbox_unpublished`` on id, ``outbox_dead`` on dead_at). The payload is read
as text, so the bytes sent are PostgreSQL's rendering of the stored JSON,
whatever jsonb codec the connection has.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

import msgspec

from oms.db.pool import Connection

_ERROR_TEXT_MAX = 2_000


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """An unpublished event, with everything the CloudEvents binding needs."""

    id: int
    event_id: uuid.UUID
    topic: str
    message_key: str
    event_type: str
    subject: str
    payload: bytes  # the event's data, JSON
    trace_id: str | None
    created_at: datetime
    attempts: int


class DeadRow(msgspec.Struct, frozen=True, kw_only=True):
    """An entry of the error table (no payload: it may carry request data)."""

    id: int
    event_id: uuid.UUID
    topic: str
    message_key: str
    event_type: str
    attempts: int
    last_error: str | None
    created_at: datetime
    dead_at: datetime


class OutboxBacklog(NamedTuple):
    """How far behind the relay is (the admin API answers with its own ``Backlog``)."""

    unpublished: int
    oldest_age_s: float  # 0.0 when nothing is waiting
    dead: int


async def fetch_due(conn: Connection, limit: int, now: datetime) -> list[OutboxRow]:
    """Unpublished, live rows whose retry time (if any) has come, oldest id first."""
    records = await conn.fetch(
        """SELECT id, event_id, topic, message_key, event_type, subject,
                  payload::text AS payload, trace_id, created_at, attempts
           FROM outbox
           WHERE published_at IS NULL AND dead_at IS NULL
             AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
           ORDER BY id
           LIMIT $1""",
        limit,
        now,
    )
    return [
        OutboxRow(
            id=r["id"],
            event_id=r["event_id"],
            topic=r["topic"],
            message_key=r["message_key"],
            event_type=r["event_type"],
            subject=r["subject"],
            payload=r["payload"].encode(),
            trace_id=r["trace_id"],
            created_at=r["created_at"],
            attempts=r["attempts"],
        )
        for r in records
    ]


async def mark_published(conn: Connection, ids: Sequence[int], now: datetime) -> int:
    """Mark live rows published in one statement; returns how many it marked."""
    if not ids:
        return 0
    status = await conn.execute(
        """UPDATE outbox SET published_at = $2
           WHERE id = ANY($1::bigint[]) AND published_at IS NULL AND dead_at IS NULL""",
        list(ids),
        now,
    )
    return int(status.split()[-1])


async def record_failure(
    conn: Connection,
    rows: Sequence[OutboxRow],
    error: str,
    now: datetime,
    max_attempts: int,
    backoff: Callable[[int], float],
) -> list[int]:
    """Charge each row one attempt; ``backoff(attempts)`` seconds until its next one.

    A row reaching ``max_attempts`` is dead instead (no next attempt). Returns the
    ids that died now.
    """
    if not rows:
        return []
    records = await conn.fetch(
        """UPDATE outbox AS o
           SET attempts = o.attempts + 1,
               last_error = $2,
               next_attempt_at = CASE WHEN o.attempts + 1 >= $4 THEN NULL
                                      ELSE $3::timestamptz + make_interval(secs => u.delay) END,
               dead_at = CASE WHEN o.attempts + 1 >= $4 THEN $3::timestamptz END
           FROM unnest($1::bigint[], $5::float8[]) AS u(id, delay)
           WHERE o.id = u.id AND o.published_at IS NULL AND o.dead_at IS NULL
           RETURNING o.id, o.dead_at IS NOT NULL AS dead""",
        [row.id for row in rows],
        error[:_ERROR_TEXT_MAX],
        now,
        max_attempts,
        [backoff(row.attempts + 1) for row in rows],
    )
    return sorted(r["id"] for r in records if r["dead"])


async def republish(conn: Connection, outbox_id: int) -> bool:
    """Make a dead row due again (its last error is kept); False if no such dead row."""
    found = await conn.fetchval(
        """UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = NULL
           WHERE id = $1 AND dead_at IS NOT NULL
           RETURNING id""",
        outbox_id,
    )
    return found is not None


async def backlog(conn: Connection) -> OutboxBacklog:
    """Waiting rows, the age of the oldest (by id, on the database clock), dead rows."""
    record = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM outbox
              WHERE published_at IS NULL AND dead_at IS NULL) AS unpublished,
             (SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox
              WHERE published_at IS NULL AND dead_at IS NULL ORDER BY id LIMIT 1) AS age,
             (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead"""
    )
    assert record is not None
    return OutboxBacklog(record["unpublished"], max(record["age"] or 0.0, 0.0), record["dead"])


async def list_dead(conn: Connection, limit: int, after_id: int | None = None) -> list[DeadRow]:
    """Dead rows in id order, a keyset page starting after ``after_id``."""
    records = await conn.fetch(
        """SELECT id, event_id, topic, message_key, event_type, attempts, last_error,
                  created_at, dead_at
           FROM outbox
           WHERE dead_at IS NOT NULL AND id > $2
           ORDER BY id
           LIMIT $1""",
        limit,
        after_id or 0,
    )
    return [DeadRow(**dict(r)) for r in records]
