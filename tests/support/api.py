"""OMS's HTTP API over its real intake path, without the rest of OMS.

What ``app.run`` builds for HTTP — the app from ``http_app.make_api``, a real
``IntakeService`` and ``DocumentWriter``, an asyncpg pool on the test database,
the Reference Data client, real API keys — and nothing else: no actors, no
Kafka, no Thunderhead. In events mode intake hands each new document to the
processing mailbox; here nobody drains it, so a test can look at what was handed
over (``requested``), as the paused processing pool of a whole OMS leaves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from oms import config, domain, lifecycle, metrics
from oms.actors import handoff
from oms.actors.mailbox import PriorityMailbox
from oms.actors.schedule import DueSchedule
from oms.db.pool import create_pool
from oms.http import app as http_app
from oms.http import auth, health
from oms.http.server import HttpServer
from oms.intake.service import IntakeService
from oms.intake.writer import DocumentWriter
from oms.lifecycle import Declared, Policy
from oms.refdata import RefDataClient
from oms.store import journal
from tests.support.keys import seed_keys
from tests.support.own_task import OwnTask


class ApiServer(OwnTask[str]):
    """The API served on a loopback port, with the runner options ``app.run`` uses.

    Everything runs in one task of its own (``OwnTask``), as in ``RunningOms``.
    """

    def __init__(self, settings: config.Settings) -> None:
        super().__init__()
        self.settings = settings
        self.requested = PriorityMailbox[domain.DocumentRequested](
            "document.requested",
            settings.processing.mailbox_capacity,
            key=lambda event: event.document_id,
        )
        self.relay_pokes = 0
        self.url = ""

    async def start(self) -> None:
        self.url = await self._start(self._serve)

    async def _serve(self, ready: asyncio.Future[str]) -> None:
        """Build what ``app.run`` builds for HTTP and run it with ``app.run``'s
        lifecycle until ``stop``: HTTP drains first, then the writer (queued
        requests are still written); then the Reference Data client and the pool."""
        settings = self.settings
        db = await create_pool(settings.database.dsn, settings.database)
        try:
            async with RefDataClient(settings.refdata) as refdata:
                topics = journal.Topics.from_settings(settings.events)
                writer = DocumentWriter(db, topics, settings.intake)
                intake = IntakeService(
                    db, writer, refdata, settings.intake, topics, self._handoff(settings)
                )
                app = http_app.make_api(
                    settings,
                    db,
                    intake,
                    auth.Authenticator(db, settings.intake.api_key_cache_ttl_s),
                    _no_readiness,
                    pools={},  # no actor pools at this level
                    poke_relay=self._poke_relay,
                )
                http = HttpServer(app, settings.server)
                components = [
                    Declared(writer, Policy.STOP, settings.server.shutdown_timeout_s),
                    Declared(http, Policy.STOP, settings.server.shutdown_timeout_s + 1),
                ]
                async with anyio.create_task_group() as tg:
                    url = await tg.start(
                        lifecycle.run_all, components, self._stop, lambda: http.url
                    )
                    ready.set_result(url)
        finally:
            await db.close()

    def _handoff(self, settings: config.Settings) -> handoff.RequestedHandoff:
        """Events mode: into the processing mailbox (nobody drains it here)."""
        if settings.pipeline.mode != "events":
            return handoff.Nothing()
        later = DueSchedule[domain.DocumentRequested](
            "processing",
            settings.processing.retry_schedule_max,
            key=lambda event: event.document_id,
            deliver=self.requested.offer,
            size=metrics.RETRY_SCHEDULE_SIZE.labels("processing"),
        )
        return handoff.ToProcessing(self.requested, later)

    def _poke_relay(self) -> None:
        self.relay_pokes += 1


async def _no_readiness() -> health.ReadinessReport:
    """Readiness weighs Kafka and Thunderhead too: only a whole OMS can answer it."""
    return health.ReadinessReport(False, {"api-only": "readiness needs a whole OMS"})


@asynccontextmanager
async def serving(settings: config.Settings) -> AsyncIterator[ApiServer]:
    """The API with the test's own settings, on the test database, with the test keys."""
    assert settings.database.dsn
    await seed_keys(settings.database.dsn)
    server = ApiServer(settings)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
