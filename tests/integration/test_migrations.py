from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from oms import exceptions
from oms.db import embedded, migrate


@pytest.fixture
async def empty_database(postgres: embedded.EmbeddedPostgres) -> AsyncIterator[str]:
    name = f"empty_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield postgres.dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await conn.close()


async def test_two_processes_migrating_at_once_apply_each_version_once(
    empty_database: str,
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oms.db",
            "migrate",
            empty_database,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=60
    )
    assert [p.returncode for p in processes] == [0, 0], outputs
    said = sorted(out.decode().strip() for out, _ in outputs)
    # Exactly one of them did the work; the other waited on the lock and found none.
    every = ", ".join(str(m.version) for m in migrate.available())
    assert said == [f"applied: {every}", "applied: nothing, already up to date"]
    conn = await asyncpg.connect(empty_database)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in migrate.available()]
        assert await conn.fetchval("SELECT to_regclass('documents') IS NOT NULL")
    finally:
        await conn.close()


async def test_migrating_again_is_a_no_op(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await migrate.migrate(conn) == []
        assert await migrate.applied_version(conn) == migrate.latest_version()
    finally:
        await conn.close()


async def test_a_newer_schema_than_this_build_refuses_to_start(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
        with pytest.raises(exceptions.MigrationError, match="newer than this OMS"):
            await migrate.migrate(conn)
    finally:
        await conn.close()
