"""Reconciliation's edges, with the real database and the simulator over HTTP.

The whole-pipeline faults are in test_thunderhead_faults.py; these drive the
processing store and the reconciler directly to reach orders of events that a
pipeline run only meets by bad luck: a sender that outlives its lease, a batch
found long after it was created.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import msgspec
import pytest

from oms import config, domain
from oms.actors.reconciler import Reconciler
from oms.db.pool import create_pool
from oms.store import batches, reconciliation
from oms.store import processing as store
from oms.store.journal import Topics
from oms.thunderhead import ThunderheadClient
from tests.support.sims import SimServer

TOPICS = Topics.from_settings(config.EventsSettings())
LEASE = timedelta(seconds=120)


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_dsn, config.DatabaseSettings(dsn=database_dsn))
    yield created
    await created.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection with OMS's JSON codecs, as the stores expect."""
    async with pool.acquire() as conn:
        yield conn


def thunderhead_client(server: SimServer) -> ThunderheadClient:
    """Entered by the test itself: the client's task group wants one task."""
    return ThunderheadClient(config.ThunderheadSettings(base_url=server.url))


async def received(db: asyncpg.Connection, n: int = 1) -> list[uuid.UUID]:
    ids = [domain.uuid7() for _ in range(n)]
    now = datetime.now(UTC)
    for document_id in ids:
        await db.execute(
            """INSERT INTO documents (id, source_system, client_reference, status, priority,
                   document_type, channel, language, brand, recipient, data, trace_id,
                   created_at, updated_at)
               VALUES ($1, 'demo', $2, 'RECEIVED', 1, 'policy_renewal_notice', 'email', 'en',
                       'acme', '{}'::jsonb, '{}'::jsonb, 'trace', $3, $3)""",
            document_id,
            f"ref-{document_id}",
            now,
        )
    return ids


async def start_sending(
    db: asyncpg.Connection, ids: list[uuid.UUID], owner: str, now: datetime
) -> uuid.UUID:
    """Claim the documents as ``owner`` and record their batch, as a submitter does."""
    leases = {}
    for document_id in ids:
        claimed = await store.claim(db, document_id, f"{owner}/{document_id}", LEASE, now)
        assert claimed is not None
        leases[document_id] = claimed.lease
    batch_id = domain.uuid7()
    enrichment = msgspec.json.encode({"batch_config_res_id": 1335501440})
    held = await batches.start_batch(
        db, batch_id, "1335501440", dict.fromkeys(ids, enrichment), leases, now + LEASE, now
    )
    assert len(held) == len(ids)
    return batch_id


E = TypeVar("E")


def reconciler(
    pool: asyncpg.Pool, thunderhead: ThunderheadClient, **settings: float
) -> tuple[Reconciler, list[domain.DocumentRequested]]:
    again = Recorded[domain.DocumentRequested]()
    processing = msgspec.structs.replace(config.ProcessingSettings(), **settings)
    return (
        Reconciler(
            pool,
            thunderhead,
            processing,
            TOPICS,
            "reconciler-1",
            requested=again,
            submitted=Recorded[domain.DocumentSubmitted](),
        ),
        again,
    )


class Recorded(list[E]):
    """A handoff that keeps what it is handed (the next stage is not running here)."""

    def hand_over(self, event: E, delay_s: float = 0.0) -> None:
        self.append(event)


async def test_a_sender_that_outlived_its_lease_leaves_the_batch_to_reconciliation(
    db: asyncpg.Connection,
) -> None:
    ids = await received(db, 2)
    now = datetime.now(UTC)
    batch_id = await start_sending(db, ids, "A", now)
    # A's send outlives its lease: another process claims one document, sees the
    # batch unresolved, and parks it.
    later = now + LEASE + timedelta(seconds=1)
    other = await store.claim(db, ids[0], "B/1", LEASE, later)
    assert other is not None
    assert other.unresolved_batch == batch_id
    error = domain.DocumentError("thunderhead_outcome_unknown", "found after a lease expired")
    assert await batches.park_for_reconciliation(db, batch_id, error, later, later) == 2
    # Now A's send ends with a 500: closing the batch must not take it from reconciliation.
    assert not await batches.close_batch(db, batch_id, "ABANDONED", later)
    batch = await db.fetchrow("SELECT status FROM thunderhead_batches WHERE id = $1", batch_id)
    assert batch["status"] == "RECONCILING"
    rows = await db.fetch("SELECT next_attempt_at FROM documents WHERE batch_id = $1", batch_id)
    assert len(rows) == 2  # both parked, waiting on the batch's one decision


async def test_the_in_flight_window_counts_from_when_the_send_was_over(
    db: asyncpg.Connection, pool: asyncpg.Pool, thunderhead_server: SimServer
) -> None:
    async with thunderhead_client(thunderhead_server) as thunderhead:
        await _window_counts_from_when_the_send_was_over(db, pool, thunderhead)


