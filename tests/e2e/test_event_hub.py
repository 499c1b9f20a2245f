"""The Event Hub end to end: every document's final status reaches ``oms.document.status``.

A whole OMS process (``run.py``) on its embedded default (PostgreSQL and the Tansu
broker of its own), the standalone Thunderhead simulator (so the test can turn its
knobs), documents over HTTP; a confluent-kafka (librdkafka) consumer in subscribe
mode, as a real Event Hub consumer, must see exactly one CloudEvent per document,
of the type of its final status: completed, failed (rejected at submission, or
failed by Thunderhead in a job) and cancelled (while the processing pool is paused).
Both pipeline modes: pushed by events, and scheduled scans of the database.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from oms.sim._thunderhead_jobs import fails as sim_fails
from tests.e2e.events import (
    SOURCE_HEADERS,
    StatusSubscriber,
    admin_post,
    by_subject,
    check_final_event,
    distinct,
    list_documents,
    outbox_backlog,
    submit,
    wait_readiness,
    wait_statuses,
)
from tests.e2e.process import OmsProcess, ThunderheadSimProcess, free_port
from tests.support.intake import document

DOCUMENTS = 30
PRIORITIES = ("urgent", "normal", "bulk")
FAILURE_RATIO = 0.2  # of the simulator: which references fail is a hash, so predictable
FAST = {
    "OMS_MONITORING__POLL_INITIAL_S": "0.2",
    "OMS_MONITORING__POLL_MAX_S": "1",
    "OMS_PROCESSING__BATCH_MAX_AGE_S": "0.2",
    "OMS_RELAY__IDLE_POLL_S": "0.2",
}
SCHEDULED = {
    "OMS_PIPELINE__MODE": "scheduled",
    "OMS_PIPELINE__SCHEDULED_PROCESSING_INTERVAL_S": "0.3",
    "OMS_PIPELINE__SCHEDULED_MONITORING_INTERVAL_S": "0.3",
}


async def sim_config(http: aiohttp.ClientSession, url: str, knobs: dict[str, Any]) -> None:
    async with http.post(f"{url}/_sim/config", json=knobs) as response:
        assert response.status == 200, await response.text()


async def sim_stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/_sim/stats") as response:
        assert response.status == 200
        stats: dict[str, Any] = await response.json()
        return stats


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["events", "scheduled"])
async def test_every_final_status_reaches_the_event_hub_once(tmp_path: Path, mode: str) -> None:
    sim = ThunderheadSimProcess(
        free_port(),
        json.dumps({"failure_ratio": FAILURE_RATIO, "processing_s_per_document": 0.02}),
    )
    kafka_port = free_port()
    settings = {
        "OMS_THUNDERHEAD__BASE_URL": sim.url,
        "OMS_KAFKA__EMBEDDED_PORT": str(kafka_port),
        **FAST,
        **(SCHEDULED if mode == "scheduled" else {}),
    }
    oms = OmsProcess(tmp_path / "pgdata", free_port(), **settings)
    subscriber = StatusSubscriber(f"127.0.0.1:{kafka_port}")
    expected: dict[str, str] = {}  # document id -> the final status it must reach
    exit_code = -1
    async with aiohttp.ClientSession() as http:
        try:
            await sim.start(http)
            await oms.start(http)
            await wait_readiness(http, oms.url, 200)
            subscriber.start()  # early: librdkafka's group join takes a while

            # Rejected by Thunderhead at submission (200 with exceptions): FAILED at once.
            await sim_config(http, sim.url, {"business_failure": {"count": 1}})
            rejected = await submit(http, oms.url, document("HUB-REJECTED"))
            expected[rejected] = "FAILED"
            await wait_statuses(http, oms.url, [rejected], timeout_s=30)

            # Cancelled while the processing pool is paused: Thunderhead never has it.
            paused = await admin_post(http, oms.url, "/admin/api/pools/processing/pause")
            assert paused["paused"] is True
            cancelled = await submit(http, oms.url, document("HUB-CANCELLED", priority="urgent"))
            async with http.post(
                f"{oms.url}/v1/documents/{cancelled}/cancel", headers=SOURCE_HEADERS
            ) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "CANCELLED"
            expected[cancelled] = "CANCELLED"
            resumed = await admin_post(http, oms.url, "/admin/api/pools/processing/resume")
            assert resumed["paused"] is False

            # The bulk of the run: a mix of priorities; the references the simulator
            # fails (FAILURE_RATIO of them) end FAILED through a job's status.
            ids = await asyncio.gather(
                *(
                    submit(http, oms.url, document(f"HUB-{n}", priority=PRIORITIES[n % 3]))
                    for n in range(DOCUMENTS)
                )
            )
            for extra in range(20):  # bounded: until one will fail (almost always at once)
                if any(sim_fails(i, FAILURE_RATIO) for i in ids):
                    break
                ids.append(await submit(http, oms.url, document(f"HUB-EXTRA-{extra}")))
            for document_id in ids:
                failing = sim_fails(document_id, FAILURE_RATIO)
                expected[document_id] = "FAILED" if failing else "COMPLETED"
            assert "COMPLETED" in expected.values()

            documents = await wait_statuses(http, oms.url, expected, timeout_s=60)
            await subscriber.wait_for(expected, timeout_s=90)
            await asyncio.sleep(2.0)  # whatever else would come (duplicates, strays) comes now
            events = await subscriber.stop()
            backlog = await outbox_backlog(http, oms.url)
            stats = await sim_stats(http, sim.url)
            assert await list_documents(http, oms.url) == documents  # nothing moved since
        finally:
            await subscriber.stop()
            if oms.process is not None and oms.process.returncode is None:
                exit_code = await oms.terminate()
            await oms.close()
            await sim.close()
    assert exit_code == 0, oms.stderr.decode(errors="replace")[-3000:]

    # The API: every document reached the status it had to, nothing else exists.
    assert set(documents) == set(expected)
    assert {i: d["status"] for i, d in documents.items()} == expected
    assert Counter(expected.values())["FAILED"] >= 2  # rejected + at least one job failure

    # The Event Hub: one distinct CloudEvent per document, of its final status.
    per_document = by_subject(events)
    assert set(per_document) == set(expected), set(per_document) ^ set(expected)
    assert {i: len(e) for i, e in per_document.items()} == dict.fromkeys(expected, 1)
    assert len(distinct(events)) == len(expected)
    for document_id, (event,) in per_document.items():
        check_final_event(event, documents[document_id])
    rejected_data = json.loads(per_document[rejected][0].value or b"{}")
    assert rejected_data["messages"] or rejected_data["detail"], rejected_data

    # Everything published, nothing dead; Thunderhead had each document once, the
    # cancelled one never.
    assert backlog["unpublished"] == 0, backlog
    assert backlog["dead"] == 0, backlog
    assert stats["duplicate_submissions"] == 0, stats["duplicates"]
    assert stats["transactions"] == len(expected) - 2, stats
