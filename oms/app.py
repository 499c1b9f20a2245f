"""Wiring and lifecycle: what starts, in which order, and how it stops.

Start-up order: database (embedded if no DSN) → pool → migrations → Reference
Data (in-process simulator if no URL) → intake writer → HTTP. ``task_status``
is signalled only once HTTP listens. Shutdown runs the other way: stop
listening and drain handlers, drain the writer, close Reference Data, close the
pool, stop the embedded database, each with a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from oms import bus, config, domain
from oms.db import embedded, migrate
from oms.db.pool import CONNECTION_ERRORS, create_pool
from oms.http import app as http_app
from oms.http import auth, health, intake
from oms.intake.service import IntakeService
from oms.intake.writer import DocumentWriter
from oms.refdata import RefDataClient
from oms.sim import refdata as refdata_sim
from oms.store import api_keys, documents

logger = logging.getLogger(__name__)

# Local-only keys for the embedded default; never active with a real database.
DEMO_SOURCE_SYSTEM = "demo"
DEMO_SOURCE_KEY = "oms_demo_local-demo-source-key"
DEMO_ADMIN_KEY = "oms_demoadmin_local-demo-admin-key"
_CLOSE_DEADLINE_S = 10.0


class Started(msgspec.Struct, frozen=True):
    """What a running OMS answers on, for the banner and for tests."""

    base_url: str
    dsn: str
    refdata_url: str
    demo_keys: bool


async def run(
    settings: config.Settings,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[Started] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run OMS until ``stop`` is set, then shut down in stages."""
    async with AsyncExitStack() as stack:
        dsn = settings.database.dsn or await _start_embedded_database(settings, stack)
        pool = await _open_pool(dsn, settings, stack)
        await _prepare_database(pool, demo_keys=settings.embedded)
        refdata_url = settings.refdata.base_url or await _start_refdata_simulator(stack)
        refdata = await stack.enter_async_context(
            RefDataClient(msgspec.structs.replace(settings.refdata, base_url=refdata_url))
        )
        requested = bus.MemoryQueue[domain.DocumentRequested](
            "document.requested", settings.intake.requested_queue_capacity
        )
        topics = documents.Topics(
            requested=settings.events.topic_requested, status=settings.events.topic_status
        )

        def hand_to_processing(stored: Sequence[documents.NewDocument]) -> None:
            for item in stored:
                requested.offer(documents.requested_event(item))

        writer = DocumentWriter(pool, topics, settings.intake, hand_to_processing)
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            housekeeping = anyio.CancelScope()
            tg.start_soon(_purge_idempotency_keys, pool, settings.intake, housekeeping)

            app = http_app.make_app(settings.intake.max_batch_body_bytes + 4096)
            app[intake.SETTINGS] = settings
            app[intake.POOL] = pool
            app[intake.INTAKE] = IntakeService(pool, writer, refdata, settings.intake, topics)
            app[http_app.AUTHENTICATOR] = auth.Authenticator(
                pool, settings.intake.api_key_cache_ttl_s
            )
            app[health.READINESS] = lambda: _readiness(pool)
            runner = web.AppRunner(
                app,
                handle_signals=False,
                access_log=None,
                shutdown_timeout=settings.server.shutdown_timeout_s,
            )
            await runner.setup()
            site = web.TCPSite(runner, settings.server.host, settings.server.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            started = Started(f"http://{host}:{port}", dsn, refdata_url, settings.embedded)
            logger.info("OMS listening", extra={"url": started.base_url})
            task_status.started(started)

            await stop.wait()
            logger.info("shutting down: draining in-flight requests")
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
                writer.close()
                housekeeping.cancel()
            requested.close()
    logger.info("OMS stopped")


async def _start_embedded_database(settings: config.Settings, stack: AsyncExitStack) -> str:
    server = embedded.EmbeddedPostgres(
        Path(settings.database.data_dir), settings.database.embedded_port
    )
    dsn = await anyio.to_thread.run_sync(server.start)

    async def stop_server() -> None:
        with anyio.move_on_after(60, shield=True):
            await anyio.to_thread.run_sync(server.stop)

    stack.push_async_callback(stop_server)
    return dsn


async def _open_pool(dsn: str, settings: config.Settings, stack: AsyncExitStack) -> asyncpg.Pool:
    pool = await create_pool(dsn, settings.database)

    async def close_pool() -> None:
        with anyio.move_on_after(_CLOSE_DEADLINE_S, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            logger.warning("database pool did not close in time; terminating connections")
            pool.terminate()

    stack.push_async_callback(close_pool)
    return pool


async def _prepare_database(pool: asyncpg.Pool, *, demo_keys: bool) -> None:
    async with pool.acquire() as conn:
        await migrate.migrate(conn)
        if demo_keys:
            await api_keys.upsert(conn, DEMO_SOURCE_KEY, DEMO_SOURCE_SYSTEM, "source", is_demo=True)
            await api_keys.upsert(conn, DEMO_ADMIN_KEY, "admin", "admin", is_demo=True)
        elif await api_keys.deactivate_demo_keys(conn):
            logger.warning("demo API keys found in a real database were deactivated")


async def _start_refdata_simulator(stack: AsyncExitStack) -> str:
    runner = web.AppRunner(refdata_sim.make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _readiness(pool: asyncpg.Pool) -> health.ReadinessReport:
    checks: dict[str, str] = {}
    with anyio.move_on_after(2.0) as scope:
        try:
            async with pool.acquire() as conn:
                version = await migrate.applied_version(conn)
            checks["database"] = "ok"
            latest = migrate.latest_version()
            checks["migrations"] = (
                "ok" if version == latest else f"schema at {version}, expected {latest}"
            )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
    if scope.cancelled_caught:
        checks["database"] = "timed out"
    ready = all(v == "ok" for v in checks.values()) and "migrations" in checks
    return health.ReadinessReport(ready, checks)


async def _purge_idempotency_keys(
    pool: asyncpg.Pool, settings: config.IntakeSettings, scope: anyio.CancelScope
) -> None:
    """Expired Idempotency-Key records are deleted so the table stays bounded."""
    with scope:
        while True:
            await anyio.sleep(settings.idempotency_purge_interval_s)
            try:
                async with pool.acquire() as conn:
                    removed = await documents.purge_expired_idempotency_keys(
                        conn, datetime.now(UTC)
                    )
                if removed:
                    logger.info("expired idempotency keys purged", extra={"count": removed})
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                logger.warning("idempotency key purge failed: %s", exc)