async def _window_counts_from_when_the_send_was_over(
    db: asyncpg.Connection, pool: asyncpg.Pool, thunderhead: ThunderheadClient
) -> None:
    ids = await received(db, 3)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    batch_id = await start_sending(db, ids, "A", long_ago)  # created two hours ago...
    now = datetime.now(UTC)
    error = domain.DocumentError("thunderhead_outcome_unknown", "no answer within 30 s")
    await batches.park_for_reconciliation(db, batch_id, error, now, now)  # ...but sent just now
    stage, again = reconciler(pool, thunderhead, in_flight_window_s=60.0)
    assert await stage.reconcile_due() == 1
    batch = await db.fetchrow(
        "SELECT status, reconcile_rounds, next_reconcile_at FROM thunderhead_batches WHERE id = $1",
        batch_id,
    )
    # Thunderhead does not have it, but a send that just ended may still land: wait.
    assert batch["status"] == "RECONCILING"
    assert batch["reconcile_rounds"] == 1
    assert batch["next_reconcile_at"] <= now + timedelta(seconds=61)
    assert again == []
    # Once the window has passed since the send was over, the documents go again.
    await db.execute(
        """UPDATE thunderhead_batches SET unknown_since = $2, next_reconcile_at = $2
           WHERE id = $1""",
        batch_id,
        now - timedelta(seconds=61),
    )
    assert await stage.reconcile_due() == 1
    assert sorted(e.document_id for e in again) == sorted(ids)
    rows = await db.fetch(
        "SELECT status, batch_id, attempts FROM documents WHERE id = ANY($1::uuid[])", ids
    )
    assert {(r["status"], r["batch_id"], r["attempts"]) for r in rows} == {("PROCESSING", None, 0)}


async def test_no_batch_fails_on_its_first_unanswered_question(
    db: asyncpg.Connection, pool: asyncpg.Pool, thunderhead_server: SimServer
) -> None:
    async with thunderhead_client(thunderhead_server) as thunderhead:
        await _no_batch_fails_on_its_first_unanswered_question(
            db, pool, thunderhead, thunderhead_server
        )


async def _no_batch_fails_on_its_first_unanswered_question(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    thunderhead: ThunderheadClient,
    thunderhead_server: SimServer,
) -> None:
    ids = await received(db, 1)
    now = datetime.now(UTC)
    batch_id = await start_sending(db, ids, "A", now)
    error = domain.DocumentError("thunderhead_outcome_unknown", "process gone")
    # Parked, then OMS was down for five hours: that is OMS's time, not Thunderhead's.
    await batches.park_for_reconciliation(db, batch_id, error, now, now)
    await db.execute(
        "UPDATE thunderhead_batches SET unknown_since = $2 WHERE id = $1",
        batch_id,
        now - timedelta(hours=5),
    )
    await thunderhead_server.post(
        "/_sim/config",
        {"inject": [{"status": 500, "count": 100, "endpoint": "findByReference"}]},
    )
    stage, _ = reconciler(pool, thunderhead, reconcile_deadline_s=3600.0, backoff_base_s=0.0)

    async def one_round() -> str:
        await db.execute(
            "UPDATE thunderhead_batches SET next_reconcile_at = now() WHERE id = $1", batch_id
        )
        assert await stage.reconcile_due() == 1
        return await db.fetchval("SELECT status FROM documents WHERE id = $1", ids[0])

    assert await one_round() == "PROCESSING"  # the first unanswered round starts the clock
    silent_since = await db.fetchval(
        "SELECT unanswered_since FROM thunderhead_batches WHERE id = $1", batch_id
    )
    assert silent_since >= now
    # Thunderhead then stays silent past the deadline...
    await db.execute(
        "UPDATE thunderhead_batches SET unanswered_since = $2 WHERE id = $1",
        batch_id,
        now - timedelta(hours=2),
    )
    assert await one_round() == "PROCESSING"  # ...but two rounds are not enough to judge
    assert await one_round() == "FAILED"
    row = await db.fetchrow("SELECT last_error FROM documents WHERE id = $1", ids[0])
    assert row["last_error"]["reason"] == "reconciliation_deadline_exceeded"


async def test_a_parked_document_whose_batch_was_settled_elsewhere_is_released(
    db: asyncpg.Connection,
) -> None:
    ids = await received(db, 1)
    now = datetime.now(UTC)
    batch_id = await start_sending(db, ids, "A", now)
    error = domain.DocumentError("thunderhead_outcome_unknown", "no answer")
    await batches.park_for_reconciliation(db, batch_id, error, now, now)
    # A broken promise (the batch closed without its documents moving on).
    await db.execute("UPDATE thunderhead_batches SET status = 'ABANDONED' WHERE id = $1", batch_id)
    assert await reconciliation.release_strays(db, now) == 1
    due = await db.fetchval("SELECT next_attempt_at FROM documents WHERE id = $1", ids[0])
    assert due == now
    assert await reconciliation.release_strays(db, now) == 0
