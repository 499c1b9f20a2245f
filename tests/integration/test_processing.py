"""Processing against the real Thunderhead simulator over HTTP: batches, faults, exactly once.

The stages run on their own (``tests.support.stages``); only what a client sees
of the whole process (intake's 503) boots OMS.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import asyncpg

from oms import metrics
from tests.support.intake import document, wait_for_statuses, wait_until
from tests.support.keys import AUTH
from tests.support.sims import SimServer
from tests.support.stages import stages_with
from tests.support.whole_oms import oms_with, submit_all

HANDED_OVER = {"SUBMITTED", "COMPLETED"}


def counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


async def test_documents_reach_thunderhead_in_batches(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    async with stages_with(
        database_dsn, refdata_server, thunderhead_server, processing={"batch_max_age_s": 0.3}
    ) as stages:
        ids = await stages.submit_all([document(f"B-{n}") for n in range(40)])
        rows = await wait_for_statuses(db, ids, HANDED_OVER)
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["transactions"] == 40
    assert stats["calls"]["submitBatch"] <= 4  # 40 documents, a handful of batches
    assert stats["duplicate_submissions"] == 0
    assert all(r["thunderhead_job_id"] for r in rows.values())
    submitted = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'oms.document.submitted'"
    )
    assert submitted == 40
    timeline = await db.fetch(
        "SELECT to_status FROM document_timeline WHERE document_id = $1 ORDER BY id", ids[0]
    )
    assert [t["to_status"] for t in timeline][:3] == ["RECEIVED", "PROCESSING", "SUBMITTED"]


async def test_the_shared_rate_limit_holds_across_all_actors(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # One document per batch: every document is its own call, from 8 actors and 4 submitters.
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"actors": 8, "submitters": 4, "batch_max_documents": 1},
        thunderhead_settings={"rate_limit_per_s": 5.0, "rate_limit_burst": 1},
    ) as stages:
        ids = await stages.submit_all([document(f"R-{n}") for n in range(20)])
        await wait_for_statuses(db, ids, HANDED_OVER, timeout_s=30)
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["calls"]["submitBatch"] == 20
    # Submissions and monitoring's polls share the one limit: rate plus the burst,
    # in any 1 s window.
    assert stats["peak_rate_per_s"] <= 5 + 1
    assert stats["duplicate_submissions"] == 0


async def test_transient_faults_are_retried_then_succeed(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config",
        {
            "inject": [
                {"status": 500, "count": 1, "endpoint": "submitBatch"},
                {"status": 429, "count": 1, "endpoint": "submitBatch", "retry_after": 0},
                {"status": 503, "count": 1, "endpoint": "submitBatch"},
            ]
        },
    )
    async with stages_with(database_dsn, refdata_server, thunderhead_server) as stages:
        ids = await stages.submit_all([document("T-1")])
        rows = await wait_for_statuses(db, ids, {*HANDED_OVER, "FAILED"})
    row = rows[ids[0]]
    assert row["status"] in HANDED_OVER
    # Only the 500 was an attempt; the 429 and the 503 asked OMS to wait.
    assert row["attempts"] == 1
    assert row["waits"] == 2
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["calls"]["submitBatch"] == 4
    assert stats["duplicate_submissions"] == 0
    events = await db.fetch(
        "SELECT detail FROM document_timeline WHERE document_id = $1 AND detail ? 'event'", ids[0]
    )
    kinds = [json.loads(e["detail"])["event"] for e in events]
    assert kinds.count("retry_scheduled") == 1
    assert kinds.count("waiting") == 2


async def test_a_business_failure_fails_the_document_with_thunderheads_messages(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"business_failure": {"count": 1}})
    async with stages_with(database_dsn, refdata_server, thunderhead_server) as stages:
        ids = await stages.submit_all([document("P-1")])
        rows = await wait_for_statuses(db, ids, {*HANDED_OVER, "FAILED"})
    row = rows[ids[0]]
    assert row["status"] == "FAILED"
    assert json.loads(row["last_error"])["reason"] == "thunderhead_rejected"
    assert json.loads(row["last_error"])["messages"]  # Thunderhead's own words are kept
    event = await db.fetchrow(
        "SELECT topic, payload FROM outbox WHERE event_type = 'oms.document.failed'"
    )
    assert event["topic"] == "oms.document.status"
    assert json.loads(event["payload"])["reason"] == "thunderhead_rejected"


async def test_retries_exhausted_fail_the_document(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"inject": [{"status": 500, "count": 100, "endpoint": "submitBatch"}]}
    )
    async with stages_with(
        database_dsn, refdata_server, thunderhead_server, processing={"max_attempts": 3}
    ) as stages:
        ids = await stages.submit_all([document("X-1")])
        rows = await wait_for_statuses(db, ids, {*HANDED_OVER, "FAILED"})
    row = rows[ids[0]]
    assert row["status"] == "FAILED"
    assert json.loads(row["last_error"])["reason"] == "retries_exhausted"
    assert row["attempts"] == 3
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["calls"]["submitBatch"] == 3


async def test_a_submit_that_times_out_after_acceptance_is_reconciled_not_resent(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"accept_then_hang": {"count": 1}})
    # All three in the one batch that hangs, however slowly they arrive: flushed by size.
    one_batch = {"batch_max_documents": 3, "batch_max_age_s": 5.0}
    async with stages_with(
        database_dsn, refdata_server, thunderhead_server, processing=one_batch
    ) as stages:
        ids = await stages.submit_all([document(f"U-{n}") for n in range(3)])
        rows = await wait_for_statuses(db, ids, {*HANDED_OVER, "FAILED"})
    assert {r["status"] for r in rows.values()} <= HANDED_OVER
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["duplicate_submissions"] == 0
    assert stats["calls"]["findByReference"] >= 1
    reconciled = await db.fetchval(
        "SELECT count(*) FROM document_timeline WHERE to_status = 'SUBMITTED'"
        " AND (detail->>'reconciled')::boolean"
    )
    assert reconciled == 3


async def test_urgent_work_overtakes_a_queued_bulk_load(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"actors": 1, "batch_max_documents": 1},
    ) as stages:
        pool = stages.pools["processing"]
        pool.pause()
        bulk = await stages.submit_all([document(f"BULK-{n}", priority="bulk") for n in range(15)])
        urgent = await stages.submit_all([document("URGENT", priority="urgent")])
        pool.resume()
        await wait_for_statuses(db, bulk + urgent, HANDED_OVER)
    claims = await db.fetch(
        "SELECT document_id FROM document_timeline WHERE to_status = 'PROCESSING' ORDER BY id"
    )
    assert claims[0]["document_id"] == urgent[0]


async def test_an_actor_that_crashes_mid_message_does_not_lose_it(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    restarts_before = counter(metrics.ACTOR_RESTARTS, "processing")
    # The database refuses processing's writes: an error no actor code expects.
    await db.execute(
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
           CREATE TRIGGER refuse BEFORE INSERT ON document_timeline FOR EACH ROW
           WHEN (NEW.actor = 'processing') EXECUTE FUNCTION refuse();"""
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"restart_backoff_s": 0.05, "max_redeliveries": 50},
    ) as stages:
        ids = await stages.submit_all([document("CRASH-1")])

        async def crashed_twice() -> bool:
            return counter(metrics.ACTOR_RESTARTS, "processing") >= restarts_before + 2

        await wait_until(crashed_twice, timeout_s=10, what="two actor crashes")
        status = await db.fetchval("SELECT status FROM documents WHERE id = $1", ids[0])
        assert status == "RECEIVED"  # the failed claim rolled back: nothing half-done
        await db.execute("DROP TRIGGER refuse ON document_timeline")
        rows = await wait_for_statuses(db, ids, HANDED_OVER)
    assert rows[ids[0]]["status"] in HANDED_OVER  # the message was redelivered, not lost


async def test_intake_answers_503_when_the_processing_mailbox_is_full(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    async with oms_with(
        database_dsn, refdata_server, thunderhead_server, processing={"mailbox_capacity": 2}
    ) as oms:
        oms.started.pools["processing"].pause()  # type: ignore[union-attr]
        await submit_all(oms, [document("F-1"), document("F-2")])
        async with aiohttp.ClientSession(oms.url, headers=AUTH) as http:
            async with http.post("/v1/documents", json=document("F-3")) as response:
                assert response.status == 503
                assert response.headers["Retry-After"]
                problem = await response.json()
    assert problem["type"] == "urn:oms:problem:overloaded"
    # Not stored half-way: the refused request left no row behind.
    assert await db.fetchval("SELECT count(*) FROM documents WHERE client_reference = 'F-3'") == 0
