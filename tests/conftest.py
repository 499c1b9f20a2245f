"""Shared fixtures: one embedded PostgreSQL per session, an empty migrated database per test.

The schema is migrated once into a template database; a test borrows a copy of it,
emptied after each use (``tests.support.database``). What the fixtures build on
lives in ``tests/support``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from oms.db import embedded
from oms.kafka.broker import EmbeddedBroker
from oms.sim import refdata as refdata_sim
from oms.sim import thunderhead as thunderhead_sim
from tests.support import database
from tests.support.api import ApiServer, serving
from tests.support.keys import seed_keys
from tests.support.settings import KAFKA, make_settings
from tests.support.sims import SimServer
from tests.support.whole_oms import RunningOms

pytest_plugins = ["tests.support.private_tmp"]


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
    yield server
    server.stop(mode="immediate")


@pytest.fixture(scope="session")
def databases(postgres: embedded.EmbeddedPostgres) -> database.Databases:
    lender = database.Databases(postgres.dsn)
    asyncio.run(lender.make_template())
    return lender


@pytest.fixture
async def database_dsn(databases: database.Databases) -> AsyncIterator[str]:
    """An empty, migrated database for one test."""
    dsn = await databases.lend()
    yield dsn
    await databases.give_back(dsn)


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_dsn)
    yield conn
    await conn.close()


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


@pytest.fixture(autouse=True)
def _session_kafka(request: pytest.FixtureRequest) -> None:
    """Integration tests start OMS in-process: point it at the session's broker."""
    if "integration" in request.node.path.parts:
        KAFKA["bootstrap"] = request.getfixturevalue("kafka_bootstrap")


@pytest.fixture
async def api(database_dsn: str, refdata_server: SimServer) -> AsyncIterator[ApiServer]:
    """OMS's HTTP API alone on a fresh database, with keys for two sources and an admin."""
    async with serving(make_settings(database_dsn, refdata_server.url)) as server:
        yield server


@pytest.fixture
async def oms(database_dsn: str, refdata_server: SimServer) -> AsyncIterator[RunningOms]:
    """A whole OMS on a fresh database, with keys for two source systems and an admin."""
    await seed_keys(database_dsn)
    running = RunningOms(make_settings(database_dsn, refdata_server.url))
    await running.start()
    yield running
    await running.stop()
