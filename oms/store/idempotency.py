"""Idempotency-Key records (IETF httpapi draft): claimed with the insert, replayed after.

A record is scoped to a source system and expires after ``intake.idempotency_ttl_s``;
an expired key may be used again. The unique key decides between processes: the
loser of a race finds the winner's record and replays its answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from oms.db.pool import Connection


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """The stored answer to a request made with an Idempotency-Key."""

    key: str
    request_sha256: bytes
    response_status: int
    response_body: bytes
    expires_at: datetime


class Claim(msgspec.Struct, frozen=True):
    """One request's key to claim: who asks, for which document, when."""

    source_system: str
    record: IdempotencyRecord
    document_id: uuid.UUID
    created_at: datetime


async def claim(
    conn: Connection, claims: Sequence[Claim]
) -> dict[tuple[str, str], IdempotencyRecord]:
    """Insert key records; return the earlier records of keys that were taken.

    An expired record is overwritten: after the expiry a key may be used again.
    """
    if not claims:
        return {}
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
        [c.source_system for c in claims],
        [c.record.key for c in claims],
        [c.record.request_sha256 for c in claims],
        [c.record.response_status for c in claims],
        [c.record.response_body for c in claims],
        [c.document_id for c in claims],
        [c.created_at for c in claims],
        [c.record.expires_at for c in claims],
    )
    won = {(r["source_system"], r["idempotency_key"]) for r in rows}
    lost = [c for c in claims if (c.source_system, c.record.key) not in won]
    if not lost:
        return {}
    earlier = await conn.fetch(
        """SELECT k.source_system, k.idempotency_key, k.request_sha256, k.response_status,
                  k.response_body, k.expires_at
           FROM idempotency_keys k
           JOIN unnest($1::text[], $2::text[]) AS r(source_system, idempotency_key)
             ON k.source_system = r.source_system AND k.idempotency_key = r.idempotency_key""",
        [c.source_system for c in lost],
        [c.record.key for c in lost],
    )
    return {(r["source_system"], r["idempotency_key"]): _record(r) for r in earlier}


async def release(conn: Connection, claims: Sequence[Claim]) -> None:
    """Forget these keys (claimed for requests that made no document)."""
    if not claims:
        return
    await conn.execute(
        """DELETE FROM idempotency_keys k
           USING unnest($1::text[], $2::text[]) AS r(source_system, idempotency_key)
           WHERE k.source_system = r.source_system
             AND k.idempotency_key = r.idempotency_key""",
        [c.source_system for c in claims],
        [c.record.key for c in claims],
    )


async def find(
    conn: Connection, source_system: str, key: str, now: datetime
) -> IdempotencyRecord | None:
    """The unexpired record of this key, if any."""
    row = await conn.fetchrow(
        """SELECT idempotency_key, request_sha256, response_status, response_body, expires_at
           FROM idempotency_keys
           WHERE source_system = $1 AND idempotency_key = $2 AND expires_at > $3""",
        source_system,
        key,
        now,
    )
    return None if row is None else _record(row)


async def purge_expired(conn: Connection, now: datetime) -> int:
    result: str = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= $1", now)
    return int(result.split()[-1])


def _record(row: asyncpg.Record) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row["idempotency_key"],
        request_sha256=bytes(row["request_sha256"]),
        response_status=row["response_status"],
        response_body=bytes(row["response_body"]),
        expires_at=row["expires_at"],
    )
