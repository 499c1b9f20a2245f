"""Thunderhead misbehaving as the issue lists it, against the simulator over real HTTP.

Each test provokes one fault for real and asserts the documents' outcomes: every
document ends COMPLETED, or FAILED only by Thunderhead's own verdict (or by a
deadline the test set on purpose), and nothing is generated twice. The stages
run on their own (``tests.support.stages``); a test that reads OMS's HTTP
answers (readiness, a document as the user sees it) boots a whole OMS.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import anyio
import asyncpg

from tests.support.intake import document, wait_for_statuses, wait_until
from tests.support.keys import AUTH
from tests.support.sims import SimServer
from tests.support.stages import stages_with
from tests.support.whole_oms import oms_with, submit_all

FINAL = {"COMPLETED", "FAILED"}
QUICK_POLLS = {"poll_initial_s": 0.1, "poll_max_s": 0.3}


async def outcomes(db: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[str, int]:
    """``{"COMPLETED": n, "FAILED:<reason>": n}`` for these documents."""
    rows = await db.fetch(
        "SELECT status, last_error->>'reason' AS reason FROM documents WHERE id = ANY($1::uuid[])",
        ids,
    )
    counts: dict[str, int] = {}
    for r in rows:
        key = r["status"] if r["status"] != "FAILED" else f"FAILED:{r['reason']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


async def test_a_tenant_limit_below_omss_rate_gives_no_429_storm_and_fails_nothing(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # The tenant allows 5 calls/s and says nothing about when to come back; OMS is
    # set to 15/s. One 429 teaches OMS the limit: it must not hit it every pause.
    await thunderhead_server.post(
        "/_sim/config",
        {"rate_limit_per_s": 5, "rate_limit_retry_after": False, "processing_s_per_document": 0},
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 1, "max_attempts": 2},
        thunderhead_settings={"wait_429_s": 1.0},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"L-{n}") for n in range(60)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=90)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 60}
    assert stats["duplicate_submissions"] == 0
    # Without adaptation a burst after each 1 s pause meets the limit again: one 429
    # per pause for the whole run (dozens). With it, a handful at the start.
    assert stats["rejected_429"] <= 6, stats
    attempts = await db.fetchval("SELECT max(attempts) FROM documents")
    assert attempts == 0  # a 429 is a wait, never an attempt


async def test_chaos_fails_documents_only_by_thunderheads_verdict(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config",
        {
            "chaos": {
                "error_500": 0.2,
                "error_503": 0.2,
                "hang": 0.2,
                "unauthorized": 0.05,
                "seed": 7,
            },
            "failure_ratio": 0.1,
            "processing_s_per_document": 0.01,
        },
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={
            "batch_max_documents": 10,
            "max_attempts": 12,
            "in_flight_window_s": 1.0,
            "reconcile_interval_s": 0.2,
            # Rounds after many failed finds are seconds apart, not the 15 s cap.
            "wait_backoff_max_s": 1.0,
        },
        thunderhead_settings={"timeout_s": 0.5, "submit_timeout_s": 0.5},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"C-{n}") for n in range(60)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=120)
    stats = await thunderhead_server.get("/_sim/stats")
    counts = await outcomes(db, ids)
    # FAILED only where Thunderhead itself composed and failed the document.
    assert set(counts) <= {"COMPLETED", "FAILED:generation_failed"}, counts
    assert counts.get("COMPLETED", 0) >= 40
    assert stats["duplicate_submissions"] == 0, stats["duplicates"]
    assert stats["chaos"]["hang"] > 0
    assert stats["chaos"]["error_503"] > 0
    failed = await db.fetch(
        "SELECT last_error FROM documents WHERE status = 'FAILED' AND id = ANY($1::uuid[])", ids
    )
    for row in failed:  # Thunderhead's words reach the user
        assert any(m.get("msg") for m in json.loads(row["last_error"])["messages"])


async def test_a_hung_submit_that_created_nothing_is_sent_again_once_the_window_closes(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"hang": {"count": 1, "endpoint": "submitBatch"}})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        # All five in one batch, sent and sent again (flushed by size, however slowly
        # the claims come on a busy machine).
        processing={
            "in_flight_window_s": 1.5,
            "reconcile_interval_s": 0.2,
            "max_attempts": 1,
            "batch_max_documents": 5,
            "batch_max_age_s": 5.0,
        },
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"H-{n}") for n in range(5)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=30)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 5}
    assert stats["calls"]["submitBatch"] == 2  # the hung one, then one re-send
    assert stats["duplicate_submissions"] == 0
    batch = await db.fetchrow(
        "SELECT status, reconcile_rounds FROM thunderhead_batches WHERE status = 'ABANDONED'"
    )
    assert batch is not None
    assert batch["reconcile_rounds"] >= 1
    # One find per round for the whole batch of 5, not one per document.
    assert stats["calls"]["findByReference"] == batch["reconcile_rounds"]
    assert await db.fetchval("SELECT max(attempts) FROM documents") == 0


async def test_accept_then_hang_is_adopted_for_the_whole_batch_with_one_find(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"accept_then_hang": {"count": 1}})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 20, "batch_max_age_s": 10.0},  # one batch, by size
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"A-{n}") for n in range(20)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=30)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 20}
    assert stats["duplicate_submissions"] == 0
    assert stats["calls"]["submitBatch"] == 1
    assert stats["calls"]["findByReference"] == 1  # one round decided all 20


async def test_wrong_credentials_make_documents_wait_not_fail(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"client_secret": "rotated-by-someone"})
    async with oms_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"max_attempts": 1, "wait_backoff_max_s": 0.5},
        monitoring=QUICK_POLLS,
    ) as oms:
        ids = await submit_all(oms, [document(f"W-{n}") for n in range(10)])
        async with aiohttp.ClientSession(oms.url) as http:
            with anyio.fail_after(10):
                while True:
                    async with http.get("/readyz") as response:
                        body = await response.json()
                    if "credentials refused" in json.dumps(body):
                        break
                    await anyio.sleep(0.1)
        await anyio.sleep(3.0)  # long enough for several retry rounds with max_attempts 1
        assert await db.fetchval("SELECT count(*) FROM documents WHERE status = 'FAILED'") == 0
        await thunderhead_server.post("/_sim/config", {"client_secret": "oms-simulator-secret"})
        await wait_for_statuses(db, ids, FINAL, timeout_s=30)
    assert await outcomes(db, ids) == {"COMPLETED": 10}
    assert await db.fetchval("SELECT max(attempts) FROM documents") == 0
    assert await db.fetchval("SELECT min(waits) FROM documents") >= 1


async def test_a_413_splits_the_batch_and_every_document_completes(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"max_request_bytes": 5_000_000, "processing_s_per_document": 0.001}
    )
    big = {"statement": "x" * 60_000}
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 100, "batch_max_age_s": 2.0},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"Z-{n}", data=big) for n in range(100)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=60)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 100}
    assert stats["rejected_413"] >= 1
    assert stats["duplicate_submissions"] == 0
    assert await db.fetchval("SELECT count(*) FROM thunderhead_batches WHERE status = 'SPLIT'") >= 1


async def test_one_bad_transaction_in_a_batch_of_100_fails_alone(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"reject_marker": "POISON", "processing_s_per_document": 0.001}
    )
    bodies: list[dict[str, Any]] = [document(f"B-{n}") for n in range(100)]
    bodies[37] = document("B-37", data={"note": "POISON"})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 100, "batch_max_age_s": 2.0},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all(bodies)
        await wait_for_statuses(db, ids, FINAL, timeout_s=60)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 99, "FAILED:thunderhead_rejected": 1}
    bad = await db.fetchrow("SELECT last_error FROM documents WHERE client_reference = 'B-37'")
    assert json.loads(bad["last_error"])["messages"]  # Thunderhead's refusal, kept
    # Bisection: about two sends per halving (log2 100 ~ 7), never one per document.
    assert stats["calls"]["submitBatch"] <= 1 + 2 * 8, stats["calls"]
    assert stats["duplicate_submissions"] == 0


async def test_omss_own_waits_end_at_the_document_deadline(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config",
        {"inject": [{"status": 503, "count": 10_000, "endpoint": "submitBatch", "retry_after": 0}]},
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"deadline_s": 2.0, "max_attempts": 1},
    ) as stages:
        ids = await stages.submit_all([document(f"D-{n}") for n in range(3)])
        rows = await wait_for_statuses(db, ids, FINAL, timeout_s=20)
    assert await outcomes(db, ids) == {"FAILED:deadline_exceeded": 3}
    for row in rows.values():
        assert row["attempts"] == 0
        assert "503" in json.loads(row["last_error"])["detail"]


async def test_a_batch_thunderhead_cannot_account_for_fails_at_the_reconciliation_deadline(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config",
        {
            "accept_then_hang": {"count": 1},
            "inject": [{"status": 500, "count": 10_000, "endpoint": "findByReference"}],
        },
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={
            "reconcile_deadline_s": 2.0,
            "reconcile_interval_s": 0.2,
            # All three in the one batch that hangs, however slowly they arrive.
            "batch_max_documents": 3,
            "batch_max_age_s": 5.0,
        },
    ) as stages:
        ids = await stages.submit_all([document(f"R-{n}") for n in range(3)])

        # While it lasts, reconciliation is visible on the batch row.
        async def reconciling() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM thunderhead_batches WHERE status = 'RECONCILING'"
                    " AND reconcile_rounds > 0 AND last_error LIKE '%500%'"
                )
            )

        await wait_until(reconciling, timeout_s=10, what="a batch visibly reconciling")
        await wait_for_statuses(db, ids, FINAL, timeout_s=20)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"FAILED:reconciliation_deadline_exceeded": 3}
    assert stats["calls"]["submitBatch"] == 1  # never sent again: Thunderhead may have it


async def test_thunderheads_words_reach_the_user(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # Half the transactions fail: the job is COMPLETED with a W message, failed
    # transactions carry Thunderhead's exceptions.
    await thunderhead_server.post(
        "/_sim/config", {"failure_ratio": 0.5, "processing_s_per_document": 0.01}
    )
    async with oms_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 12, "batch_max_age_s": 0.5},
        monitoring=QUICK_POLLS,
    ) as oms:
        ids = await submit_all(oms, [document(f"M-{n}") for n in range(12)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=30)
        async with aiohttp.ClientSession(oms.url, headers=AUTH) as http:
            shown = {}
            for document_id in ids:
                async with http.get(f"/v1/documents/{document_id}") as response:
                    assert response.status == 200
                    shown[document_id] = await response.json()
    failed = [d for d in shown.values() if d["status"] == "FAILED"]
    completed = [d for d in shown.values() if d["status"] == "COMPLETED"]
    assert failed
    assert completed
    for doc in failed:
        error = doc["last_error"]
        assert error["reason"] == "generation_failed"
        assert any(m.get("msg") for m in error["messages"]), error  # the exception's words
        assert error["detail"]  # and their text, readable at a glance
    for doc in completed:
        (output,) = doc["result"]["outputs"]
        assert output["channel"] == "HTML"  # an email is composed as HTML
        assert output["document_name"]
        assert output["mime_type"]
        assert output["part_location"]
        settled = [t for t in doc["timeline"] if t["to_status"] == "COMPLETED"]
        assert settled[0]["detail"]["warnings"]  # the job's W message, kept
    event = await db.fetchrow(
        "SELECT payload FROM outbox WHERE event_type = 'oms.document.failed' LIMIT 1"
    )
    assert any(m.get("msg") for m in json.loads(event["payload"])["messages"])


async def test_the_default_rate_fits_a_20_per_second_tenant_without_a_429(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"rate_limit_per_s": 20, "processing_s_per_document": 0}
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"batch_max_documents": 1, "submitters": 8},
        # OMS's shipped defaults for the rate, whatever the test helpers set.
        thunderhead_settings={"rate_limit_per_s": 15.0, "rate_limit_burst": 4},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all([document(f"T-{n}") for n in range(150)])
        await wait_for_statuses(db, ids, FINAL, timeout_s=90)
    stats = await thunderhead_server.get("/_sim/stats")
    assert await outcomes(db, ids) == {"COMPLETED": 150}
    assert stats["rejected_429"] == 0, stats
    assert stats["peak_rate_per_s"] >= 15  # it did run at the tenant's pace, not idle


async def test_several_bad_transactions_never_fail_a_good_one_when_halving_runs_out(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"reject_marker": "POISON", "processing_s_per_document": 0.001}
    )
    bodies: list[dict[str, Any]] = [document(f"S-{n}") for n in range(20)]
    for n in (2, 9, 15):
        bodies[n] = document(f"S-{n}", data={"note": "POISON"})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        # Two halvings only: the rest must go one by one, not fail together.
        processing={"batch_max_documents": 20, "batch_max_age_s": 1.0, "split_max_extra_calls": 4},
        monitoring=QUICK_POLLS,
    ) as stages:
        ids = await stages.submit_all(bodies)
        await wait_for_statuses(db, ids, FINAL, timeout_s=60)
    assert await outcomes(db, ids) == {"COMPLETED": 17, "FAILED:thunderhead_rejected": 3}
    failed = await db.fetch(
        "SELECT client_reference FROM documents WHERE status = 'FAILED' ORDER BY 1"
    )
    assert [r["client_reference"] for r in failed] == ["S-15", "S-2", "S-9"]
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["calls"]["submitBatch"] <= 1 + 4 + 20  # the halvings, then singles
    assert stats["duplicate_submissions"] == 0


async def test_a_wrong_api_path_makes_documents_wait_and_readiness_say_so(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    async with oms_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        processing={"max_attempts": 1, "wait_backoff_max_s": 0.3},
        thunderhead_settings={"api_path": "/one/oauth2/api/v11/job"},  # the tenant has v12
    ) as oms:
        ids = await submit_all(oms, [document(f"V-{n}") for n in range(3)])
        async with aiohttp.ClientSession(oms.url) as http:

            async def says_misconfigured() -> bool:
                async with http.get("/readyz") as response:
                    return "misconfigured" in (await response.text())

            await wait_until(says_misconfigured, timeout_s=10, what="readiness naming the path")
        await anyio.sleep(2.0)  # several rounds of waiting, with max_attempts 1
        rows = await db.fetch("SELECT status, attempts FROM documents")
    assert {r["status"] for r in rows} == {"PROCESSING"}
    assert {r["attempts"] for r in rows} == {0}
    assert len(ids) == 3
