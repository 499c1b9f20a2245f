"""Monitoring's reads and state changes: jobs to poll, and settling a finished job.

Settling is one transaction per job, conditional on the document still being
SUBMITTED, so a job polled twice (two processes, a late poll) settles once.
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
from oms.store import journal

ACTOR = "monitoring"


class JobToPoll(msgspec.Struct, frozen=True):
    batch_id: uuid.UUID
    job_id: str
    submitted_at: datetime
    polls: int
    priority: domain.Priority


async def due_jobs(conn: Connection, due_before: datetime, limit: int) -> list[JobToPoll]:
    """Unfinished jobs whose next poll is at or before ``due_before``, most overdue first."""
    rows = await conn.fetch(
        """SELECT b.id, b.job_id, b.submitted_at, b.polls,
                  (SELECT min(d.priority) FROM documents d WHERE d.batch_id = b.id) AS priority
           FROM thunderhead_batches b
           WHERE b.finished_at IS NULL AND b.job_id IS NOT NULL AND b.next_poll_at <= $1
           ORDER BY b.next_poll_at
           LIMIT $2""",
        due_before,
        limit,
    )
    return [
        JobToPoll(
            r["id"],
            r["job_id"],
            r["submitted_at"],
            r["polls"],
            domain.Priority.from_rank(r["priority"] if r["priority"] is not None else 1),
        )
        for r in rows
    ]


async def record_poll(
    conn: Connection, batch_id: uuid.UUID, status: str, next_poll_at: datetime
) -> None:
    """A poll happened: other processes and the sweeper see the job is being watched."""
    await conn.execute(
        """UPDATE thunderhead_batches SET polls = polls + 1, next_poll_at = $2, status = $3
           WHERE id = $1 AND finished_at IS NULL""",
        batch_id,
        next_poll_at,
        status,
    )


class Outcome(msgspec.Struct, frozen=True):
    """What became of one document of a finished job."""

    document_id: uuid.UUID
    completed: bool
    result: dict[str, Any] | None = None
    error: domain.DocumentError | None = None
    warnings: list[str] = []
    """Thunderhead's W messages: kept on the timeline."""


class Settled(msgspec.Struct, frozen=True):
    document_id: uuid.UUID
    status: domain.Status
    created_at: datetime


async def settle(
    conn: Connection,
    batch_id: uuid.UUID,
    job_id: str,
    job_status: str,
    outcomes: Sequence[Outcome],
    topics: journal.Topics,
    now: datetime,
) -> list[Settled]:
    """SUBMITTED → COMPLETED/FAILED for a finished job, with timeline and Event Hub rows."""
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE documents d
               SET status = CASE WHEN u.completed THEN 'COMPLETED' ELSE 'FAILED' END,
                   result = u.result, last_error = u.error, updated_at = $3
               FROM unnest($1::uuid[], $2::boolean[], $4::jsonb[], $5::jsonb[])
                    AS u(id, completed, result, error)
               WHERE d.id = u.id AND d.status = 'SUBMITTED' AND d.thunderhead_job_id = $6
               RETURNING d.id, d.status, d.source_system, d.client_reference, d.trace_id,
                         d.created_at""",
            [o.document_id for o in outcomes],
            [o.completed for o in outcomes],
            now,
            [msgspec.json.encode(o.result) if o.result is not None else None for o in outcomes],
            [msgspec.json.encode(o.error) if o.error is not None else None for o in outcomes],
            job_id,
        )
        by_id = {o.document_id: o for o in outcomes}
        entries = []
        events = []
        for r in rows:
            outcome = by_id[r["id"]]
            status = domain.Status(r["status"])
            entries.append(
                journal.TimelineRow(
                    r["id"],
                    domain.Status.SUBMITTED,
                    status,
                    _timeline_detail(job_id, outcome),
                )
            )
            events.append(_status_event(r, outcome, job_id))
        await journal.append_timeline(conn, entries, ACTOR, now)
        await journal.append_outbox(conn, events, topics, now)
        await conn.execute(
            """UPDATE thunderhead_batches SET status = $2, finished_at = $3, polls = polls + 1
               WHERE id = $1 AND finished_at IS NULL""",
            batch_id,
            job_status,
            now,
        )
    return [Settled(r["id"], domain.Status(r["status"]), r["created_at"]) for r in rows]


async def submitted_documents(conn: Connection, job_id: str) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM documents WHERE thunderhead_job_id = $1 AND status = 'SUBMITTED'", job_id
    )
    return [r["id"] for r in rows]


def _timeline_detail(job_id: str, outcome: Outcome) -> dict[str, Any]:
    detail: dict[str, Any] = {"job_id": job_id}
    if not outcome.completed:
        detail["reason"] = outcome.error.reason if outcome.error else ""
        if outcome.error and outcome.error.detail:
            detail["error"] = outcome.error.detail
    if outcome.warnings:
        detail["warnings"] = outcome.warnings
    return detail


def _status_event(row: asyncpg.Record, outcome: Outcome, job_id: str) -> journal.OutboxEvent:
    if not outcome.completed:
        return journal.failed_event(
            row, outcome.error or domain.DocumentError(reason="generation_failed")
        )
    outputs = (outcome.result or {}).get("outputs", [])
    completed = domain.DocumentCompleted(
        document_id=row["id"],
        source_system=row["source_system"],
        client_reference=row["client_reference"],
        status="COMPLETED",
        job_id=job_id,
        outputs=msgspec.convert(outputs, list[domain.Output]),
    )
    return journal.OutboxEvent(completed, row["trace_id"])
