"""Wiring: what OMS talks to, and the components it runs, in dependency order.

``run`` opens the outside world first (database, embedded if no DSN; pool and
migrations; Reference Data and Thunderhead clients, in-process simulators if no
URL; Kafka, embedded if none), then hands the component list to
``oms.lifecycle.run_all``: started in order (``task_status`` fires once HTTP
listens), drained in reverse on ``stop``; the outside world closes last, each
part with a deadline. docs/architecture.md has the list and why it is ordered so.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from oms import config, domain, exceptions, lifecycle, metrics, readiness
from oms.actors import handoff
from oms.actors.mailbox import PriorityMailbox
from oms.actors.monitoring import MonitoringStage, PollJob
from oms.actors.pool import ActorPool, PoolSettings
from oms.actors.processing import ProcessingStage
from oms.actors.reconciler import Reconciler
from oms.actors.relay import OutboxRelay
from oms.actors.schedule import DueSchedule
from oms.actors.settle import Settler
from oms.actors.submitter import Submitter
from oms.actors.sweeper import Sweeper
from oms.db import embedded, migrate
from oms.db.pool import create_pool
from oms.http import app as http_app
from oms.http import auth
from oms.http.server import HttpServer
from oms.intake.purge import IdempotencyKeyPurge
from oms.intake.service import IntakeService
from oms.intake.writer import DocumentWriter
from oms.kafka.broker import EmbeddedBroker, ensure_topics
from oms.lifecycle import Declared, Policy
from oms.refdata import RefDataClient
from oms.sim import refdata as refdata_sim
from oms.sim import thunderhead as thunderhead_sim
from oms.store import api_keys, journal
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


class Outside(msgspec.Struct, frozen=True):
    """What OMS talks to, opened (or started embedded) before any component runs."""

    dsn: str
    db: asyncpg.Pool
    refdata_url: str
    refdata: RefDataClient
    thunderhead_url: str
    thunderhead: ThunderheadClient
    kafka: config.KafkaSettings


async def run(
    settings: config.Settings,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[Started] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run OMS until ``stop`` is set: open what it talks to, then run its components."""
    async with AsyncExitStack() as stack:
        outside = await _open_outside(settings, stack)
        components, http, pools = _components(settings, outside)

        def started() -> Started:
            logger.info("OMS listening", extra={"url": http.url})
            return Started(
                http.url,
                outside.dsn,
                outside.refdata_url,
                outside.thunderhead_url,
                outside.kafka.bootstrap_servers,
                settings.embedded,
                pools,
            )

        await lifecycle.run_all(components, stop, started, task_status=task_status)
    logger.info("OMS stopped")


async def _open_outside(settings: config.Settings, stack: AsyncExitStack) -> Outside:
    """Database (embedded if no DSN), pool, migrations, Reference Data and Thunderhead
    clients (in-process simulators if no URL), Kafka (embedded if none) and its topics.
    The stack closes them in reverse, each with a deadline."""
    dsn = settings.database.dsn or await _start_embedded_database(settings, stack)
    db = await _open_pool(dsn, settings, stack)
    await _prepare_database(db, demo_keys=settings.embedded)
    refdata_url = settings.refdata.base_url or await _start_simulator(stack, refdata_sim.make_app())
    refdata = await stack.enter_async_context(
        RefDataClient(msgspec.structs.replace(settings.refdata, base_url=refdata_url))
    )
    thunderhead_url = settings.thunderhead.base_url or await _start_simulator(
        stack, thunderhead_sim.make_app(state_file=_simulator_state_file(settings))
    )
    thunderhead = await stack.enter_async_context(
        ThunderheadClient(msgspec.structs.replace(settings.thunderhead, base_url=thunderhead_url))
    )
    bootstrap = settings.kafka.bootstrap_servers or await _start_embedded_broker(settings, stack)
    kafka = msgspec.structs.replace(settings.kafka, bootstrap_servers=bootstrap)
    await _create_topics(settings, kafka)
    return Outside(dsn, db, refdata_url, refdata, thunderhead_url, thunderhead, kafka)


class Pipeline(msgspec.Struct, frozen=True):
    """OMS between its doors: intake's use case, the stages, their timers and scans.

    ``run`` puts HTTP in front and the outbox relay behind; tests run it alone
    (``oms.lifecycle.run_all``) to exercise the stages without either.
    """

    components: list[Declared]
    intake: IntakeService
    pools: dict[str, ActorPool[Any]]


