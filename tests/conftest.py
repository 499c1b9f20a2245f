"""Shared fixtures: one embedded PostgreSQL per session, a fresh database per test.

The schema is migrated once into a template database; each test gets
``CREATE DATABASE … TEMPLATE`` (procrastinate's trick), which takes milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import anyio
import asyncpg
import msgspec
import pytest
from aiohttp import web

from oms import app, config
from oms.db import embedded, migrate
from oms.kafka.broker import EmbeddedBroker
from oms.sim import refdata as refdata_sim
from oms.sim import thunderhead as thunderhead_sim
from oms.store import api_keys

TEMPLATE_DB = "oms_template"


@pytest.fixture(autouse=True, scope="session")
def _clean_environment() -> Iterator[None]:
    """The developer's shell must not change a result."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OMS_")}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Tansu broker for the session: tests share it, topics and all."""
    broker = EmbeddedBroker("127.0.0.1", 0, tmp_path_factory.mktemp("kafka") / "tansu.log")
    bootstrap = asyncio.run(broker.start())
    yield bootstrap
    asyncio.run(broker.stop(grace_s=2.0))


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedPostgres]:
    server = embedded.EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    asyncio.run(_make_template(server.dsn))
    yield server
    server.stop(mode="immediate")


async def _make_template(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(_dsn_for(dsn, TEMPLATE_DB))
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


def _dsn_for(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + f"/{database}"


@pytest.fixture
async def database_dsn(postgres: embedded.EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await conn.close()
    yield _dsn_for(postgres.dsn, name)
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_dsn)
    yield conn
    await conn.close()


class SimServer:
    """A simulator on a real loopback port, stoppable for real."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(self._make_app(), handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def post(self, path: str, body: object) -> Any:
        async with aiohttp.ClientSession(self.url) as http, http.post(path, json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession(self.url) as http, http.get(path) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture
async def refdata_server() -> AsyncIterator[SimServer]:
    sim = SimServer(refdata_sim.make_app)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def thunderhead_server() -> AsyncIterator[SimServer]:
    sim = SimServer(thunderhead_sim.make_app)
    await sim.start()
    yield sim
    await sim.stop()


def make_settings(
    dsn: str, refdata_url: str, thunderhead_url: str = "", **sections: dict[str, object]
) -> config.Settings:
    """Test settings; an empty ``thunderhead_url`` runs the simulator in-process.

    Kafka is the session's broker (see ``kafka_bootstrap``), set by the ``oms``
    fixtures through ``KAFKA``.
    """
    raw: dict[str, dict[str, object]] = {
        "kafka": {"bootstrap_servers": KAFKA["bootstrap"], "enable_idempotence": False},
        "server": {"port": 0},
        "database": {"dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "refdata": {"base_url": refdata_url, "timeout_s": 0.5},
        # Intake tests see documents as intake left them; processing tests resume.
        "processing": {"start_paused": True},
        "thunderhead": {"base_url": thunderhead_url},
        "logging": {"level": "WARNING"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return msgspec.convert(raw, config.Settings)


# The session broker's address, filled in by the autouse fixture below.
KAFKA: dict[str, str] = {"bootstrap": ""}


@pytest.fixture(autouse=True)
def _session_kafka(request: pytest.FixtureRequest) -> None:
    """Integration tests start OMS in-process: point it at the session's broker."""
    if "integration" in request.node.path.parts:
        KAFKA["bootstrap"] = request.getfixturevalue("kafka_bootstrap")


class RunningOms:
    """A whole OMS (``app.run``) serving on a loopback port, in a task of its own."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.started: app.Started | None = None
        self._stop = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self.started is not None
        return self.started.base_url

    async def start(self) -> None:
        ready: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                started = await tg.start(app.run, self.settings, self._stop)
                ready.set_result(started)

        self._task = asyncio.create_task(main())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # re-raise the start-up error
        self.started = ready.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=60)
        self._task = None


SOURCE_KEY = "oms_acme_test-source-secret"
OTHER_SOURCE_KEY = "oms_globex_test-other-secret"
ADMIN_KEY = "oms_admin1_test-admin-secret"


@pytest.fixture
async def oms(database_dsn: str, refdata_server: SimServer) -> AsyncIterator[RunningOms]:
    """OMS on a fresh database, with keys for two source systems and an admin."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await api_keys.upsert(conn, SOURCE_KEY, "acme-policy", "source")
        await api_keys.upsert(conn, OTHER_SOURCE_KEY, "globex-billing", "source")
        await api_keys.upsert(conn, ADMIN_KEY, "ops", "admin")
    finally:
        await conn.close()
    running = RunningOms(make_settings(database_dsn, refdata_server.url))
    await running.start()
    yield running
    await running.stop()
