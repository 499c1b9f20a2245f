"""Monitoring, the sweeper and the scheduled mode, against the real simulator over HTTP.

The stages run on their own (``tests.support.stages``): nothing here needs OMS's
HTTP, relay or Kafka.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg

from oms import domain, metrics
from oms.actors.monitoring import PollJob
from oms.actors.schedule import DueSchedule
from tests.support.intake import document, wait_for_statuses
from tests.support.sims import SimServer
from tests.support.stages import stages_with, store_unannounced

FAST_POLLS = {"poll_initial_s": 0.1, "poll_growth": 1.5, "poll_max_s": 0.5}
FINAL = {"COMPLETED", "FAILED"}


async def test_documents_complete_with_their_outputs_and_events(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"processing_s_per_document": 0.02})
    async with stages_with(
        database_dsn, refdata_server, thunderhead_server, monitoring=FAST_POLLS
    ) as stages:
        ids = await stages.submit_all([document(f"C-{n}") for n in range(25)])
        rows = await wait_for_statuses(db, ids, FINAL)
    assert {r["status"] for r in rows.values()} == {"COMPLETED"}
    result = json.loads(rows[ids[0]]["result"])
    assert result["outputs"][0]["part_location"]
    assert result["job_id"] == rows[ids[0]]["thunderhead_job_id"]
    events = await db.fetch(
        "SELECT topic, message_key, payload FROM outbox WHERE event_type = 'oms.document.completed'"
    )
    assert len(events) == 25
    assert {e["topic"] for e in events} == {"oms.document.status"}
    assert {e["message_key"] for e in events} == {str(i) for i in ids}
    payload = json.loads(events[0]["payload"])
    assert payload["status"] == "COMPLETED"
    assert payload["outputs"]
    timeline = await db.fetch(
        "SELECT actor, to_status FROM document_timeline WHERE document_id = $1 ORDER BY id", ids[0]
    )
    assert [(t["actor"], t["to_status"]) for t in timeline][-1] == ("monitoring", "COMPLETED")
    # One job polled per batch, not one poll per document.
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["calls"]["jobStatus"] < 25 * 2


async def test_failed_generation_keeps_thunderheads_messages(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"failure_ratio": 1.0, "processing_s_per_document": 0.02}
    )
    async with stages_with(
        database_dsn, refdata_server, thunderhead_server, monitoring=FAST_POLLS
    ) as stages:
        ids = await stages.submit_all([document("G-1"), document("G-2")])
        rows = await wait_for_statuses(db, ids, FINAL)
    for row in rows.values():
        assert row["status"] == "FAILED"
        error = json.loads(row["last_error"])
        assert error["reason"] == "generation_failed"
        assert error["messages"]
    failed = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'oms.document.failed'"
        " AND topic = 'oms.document.status'"
    )
    assert failed == 2


async def test_a_job_that_never_finishes_fails_after_the_deadline(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"processing_s_per_document": 3600})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        monitoring={**FAST_POLLS, "job_deadline_s": 1.0},
    ) as stages:
        ids = await stages.submit_all([document("D-1")])
        rows = await wait_for_statuses(db, ids, FINAL)
    assert rows[ids[0]]["status"] == "FAILED"
    assert json.loads(rows[ids[0]]["last_error"])["reason"] == "job_deadline_exceeded"


async def test_the_sweeper_recovers_a_document_whose_lease_expired(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # A process died holding the lease: stored PROCESSING, lease long expired.
    ids = await store_unannounced(database_dsn, [document("L-1")])
    await db.execute(
        """UPDATE documents SET status = 'PROCESSING', lease_owner = 'dead-host:1:abc/x',
               lease_expires_at = now() - interval '1 minute' WHERE id = $1""",
        ids[0],
    )
    async with stages_with(database_dsn, refdata_server, thunderhead_server, monitoring=FAST_POLLS):
        rows = await wait_for_statuses(db, ids, FINAL)
    assert rows[ids[0]]["status"] == "COMPLETED"
    details = [
        json.loads(r["detail"])
        for r in await db.fetch(
            "SELECT detail FROM document_timeline WHERE document_id = $1 AND detail IS NOT NULL",
            ids[0],
        )
    ]
    assert {"event": "lease_expired_recovered", "previous_owner": "dead-host:1:abc/x"} in details


async def test_the_sweeper_re_feeds_documents_no_event_carried(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # Stored, then OMS stopped before any stage took them: the in-memory events are gone.
    ids = await store_unannounced(database_dsn, [document(f"S-{n}") for n in range(5)])
    async with stages_with(database_dsn, refdata_server, thunderhead_server, monitoring=FAST_POLLS):
        rows = await wait_for_statuses(db, ids, FINAL)
    assert {r["status"] for r in rows.values()} == {"COMPLETED"}


async def test_scheduled_mode_runs_the_pipeline_from_database_scans(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post("/_sim/config", {"processing_s_per_document": 0.02})
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        monitoring=FAST_POLLS,
        pipeline={
            "mode": "scheduled",
            "scheduled_processing_interval_s": 0.2,
            "scheduled_monitoring_interval_s": 0.2,
        },
    ) as stages:
        ids = await stages.submit_all([document(f"SCH-{n}") for n in range(12)])
        rows = await wait_for_statuses(db, ids, FINAL)
    assert {r["status"] for r in rows.values()} == {"COMPLETED"}
    statuses = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'oms.document.completed'"
    )
    assert statuses == 12
    stats = await thunderhead_server.get("/_sim/stats")
    assert stats["duplicate_submissions"] == 0


def test_the_poll_schedule_holds_jobs_not_documents() -> None:
    schedule = DueSchedule[PollJob](
        "test",
        10_000,
        key=lambda job: job.job_id,
        deliver=lambda job: True,
        size=metrics.POLL_SCHEDULE_SIZE,
    )
    now = datetime.now(UTC)
    jobs = [PollJob(uuid.uuid4(), f"J-{n}", now, 0, domain.Priority.NORMAL) for n in range(1_000)]
    for _ in range(100):  # 100 documents per job: 100k documents in flight
        for job in jobs:
            schedule.add(job, 5.0)
    assert len(schedule) == 1_000
    schedule.add(jobs[0], 0.0)  # an earlier due time wins
    assert schedule.next_due_in() is not None
    assert schedule.next_due_in() <= 0  # type: ignore[operator]
    assert schedule.pop().job_id == "J-0"
    assert len(schedule) == 999


async def test_a_job_whose_status_never_answers_fails_after_the_deadline(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    await thunderhead_server.post(
        "/_sim/config", {"inject": [{"status": 500, "count": 10_000, "endpoint": "jobStatus"}]}
    )
    async with stages_with(
        database_dsn,
        refdata_server,
        thunderhead_server,
        monitoring={**FAST_POLLS, "job_deadline_s": 1.0},
        thunderhead_settings={"wait_500_s": 0.1},
    ) as stages:
        ids = await stages.submit_all([document("E-1")])
        rows = await wait_for_statuses(db, ids, FINAL)
    assert rows[ids[0]]["status"] == "FAILED"
    assert json.loads(rows[ids[0]]["last_error"])["reason"] == "job_deadline_exceeded"
