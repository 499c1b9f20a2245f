"""OMS's stages in a test, without booting OMS: no HTTP, no outbox relay, no Kafka.

``oms.app.pipeline`` wires intake's writer, processing, the submitters,
monitoring, the sweeper and the reconciler exactly as ``oms.app.run`` does;
here they run under ``oms.lifecycle.run_all`` on the test's database, against
the real Reference Data and Thunderhead simulators through the real clients.
Documents go in through the real ``IntakeService`` (what ``POST /v1/documents``
calls) or, for work "no event carried", straight through the store.

Booting a whole OMS costs HTTP, Kafka topic checks and the relay; a test about
what the stages do to documents needs none of them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import msgspec

from oms import app, config, domain, lifecycle
from oms.actors.pool import ActorPool
from oms.db.pool import create_pool
from oms.intake.service import IntakeService
from oms.refdata import RefDataClient
from oms.store import documents, journal
from oms.thunderhead import ThunderheadClient
from tests.support.settings import pipeline_settings
from tests.support.sims import SimServer

SOURCE_SYSTEM = "acme-policy"  # the source system of the tests' SOURCE_KEY


class RunningStages:
    """The stages at work: intake's use case in front, their pools, the database pool."""

    def __init__(
        self, intake: IntakeService, pools: dict[str, ActorPool[Any]], db: asyncpg.Pool
    ) -> None:
        self.intake = intake
        self.pools = pools
        self.db = db

    async def submit(self, body: dict[str, Any]) -> uuid.UUID:
        """Intake as ``POST /v1/documents`` runs it; the accepted document's id."""
        raw = msgspec.json.encode(body)
        request = msgspec.json.decode(raw, type=domain.DocumentRequest)
        accepted = await self.intake.submit(SOURCE_SYSTEM, request, raw, uuid.uuid4().hex)
        assert isinstance(accepted, domain.Accepted), accepted
        return accepted.id

    async def submit_all(self, bodies: list[dict[str, Any]]) -> list[uuid.UUID]:
        """Submit concurrently, as many clients would; the ids in completion order."""
        ids: list[uuid.UUID] = []

        async def one(body: dict[str, Any]) -> None:
            ids.append(await self.submit(body))

        async with anyio.create_task_group() as tg:
            for body in bodies:
                tg.start_soon(one, body)
        return ids


@asynccontextmanager
async def running_stages(settings: config.Settings) -> AsyncIterator[RunningStages]:
    """Run ``oms.app.pipeline`` until the block ends, then drain it as OMS stops."""
    db = await create_pool(settings.database.dsn, settings.database)
    try:
        async with (
            RefDataClient(settings.refdata) as refdata,
            ThunderheadClient(settings.thunderhead) as thunderhead,
        ):
            built = app.pipeline(settings, db, refdata, thunderhead)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                await tg.start(lifecycle.run_all, built.components, stop, lambda: None)
                try:
                    yield RunningStages(built.intake, built.pools, db)
                finally:
                    stop.set()
    finally:
        with anyio.move_on_after(10, shield=True) as closing:
            await db.close()
        if closing.cancelled_caught:
            db.terminate()


@asynccontextmanager
async def stages_with(
    database_dsn: str,
    refdata_sim: SimServer,
    thunderhead_sim: SimServer,
    processing: dict[str, Any] | None = None,
    thunderhead_settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[RunningStages]:
    """``running_stages`` with ``pipeline_settings``: the stages-only twin of ``oms_with``."""
    settings = pipeline_settings(
        database_dsn, refdata_sim, thunderhead_sim, processing, thunderhead_settings, **sections
    )
    async with running_stages(settings) as stages:
        yield stages


async def store_unannounced(database_dsn: str, bodies: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Store documents RECEIVED as intake does, but hand no event to any stage.

    What a restart leaves behind: the rows are there, the in-memory events are gone.
    """
    now = datetime.now(UTC)
    items = [
        documents.NewDocument(
            id=domain.uuid7(),
            source_system=SOURCE_SYSTEM,
            request=msgspec.json.decode(msgspec.json.encode(body), type=domain.DocumentRequest),
            trace_id=uuid.uuid4().hex,
            created_at=now,
        )
        for body in bodies
    ]
    topics = journal.Topics.from_settings(config.EventsSettings())
    db = await create_pool(database_dsn, config.DatabaseSettings(pool_min_size=1, pool_max_size=1))
    try:
        async with db.acquire() as conn:
            outcomes = await documents.insert_many(conn, items, topics)
    finally:
        await db.close()
    assert all(isinstance(o, documents.Inserted) for o in outcomes), outcomes
    return [item.id for item in items]
