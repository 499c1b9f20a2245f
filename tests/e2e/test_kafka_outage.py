"""Kafka down mid-run: OMS keeps accepting and finishing documents, and publishes every
final status once Kafka is back. The outbox, not the broker, is the durability.

The broker is a Tansu the test runs itself (OMS sees it as an external cluster). Its
storage is memory only: after the restart it holds nothing from before, so the final
events of documents finished during the outage can only come from OMS's outbox.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from oms.kafka.broker import EmbeddedBroker, ensure_topics
from tests.e2e.events import (
    STATUS_TOPIC,
    by_subject,
    check_final_event,
    consume_status,
    outbox_backlog,
    readiness,
    submit,
    wait_readiness,
    wait_statuses,
)
from tests.e2e.process import OmsProcess, free_port
from tests.support.intake import document

TOPICS = ["oms.document.requested", "oms.document.submitted", STATUS_TOPIC]
PRIORITIES = ("urgent", "normal", "bulk")


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_documents_finished_while_kafka_is_down_are_published_after_it_returns(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker("127.0.0.1", 0, tmp_path / "tansu.log")
    await broker.start()
    oms: OmsProcess | None = None
    exit_code = -1
    async with aiohttp.ClientSession() as http:
        try:
            await ensure_topics(broker.bootstrap, TOPICS, 3, 1)
            oms = OmsProcess(
                tmp_path / "pgdata",
                free_port(),
                OMS_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
                OMS_KAFKA__ENABLE_IDEMPOTENCE="false",
                OMS_KAFKA__REQUEST_TIMEOUT_S="2",
                OMS_RELAY__BACKOFF_MAX_S="1",
                OMS_RELAY__IDLE_POLL_S="0.2",
                OMS_MONITORING__POLL_INITIAL_S="0.2",
                OMS_MONITORING__POLL_MAX_S="1",
                OMS_PROCESSING__BATCH_MAX_AGE_S="0.2",
            )
            await oms.start(http)
            await wait_readiness(http, oms.url, 200)

            async def send(prefix: str, count: int) -> list[str]:
                return list(
                    await asyncio.gather(
                        *(
                            submit(http, oms.url, document(f"{prefix}-{n}", priority=p))
                            for n, p in zip(range(count), PRIORITIES * count, strict=False)
                        )
                    )
                )

            # Before: published as they finish.
            before = await send("BEFORE", 10)
            await wait_statuses(http, oms.url, before, timeout_s=30)
            events_before = await consume_status(broker.bootstrap, before)

            # Kafka goes away. Intake goes on (202), the pipeline goes on, readiness says so.
            await broker.stop(grace_s=0.5)
            # Idle, the relay notices by its own probe (every 10 s at most).
            report = await wait_readiness(http, oms.url, 503, timeout_s=30)
            assert report["checks"]["kafka"].startswith("failing"), report
            assert report["checks"]["database"] == "ok", report
            during = await send("DURING", 20)
            documents = await wait_statuses(http, oms.url, during, timeout_s=60)
            assert {documents[i]["status"] for i in during} == {"COMPLETED"}
            late = await send("LATE", 5)  # accepted with the outage still on
            status, report = await readiness(http, oms.url)
            assert status == 503, report
            assert report["checks"]["kafka"].startswith("failing"), report
            backlog = await outbox_backlog(http, oms.url)
            # At least the final events of the documents finished in the outage wait.
            assert backlog["unpublished"] >= len(during), backlog
            assert backlog["dead"] == 0, backlog  # Kafka's fault charges no row

            # Kafka comes back on the same address, empty.
            restarted_at = datetime.now(UTC)
            await broker.start()
            await wait_readiness(http, oms.url, 200, timeout_s=30)
            after = await send("AFTER", 5)
            documents = await wait_statuses(http, oms.url, [*during, *late, *after], timeout_s=60)
            events_after = await consume_status(
                broker.bootstrap, [*during, *late, *after], timeout_s=30, grace_s=2.0
            )
            for _ in range(50):  # bounded: 10 s for the relay to mark its last round
                backlog = await outbox_backlog(http, oms.url)
                if backlog["unpublished"] == 0:
                    break
                await asyncio.sleep(0.2)
            assert backlog == {"unpublished": 0, "oldest_age_s": 0.0, "dead": 0}, backlog
        finally:
            if oms is not None:
                if oms.process is not None and oms.process.returncode is None:
                    exit_code = await oms.terminate()
                await oms.close()
            await broker.stop(grace_s=1.0)
    assert exit_code == 0, oms.stderr.decode(errors="replace")[-3000:]

    # Nothing lost: every document's final event, once, and only documents' of this run.
    finished_before = by_subject(events_before)
    finished_after = by_subject(events_after)
    assert set(finished_before) == set(before)
    assert set(finished_after) == {*during, *late, *after}, set(finished_after) ^ {
        *during,
        *late,
        *after,
    }
    for document_id, found in {**finished_before, **finished_after}.items():
        assert len(found) == 1, (document_id, found)  # one distinct ce_id per document
        check_final_event(found[0], documents[document_id])
    # The documents finished during the outage: their events were written then (ce_time
    # is the outbox row's), and reached the empty broker only after its restart.
    for document_id in during:
        assert finished_after[document_id][0].time < restarted_at
