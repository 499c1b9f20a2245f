"""The sweeper on its own: its scans against the test database, feeding real mailboxes.

No pool takes from the mailboxes here, so what a pass fed is exactly what is in them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
import msgspec

from oms import config, domain, metrics
from oms.actors.mailbox import PriorityMailbox
from oms.actors.monitoring import MonitoringStage, PollJob
from oms.actors.sweeper import Sweeper
from oms.db.pool import create_pool
from oms.store import journal
from oms.thunderhead import ThunderheadClient
from tests.support.intake import document, wait_for_statuses
from tests.support.settings import pipeline_settings
from tests.support.sims import SimServer
from tests.support.stages import stages_with, store_unannounced


class Fed(msgspec.Struct):
    """What the sweeper feeds: processing's mailbox and the monitoring stage."""

    processing: PriorityMailbox[domain.DocumentRequested]
    monitoring: MonitoringStage


@asynccontextmanager
async def sweeper_on(settings: config.Settings) -> AsyncIterator[tuple[Sweeper, Fed]]:
    db = await create_pool(settings.database.dsn, settings.database)
    try:
        async with ThunderheadClient(settings.thunderhead) as thunderhead:
            processing = PriorityMailbox[domain.DocumentRequested](
                "document.requested", 100, key=lambda event: event.document_id
            )
            polls = PriorityMailbox[PollJob]("monitoring.poll", 100, key=lambda job: job.job_id)
            monitoring = MonitoringStage(
                db,
                thunderhead,
                settings.monitoring,
                journal.Topics.from_settings(settings.events),
                polls,
                push=settings.pipeline.mode == "events",
            )
            yield Sweeper(db, settings, processing, monitoring), Fed(processing, monitoring)
    finally:
        await db.close()


def recoveries(kind: str) -> float:
    return float(metrics.SWEEPER_RECOVERIES.labels(kind)._value.get())


async def test_one_pass_re_feeds_a_document_left_received(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    (stuck,) = await store_unannounced(database_dsn, [document("STUCK-1")])
    settings = pipeline_settings(
        database_dsn, refdata_server, thunderhead_server, sweeper={"received_after_s": 0}
    )
    before = recoveries("received_stale")
    async with sweeper_on(settings) as (sweeper, fed):
        await sweeper.sweep()
        assert len(fed.processing) == 1
        assert (await fed.processing.get()).document_id == stuck
        await sweeper.sweep()  # fed a moment ago: a slow stage is not fed it twice
        assert len(fed.processing) == 0
    assert recoveries("received_stale") == before + 1
    notes = await db.fetch(
        "SELECT actor, to_status, detail FROM document_timeline WHERE document_id = $1"
        " AND actor = 'sweeper'",
        stuck,
    )
    assert [(n["actor"], n["to_status"], json.loads(n["detail"])) for n in notes] == [
        ("sweeper", "RECEIVED", {"event": "recovered", "reason": "received_stale"})
    ]


async def test_scheduled_mode_feeds_due_documents_and_due_jobs(
    database_dsn: str,
    db: asyncpg.Connection,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    # A job Thunderhead accepted and never finishes, and a document no stage has seen.
    await thunderhead_server.post("/_sim/config", {"processing_s_per_document": 3600})
    async with stages_with(database_dsn, refdata_server, thunderhead_server) as stages:
        stages.pools["monitoring"].pause()
        submitted = await stages.submit_all([document("JOB-1")])
        await wait_for_statuses(db, submitted, {"SUBMITTED"})
    job_id = await db.fetchval(
        "SELECT thunderhead_job_id FROM documents WHERE id = $1", submitted[0]
    )
    (received,) = await store_unannounced(database_dsn, [document("NEW-1")])
    settings = pipeline_settings(
        database_dsn,
        refdata_server,
        thunderhead_server,
        pipeline={
            "mode": "scheduled",
            "scheduled_processing_interval_s": 0.05,
            "scheduled_monitoring_interval_s": 0.05,
        },
    )
    async with sweeper_on(settings) as (sweeper, fed), anyio.create_task_group() as tg:
        await tg.start(sweeper.run)
        with anyio.fail_after(5):
            # No threshold in scheduled mode: a document stored a moment ago is due.
            assert (await fed.processing.get()).document_id == received
            assert (await fed.monitoring.mailbox.get()).job_id == job_id
        assert fed.monitoring.is_watching(job_id)
        tg.cancel_scope.cancel()
    # The scans are the pipeline here, not a recovery: nothing is noted on a timeline.
    assert await db.fetchval("SELECT count(*) FROM document_timeline WHERE actor = 'sweeper'") == 0
