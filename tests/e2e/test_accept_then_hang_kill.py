"""OMS killed with SIGKILL while Thunderhead holds a submitBatch it already turned into a job.

The simulator (its own process, so it outlives OMS) creates the first batch's job and
never answers. OMS is killed while that send hangs; the next OMS on the same database
finds the batch unresolved, reconciles it by reference and ADOPTS the job: the documents
complete without ever being sent again.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from oms import app
from tests.e2e.process import OmsProcess, ThunderheadSimProcess, free_port
from tests.support.intake import document

HEADERS = {"Authorization": f"Bearer {app.DEMO_SOURCE_KEY}"}
ADMIN = {"Authorization": f"Bearer {app.DEMO_ADMIN_KEY}"}
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}
DOCUMENTS = 20  # == batch_max_documents: one batch, so one submitBatch


async def sim_stats(http: aiohttp.ClientSession, sim: ThunderheadSimProcess) -> dict[str, Any]:
    async with http.get(f"{sim.url}/_sim/stats") as response:
        assert response.status == 200
        return dict(await response.json())


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_while_an_accepted_submit_hangs_adopts_the_job_and_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    sim = ThunderheadSimProcess(
        free_port(),
        json.dumps({"accept_then_hang": {"count": 1}, "processing_s_per_document": 0.02}),
    )
    port = free_port()
    settings = {
        "OMS_THUNDERHEAD__BASE_URL": sim.url,
        # The client would wait this long; the send is cut at 0.8 x lease (3.2 s), and
        # the kill comes well before that.
        "OMS_THUNDERHEAD__SUBMIT_TIMEOUT_S": "30",
        "OMS_PROCESSING__LEASE_S": "4",
        # Flushed by size: all of them, however slowly the claims come on a busy machine.
        "OMS_PROCESSING__BATCH_MAX_AGE_S": "10",
        "OMS_PROCESSING__BATCH_MAX_DOCUMENTS": str(DOCUMENTS),
        "OMS_PROCESSING__IN_FLIGHT_WINDOW_S": "3",
        "OMS_PROCESSING__RECONCILE_INTERVAL_S": "0.5",
        "OMS_MONITORING__POLL_INITIAL_S": "0.2",
        "OMS_MONITORING__POLL_MAX_S": "1",
        "OMS_SWEEPER__INTERVAL_S": "1",
        "OMS_SWEEPER__RECEIVED_AFTER_S": "2",
        "OMS_SWEEPER__SUBMITTED_UNPOLLED_AFTER_S": "3",
    }
    # The first OMS starts paused, so every document is accepted before any is
    # batched: all of them go in the one batch whose submission hangs.
    first = OmsProcess(tmp_path / "pgdata", port, OMS_PROCESSING__START_PAUSED="true", **settings)
    second = OmsProcess(tmp_path / "pgdata", port, **settings)
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        try:
            await sim.start(http)
            await first.start(http)

            async def submit(n: int) -> str:
                async with http.post(
                    f"{first.url}/v1/documents", json=document(f"H-{n}")
                ) as response:
                    assert response.status == 202, await response.text()
                    return str((await response.json())["id"])

            accepted = set(await asyncio.gather(*(submit(n) for n in range(DOCUMENTS))))
            assert len(accepted) == DOCUMENTS
            async with http.post(
                f"{first.url}/admin/api/pools/processing/resume", headers=ADMIN
            ) as response:
                assert response.status == 200, await response.text()

            # Thunderhead has created the job and holds the answer.
            for _ in range(300):  # bounded: 15 s
                before = await sim_stats(http, sim)
                if before["calls"]["submitBatch"] >= 1 and before["jobs"] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert before["calls"]["submitBatch"] == 1, before
            assert before["jobs"] == 1, before
            # The send is still hanging: the batch is recorded, with no job id yet.
            conn = await asyncpg.connect(first.dsn)
            try:
                batches = await conn.fetch("SELECT id, status, job_id FROM thunderhead_batches")
            finally:
                await conn.close()
            await first.kill9()
            assert [(b["status"], b["job_id"]) for b in batches] == [("SUBMITTING", None)], batches
            hung_batch = str(batches[0]["id"])

            await second.start(http)  # same data directory: the database is adopted
            conn = await asyncpg.connect(second.dsn)
            try:
                for _ in range(600):  # bounded: 60 s
                    rows = await conn.fetch("SELECT id::text, status FROM documents")
                    if rows and all(r["status"] in FINAL for r in rows):
                        break
                    await asyncio.sleep(0.1)
                statuses = {r["id"]: r["status"] for r in rows}
                submitted = await conn.fetch(
                    "SELECT document_id::text, detail FROM document_timeline"
                    " WHERE to_status = 'SUBMITTED'"
                )
                events = await conn.fetch(
                    "SELECT event_id, message_key, event_type FROM outbox"
                    " WHERE topic = 'oms.document.status'"
                )
            finally:
                await conn.close()
            stats = await sim_stats(http, sim)
        finally:
            await first.close()
            if second.process is not None:
                await second.terminate()
            await second.close()
            await sim.close()

    # Every accepted document completed.
    assert set(statuses) == accepted, set(statuses) ^ accepted
    assert Counter(statuses.values()) == Counter({"COMPLETED": DOCUMENTS}), Counter(
        statuses.values()
    )
    # The hung job was adopted: one submitBatch in all, no document sent twice.
    assert stats["calls"]["submitBatch"] == 1, stats
    assert stats["duplicate_submissions"] == 0, stats["duplicates"]
    assert stats["jobs"] == 1, stats
    assert stats["transactions"] == DOCUMENTS, stats
    assert stats["calls"]["findByReference"] >= 1, stats
    # Each document went SUBMITTED once, by reconciliation, into the hung batch.
    details = {r["document_id"]: json.loads(r["detail"]) for r in submitted}
    assert len(submitted) == len(details) == DOCUMENTS, submitted
    assert set(details) == accepted
    for detail in details.values():
        assert detail.get("reconciled") is True, detail
        assert detail["batch_id"] == hung_batch, detail
    # Exactly one final event per document, each with its own id.
    finals = Counter(e["message_key"] for e in events)
    assert set(finals) == accepted
    assert set(finals.values()) == {1}, finals
    assert len({e["event_id"] for e in events}) == len(events)
