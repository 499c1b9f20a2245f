"""OMS killed with SIGKILL mid-run, then restarted: nothing lost, nothing generated twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from oms import app
from tests.e2e.process import OmsProcess, ThunderheadSimProcess, free_port
from tests.support.intake import document

HEADERS = {"Authorization": f"Bearer {app.DEMO_SOURCE_KEY}"}
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.mark.slow
async def test_sigkill_mid_run_then_restart_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    sim = ThunderheadSimProcess(free_port(), json.dumps({"processing_s_per_document": 0.05}))
    port = free_port()
    settings = {
        "OMS_THUNDERHEAD__BASE_URL": sim.url,
        "OMS_PROCESSING__LEASE_S": "4",
        # A batch cut off by the kill is sent again once no send can still land.
        "OMS_PROCESSING__IN_FLIGHT_WINDOW_S": "5",
        "OMS_PROCESSING__RECONCILE_INTERVAL_S": "0.5",
        "OMS_PROCESSING__BATCH_MAX_AGE_S": "0.2",
        "OMS_PROCESSING__BATCH_MAX_DOCUMENTS": "20",
        "OMS_MONITORING__POLL_INITIAL_S": "0.2",
        "OMS_MONITORING__POLL_MAX_S": "1",
        "OMS_SWEEPER__INTERVAL_S": "1",
        "OMS_SWEEPER__RECEIVED_AFTER_S": "2",
        "OMS_SWEEPER__SUBMITTED_UNPOLLED_AFTER_S": "3",
    }
    first = OmsProcess(tmp_path / "pgdata", port, **settings)
    second = OmsProcess(tmp_path / "pgdata", port, **settings)
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        try:
            await sim.start(http)
            await first.start(http)

            async def submit(n: int) -> str | None:
                try:
                    async with http.post(
                        f"{first.url}/v1/documents", json=document(f"K-{n}")
                    ) as response:
                        return (await response.json())["id"] if response.status == 202 else None
                except aiohttp.ClientError:
                    return None  # the process died under this request: never accepted

            in_flight = [asyncio.create_task(submit(n)) for n in range(300)]
            await asyncio.sleep(0.6)  # some accepted, some processing, some submitted
            await first.kill9()
            accepted = {i for i in await asyncio.gather(*in_flight) if i}
            assert accepted, "nothing was accepted before the kill"

            await second.start(http)  # same data directory: the database is adopted
            conn = await asyncpg.connect(second.dsn)
            try:
                for _ in range(900):  # bounded: 90 s
                    rows = await conn.fetch("SELECT id::text, status FROM documents")
                    if all(r["status"] in FINAL for r in rows):
                        break
                    await asyncio.sleep(0.1)
                statuses = {r["id"]: r["status"] for r in rows}
                events = await conn.fetch(
                    "SELECT event_id, message_key, event_type FROM outbox"
                    " WHERE topic = 'oms.document.status'"
                )
            finally:
                await conn.close()
            async with http.get(f"{sim.url}/_sim/stats") as response:
                stats = await response.json()
        finally:
            await first.close()
            if second.process is not None:
                await second.terminate()
            await second.close()
            await sim.close()

    # Every document the clients were told was accepted exists and is final.
    assert accepted <= set(statuses), accepted - set(statuses)
    assert Counter(statuses.values()) == Counter({"COMPLETED": len(statuses)}), Counter(
        statuses.values()
    )
    # Thunderhead never received a document twice.
    assert stats["duplicate_submissions"] == 0, stats["duplicates"]
    assert stats["transactions"] == len(statuses)
    # Exactly one final event per document, each with its own id.
    finals = Counter(e["message_key"] for e in events)
    assert set(finals) == set(statuses)
    assert set(finals.values()) == {1}
    assert len({e["event_id"] for e in events}) == len(events)
