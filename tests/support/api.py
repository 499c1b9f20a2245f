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
from aiohttp import web

from oms import bus, config, domain
from oms.db.pool import create_pool
from oms.http import app as http_app
from oms.http import auth, health
from oms.intake.service import IntakeService
from oms.intake.writer import DocumentWriter
from oms.refdata import RefDataClient
from oms.store import documents
from tests.support.keys import seed_keys


class ApiServer:
    """The API served on a loopback port, with the runner options ``app.run`` uses.

    Everything runs in one task of its own, as in ``RunningOms``: the Reference
    Data client and the writer hold task groups, which must be left in the task
    that entered them (a fixture's setup and teardown run in different tasks).
    """

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.requested = bus.PriorityMailbox[domain.DocumentRequested](
            "document.requested",
            settings.processing.mailbox_capacity,
            key=lambda event: event.document_id,
        )
        self.relay_pokes = 0
        self.url = ""
        self._stop = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(ready))
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # re-raise the start-up error
        self.url = ready.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=60)
        self._task = None

    async def _serve(self, ready: asyncio.Future[str]) -> None:
        """Build what ``app.run`` builds for HTTP, serve until ``stop``, then close in
        ``app.run``'s order: HTTP, the writer (queued requests are still written),
        the Reference Data client, the pool."""
        settings = self.settings
        pool = await create_pool(settings.database.dsn, settings.database)
        try:
            async with (
                RefDataClient(settings.refdata) as refdata,
                anyio.create_task_group() as tg,
            ):
                topics = documents.Topics(
                    requested=settings.events.topic_requested,
                    submitted=settings.events.topic_submitted,
                    status=settings.events.topic_status,
                )
                writer = DocumentWriter(pool, topics, settings.intake)
                await tg.start(writer.run)
                events_mode = settings.pipeline.mode == "events"
                intake = IntakeService(
                    pool,
                    writer,
                    refdata,
                    settings.intake,
                    topics,
                    self.requested if events_mode else None,
                )
                app = http_app.make_api(
                    settings,
                    pool,
                    intake,
                    auth.Authenticator(pool, settings.intake.api_key_cache_ttl_s),
                    _no_readiness,
                    pools={},  # no actor pools at this level
                    poke_relay=self._poke_relay,
                )
                runner = web.AppRunner(
                    app,
                    handle_signals=False,
                    access_log=None,
                    shutdown_timeout=settings.server.shutdown_timeout_s,
                )
                await runner.setup()
                try:
                    site = web.TCPSite(runner, "127.0.0.1", 0)
                    await site.start()
                    host, port = runner.addresses[0][:2]
                    ready.set_result(f"http://{host}:{port}")
                    await self._stop.wait()
                finally:
                    await runner.cleanup()
                    writer.close()
        finally:
            await pool.close()

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