def _components(
    settings: config.Settings, outside: Outside
) -> tuple[list[Declared], HttpServer, dict[str, ActorPool[Any]]]:
    """OMS's components in dependency order: started in this order, drained in reverse.

    The relay starts first and drains last (it publishes what the stages just
    wrote); HTTP starts last and drains first (stop listening, finish requests
    in hand).
    """
    relay = OutboxRelay(
        outside.db,
        settings.relay,
        outside.kafka,
        settings.events,
        embedded=not settings.kafka.bootstrap_servers,
    )
    stages = pipeline(settings, outside.db, outside.refdata, outside.thunderhead)
    http = HttpServer(
        _web_app(settings, outside, relay, stages.intake, stages.pools), settings.server
    )
    components: list[Declared] = []
    if settings.relay.enabled:
        components.append(Declared(relay, Policy.RESTART, settings.processing.drain_deadline_s))
    else:
        logger.warning("outbox relay disabled: events wait in the outbox")
    components += stages.components
    components.append(Declared(http, Policy.STOP, settings.server.shutdown_timeout_s + 1))
    return components, http, stages.pools


def pipeline(
    settings: config.Settings,
    db: asyncpg.Pool,
    refdata: RefDataClient,
    thunderhead: ThunderheadClient,
) -> Pipeline:
    """Intake's writer, the stages and their scans, in dependency order.

    Draining in reverse: write what intake queued, stop the timers and scans
    (they hold no work), let the processing actors finish their message, send
    open batches and settle them, let the pollers finish.
    """
    processing_s, monitoring_s = settings.processing, settings.monitoring
    events_mode = settings.pipeline.mode == "events"
    topics = journal.Topics.from_settings(settings.events)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    requested_box = PriorityMailbox[domain.DocumentRequested](
        "document.requested", processing_s.mailbox_capacity, key=lambda event: event.document_id
    )
    polls = PriorityMailbox[PollJob](
        "monitoring.poll", monitoring_s.mailbox_capacity, key=lambda job: job.job_id
    )
    monitoring = MonitoringStage(db, thunderhead, monitoring_s, topics, polls, push=events_mode)
    retries = DueSchedule[domain.DocumentRequested](
        "processing",
        processing_s.retry_schedule_max,
        key=lambda event: event.document_id,
        deliver=requested_box.offer,
        size=metrics.RETRY_SCHEDULE_SIZE.labels("processing"),
    )
    # The stage boundaries. Scheduled mode hands nothing over: scans find the work.
    requested: handoff.RequestedHandoff = (
        handoff.ToProcessing(requested_box, retries) if events_mode else handoff.Nothing()
    )
    submitted: handoff.Handoff[domain.DocumentSubmitted] = (
        handoff.ToMonitoring(monitoring) if events_mode else handoff.Nothing()
    )
    reconciler = Reconciler(
        db, thunderhead, processing_s, topics, owner, requested=requested, submitted=submitted
    )
    settler = Settler(
        db, processing_s, topics, requested=requested, submitted=submitted, reconciler=reconciler
    )
    submitter = Submitter(db, thunderhead, processing_s, settler)
    processing = ProcessingStage(
        db, refdata, processing_s, owner, submitter=submitter, settler=settler
    )
    processing_pool = ActorPool(
        "processing",
        requested_box,
        processing.handle,
        _pool_settings(processing_s.actors, processing_s),
        message_id=lambda event: event.document_id,
    )
    monitoring_pool = ActorPool(
        "monitoring",
        polls,
        monitoring.poll,
        _pool_settings(monitoring_s.actors, monitoring_s),
        message_id=lambda job: job.job_id,
    )
    if processing_s.start_paused:
        processing_pool.pause()
    writer = DocumentWriter(db, topics, settings.intake)
    intake_service = IntakeService(db, writer, refdata, settings.intake, topics, requested)

    drain_s = processing_s.drain_deadline_s
    components = [
        Declared(IdempotencyKeyPurge(db, settings.intake), Policy.RESTART),
        Declared(monitoring_pool, Policy.STOP, monitoring_s.drain_deadline_s),
        Declared(submitter, Policy.STOP, drain_s),
        Declared(processing_pool, Policy.STOP, drain_s),
        Declared(Sweeper(db, settings, requested_box, monitoring), Policy.RESTART),
        Declared(reconciler, Policy.RESTART),
        Declared(monitoring.schedule, Policy.RESTART) if events_mode else None,
        Declared(retries, Policy.RESTART) if events_mode else None,
        Declared(writer, Policy.STOP, settings.server.shutdown_timeout_s),
    ]
    pools = {"processing": processing_pool, "monitoring": monitoring_pool}
    return Pipeline([c for c in components if c is not None], intake_service, pools)


def _web_app(
    settings: config.Settings,
    outside: Outside,
    relay: OutboxRelay,
    intake_service: IntakeService,
    pools: dict[str, ActorPool[Any]],
) -> web.Application:
    return http_app.make_api(
        settings,
        outside.db,
        intake_service,
        auth.Authenticator(outside.db, settings.intake.api_key_cache_ttl_s),
        lambda: readiness.check(outside.db, outside.thunderhead, relay),
        pools,
        relay.poke,
    )


def _pool_settings(size: int, settings: config.PoolSection) -> PoolSettings:
    return PoolSettings(
        size=size,
        restart_backoff_s=settings.restart_backoff_s,
        max_redeliveries=settings.max_redeliveries,
    )


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
