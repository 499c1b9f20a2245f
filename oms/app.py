"""Wiring and lifecycle: what starts, in which order, and how it stops.

Start-up order: database (embedded if no DSN) → pool → migrations → Reference
Data and Thunderhead clients (in-process simulators if no URL) → intake writer,
batcher, processing pool → HTTP. ``task_status`` is signalled only once HTTP
listens. Shutdown runs the other way: stop listening and drain handlers, drain
the writer, let actors finish the message in hand, send open batches, then close
the clients, the pool and the embedded database, each with a deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from oms import bus, config, domain, exceptions
from oms.actors.delay import DelayedRequeue
from oms.actors.monitoring import MonitoringStage, PollJob
from oms.actors.pool import ActorPool, PoolSettings
from oms.actors.processing import ProcessingStage
from oms.actors.reconciler import Reconciler
from oms.actors.relay import OutboxRelay
from oms.actors.sweeper import Sweeper
from oms.db import embedded, migrate
from oms.db.pool import CONNECTION_ERRORS, create_pool
from oms.http import app as http_app
from oms.http import auth, health
from oms.intake.service import IntakeService
from oms.intake.writer import DocumentWriter
from oms.kafka.broker import EmbeddedBroker, ensure_topics
from oms.refdata import RefDataClient
from oms.sim import refdata as refdata_sim
from oms.sim import thunderhead as thunderhead_sim
from oms.store import api_keys, documents
from oms.thunderhead import ThunderheadClient

logger = logging.getLogger(__name__)

# Local-only keys for the embedded default; never active with a real database.
DEMO_SOURCE_SYSTEM = "demo"
DEMO_SOURCE_KEY = "oms_demo_local-demo-source-key"
DEMO_ADMIN_KEY = "oms_demoadmin_local-demo-admin-key"
_CLOSE_DEADLINE_S = 10.0


class Started(msgspec.Struct, frozen=True):
    """What a running OMS answers on, and its pools (to pause and resume them)."""

    base_url: str
    dsn: str
    refdata_url: str
    thunderhead_url: str
    kafka_bootstrap: str
    demo_keys: bool
    pools: dict[str, ActorPool[Any]]


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
        refdata_url = settings.refdata.base_url or await _start_simulator(
            stack, refdata_sim.make_app()
        )
        refdata = await stack.enter_async_context(
            RefDataClient(msgspec.structs.replace(settings.refdata, base_url=refdata_url))
        )
        thunderhead_url = settings.thunderhead.base_url or await _start_simulator(
            stack, thunderhead_sim.make_app(state_file=_simulator_state_file(settings))
        )
        thunderhead = await stack.enter_async_context(
            ThunderheadClient(
                msgspec.structs.replace(settings.thunderhead, base_url=thunderhead_url)
            )
        )
        bootstrap = settings.kafka.bootstrap_servers or await _start_embedded_broker(
            settings, stack
        )
        kafka = msgspec.structs.replace(settings.kafka, bootstrap_servers=bootstrap)
        await _create_topics(settings, kafka)
        relay = OutboxRelay(
            pool,
            settings.relay,
            kafka,
            settings.events,
            embedded=not settings.kafka.bootstrap_servers,
        )
        topics = documents.Topics(
            requested=settings.events.topic_requested,
            submitted=settings.events.topic_submitted,
            status=settings.events.topic_status,
        )
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        events_mode = settings.pipeline.mode == "events"
        requested = bus.PriorityMailbox[domain.DocumentRequested](
            "document.requested",
            settings.processing.mailbox_capacity,
            key=lambda event: event.document_id,
        )
        polls = bus.PriorityMailbox[PollJob](
            "monitoring.poll", settings.monitoring.mailbox_capacity, key=lambda job: job.job_id
        )
        monitoring = MonitoringStage(
            pool, thunderhead, settings.monitoring, topics, polls, push=events_mode
        )
        retries = DelayedRequeue("processing", requested, settings.processing.retry_schedule_max)
        reconciler = Reconciler(
            pool,
            thunderhead,
            settings.processing,
            topics,
            owner,
            on_submitted=monitoring.register if events_mode else _ignore,
            send_again=retries.schedule if events_mode else _ignore,
        )
        processing = ProcessingStage(
            pool,
            refdata,
            thunderhead,
            settings.processing,
            topics,
            owner,
            # Scheduled mode pushes nothing: the scans find submitted jobs and due retries.
            on_submitted=monitoring.register if events_mode else _ignore,
            retry_later=retries.schedule if events_mode else _ignore,
            reconcile_soon=reconciler.poke,
        )
        processing_pool = ActorPool(
            "processing",
            requested,
            processing.handle,
            _pool_settings(settings.processing.actors, settings.processing),
            message_id=lambda event: event.document_id,
        )
        monitoring_pool = ActorPool(
            "monitoring",
            polls,
            monitoring.poll,
            _pool_settings(settings.monitoring.actors, settings.processing),
            message_id=lambda job: job.job_id,
        )
        if settings.processing.start_paused:
            processing_pool.pause()
        sweeper = Sweeper(pool, settings, requested, monitoring)
        writer = DocumentWriter(pool, topics, settings.intake)
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            batcher_scope = anyio.CancelScope()
            await tg.start(_run_in_scope, batcher_scope, processing.batcher.run)
            # Cancelled at shutdown, after the stages drained: these hold no work of their own.
            background = [anyio.CancelScope() for _ in range(5)]
            tg.start_soon(_in_scope, background[0], _purge_idempotency_keys, pool, settings.intake)
            tg.start_soon(_in_scope, background[1], retries.run)
            tg.start_soon(_in_scope, background[2], monitoring.run_schedule)
            tg.start_soon(_in_scope, background[3], sweeper.run)
            tg.start_soon(_in_scope, background[4], reconciler.run)
            relay_scope = anyio.CancelScope()
            if settings.relay.enabled:
                await tg.start(_run_in_scope, relay_scope, relay.run)
            else:
                logger.warning("outbox relay disabled: events wait in the outbox")
            # Cancel actors still busy at the drain deadline.
            actor_scopes = [anyio.CancelScope(), anyio.CancelScope()]
            await tg.start(_run_in_scope, actor_scopes[0], processing_pool.run)
            await tg.start(_run_in_scope, actor_scopes[1], monitoring_pool.run)

            intake_service = IntakeService(
                pool, writer, refdata, settings.intake, topics, requested if events_mode else None
            )
            authenticator = auth.Authenticator(pool, settings.intake.api_key_cache_ttl_s)
            pools = {"processing": processing_pool, "monitoring": monitoring_pool}
            app = http_app.make_api(
                settings,
                pool,
                intake_service,
                authenticator,
                lambda: _readiness(pool, thunderhead, relay),
                pools,
                relay.poke,
            )
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
            started = Started(
                f"http://{host}:{port}",
                dsn,
                refdata_url,
                thunderhead_url,
                bootstrap,
                settings.embedded,
                pools,
            )
            logger.info("OMS listening", extra={"url": started.base_url})
            task_status.started(started)

            await stop.wait()
            logger.info("shutting down: draining in-flight requests")
            with anyio.CancelScope(shield=True):
                await runner.cleanup()  # stop listening, finish requests in hand
                writer.close()
                for scope in background[1:]:
                    scope.cancel()  # no new work from retries, schedule or sweeps
                await processing_pool.stop()  # actors finish their message in hand
                actor_scopes[0].cancel()
                with anyio.move_on_after(settings.processing.drain_deadline_s):
                    await processing.batcher.close()  # open batches are sent, then settled
                    await processing.batcher.finished.wait()
                # Past the deadline a send is cut off: its documents keep their lease
                # and batch row, and are reconciled once the lease expires.
                batcher_scope.cancel()
                await monitoring_pool.stop()
                actor_scopes[1].cancel()
                background[0].cancel()
                # Last: publish what the stages just wrote, within the drain deadline.
                relay.poke()
                await relay.stop(timeout_s=settings.processing.drain_deadline_s)
                relay_scope.cancel()
    logger.info("OMS stopped")


def _ignore(*_: object) -> None:
    """The scheduled mode's stand-in for a push between stages."""


