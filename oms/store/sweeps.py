"""The scans behind the sweeper and the scheduled mode: work due that no event carried."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

from oms import domain
from oms.db.pool import Connection
from oms.store import journal


class Found(msgspec.Struct, frozen=True):
    event: domain.DocumentRequested
    status: domain.Status
    reason: str  # received_stale, retry_due, lease_expired


async def due_for_processing(
    conn: Connection, now: datetime, received_before: datetime, limit: int
) -> list[Found]:
    """RECEIVED since before ``received_before``, retries due since then, expired leases.

    Most urgent first, oldest first. Read-only: the claim settles who works on it.
    """
    rows = await conn.fetch(
        """SELECT id, source_system, client_reference, priority, document_type, channel,
                  trace_id, status,
                  CASE WHEN status = 'RECEIVED' THEN 'received_stale'
                       WHEN lease_owner IS NULL THEN 'retry_due'
                       ELSE 'lease_expired' END AS reason
           FROM documents
           WHERE (status = 'RECEIVED' AND updated_at <= $2)
              OR (status = 'PROCESSING' AND lease_owner IS NULL AND next_attempt_at <= $2)
              OR (status = 'PROCESSING' AND lease_expires_at < $1)
           ORDER BY priority, created_at
           LIMIT $3""",
        now,
        received_before,
        limit,
    )
    return [
        Found(
            journal.requested_from_row(r),
            domain.Status(r["status"]),
            r["reason"],
        )
        for r in rows
    ]


async def note_recoveries(conn: Connection, found: Sequence[Found], now: datetime) -> None:
    """Write each recovery to its document's timeline: where the sweeper stepped in."""
    await journal.append_timeline(
        conn,
        [
            journal.TimelineRow(
                f.event.document_id, f.status, f.status, {"event": "recovered", "reason": f.reason}
            )
            for f in found
        ],
        "sweeper",
        now,
    )


def ids(found: Sequence[Found]) -> list[uuid.UUID]:
    return [f.event.document_id for f in found]