def _pool_settings(size: int, settings: config.ProcessingSettings) -> PoolSettings:
    return PoolSettings(
        size=size,
        restart_backoff_s=settings.restart_backoff_s,
        max_redeliveries=settings.max_redeliveries,
        drain_deadline_s=settings.drain_deadline_s,
    )


async def _in_scope(
    scope: anyio.CancelScope, func: Callable[..., Awaitable[None]], *args: object
) -> None:
    with scope:
        await func(*args)


async def _run_in_scope(
    scope: anyio.CancelScope,
    func: Callable[..., Awaitable[None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await func(task_status=task_status)


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


def _simulator_state_file(settings: config.Settings) -> Path | None:
    """On the embedded default the simulated Thunderhead keeps its jobs beside the
    database, so both survive a restart together (as a real tenant would)."""
    return _beside_database(settings, "thunderhead-sim.jsonl") if settings.embedded else None


def _beside_database(settings: config.Settings, name: str) -> Path:
    """A file of the embedded default's, next to its data directory (``var/``)."""
    return Path(settings.database.data_dir).resolve().parent / name


async def _start_embedded_broker(settings: config.Settings, stack: AsyncExitStack) -> str:
    log_path = _beside_database(settings, "tansu.log")
    broker = EmbeddedBroker(settings.kafka.embedded_host, settings.kafka.embedded_port, log_path)
    bootstrap = await broker.start()

    async def stop_broker() -> None:
        with anyio.CancelScope(shield=True):
            await broker.stop(grace_s=5.0)

    stack.push_async_callback(stop_broker)
    return bootstrap


async def _create_topics(settings: config.Settings, kafka: config.KafkaSettings) -> None:
    """Best effort at start: the relay creates them again before it publishes."""
    events = settings.events
    try:
        with anyio.fail_after(kafka.request_timeout_s + 1):
            await ensure_topics(
                kafka.bootstrap_servers,
                [events.topic_requested, events.topic_submitted, events.topic_status],
                kafka.topic_partitions,
                kafka.topic_replication_factor,
                timeout_s=kafka.request_timeout_s,
            )
    except (exceptions.KafkaUnavailable, TimeoutError) as exc:
        logger.warning("Kafka topics not checked at start: %s", exc)


async def _start_simulator(stack: AsyncExitStack, sim: web.Application) -> str:
    """An in-process simulator on a loopback port: the embedded default's stand-in."""
    runner = web.AppRunner(sim, handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _readiness(
    pool: asyncpg.Pool, thunderhead: ThunderheadClient, relay: OutboxRelay
) -> health.ReadinessReport:
    """Database reachable, schema current, Thunderhead answering, Kafka taking events.

    Kafka being down does not stop intake (the outbox keeps every event), but
    readiness says so, so an operator sees it.
    """
    checks: dict[str, str] = {}
    checks["kafka"] = "ok" if relay.healthy else f"failing: {relay.last_error or 'unknown'}"
    with anyio.move_on_after(2.0):
        if not await thunderhead.ping():
            problem = thunderhead.credentials_error
            checks["thunderhead"] = f"credentials refused: {problem}" if problem else "unreachable"
        elif thunderhead.api_error:
            checks["thunderhead"] = f"misconfigured: {thunderhead.api_error}"
        else:
            checks["thunderhead"] = "ok"
    checks.setdefault("thunderhead", "timed out")
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


async def _purge_idempotency_keys(pool: asyncpg.Pool, settings: config.IntakeSettings) -> None:
    """Expired Idempotency-Key records are deleted so the table stays bounded."""
    while True:
        await anyio.sleep(settings.idempotency_purge_interval_s)
        try:
            async with pool.acquire() as conn:
                removed = await documents.purge_expired_idempotency_keys(conn, datetime.now(UTC))
            if removed:
                logger.info("expired idempotency keys purged", extra={"count": removed})
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("idempotency key purge failed: %s", exc)
