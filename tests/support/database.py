"""Migrated databases for tests: one template, copies lent one test at a time.

The schema is migrated once into a template database. ``CREATE DATABASE … TEMPLATE``
(procrastinate's trick) then makes a migrated database, but it copies ~8 MB and
takes 100 to 400 ms on a busy machine; emptying a used one takes a few ms. So a test
borrows a database and gives it back; given back, it is emptied (every row deleted,
identity sequences restarted, ``schema_migrations`` as the template has it) and
lent again. One that cannot be brought back to that state is dropped.
"""

from __future__ import annotations

import uuid

import asyncpg

from oms.db import migrate

TEMPLATE_DB = "oms_template"
_MIGRATIONS = "SELECT version, name FROM schema_migrations ORDER BY version"
_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"


def dsn_for(dsn: str, database: str) -> str:
    """The same server as ``dsn``, another database."""
    return dsn.rsplit("/", 1)[0] + f"/{database}"


class Databases:
    """Lends migrated databases on one server, each to one test at a time."""

    def __init__(self, server_dsn: str) -> None:
        self._server_dsn = server_dsn
        self._free: list[str] = []
        self._tables: list[str] = []
        self._migrations: list[tuple[int, str]] = []

    async def make_template(self) -> None:
        """(Re)create the template database, migrate it and remember its shape."""
        await self._execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await self._execute(f"CREATE DATABASE {TEMPLATE_DB}")
        conn = await asyncpg.connect(dsn_for(self._server_dsn, TEMPLATE_DB))
        try:
            await migrate.migrate(conn)
            self._tables = [r[0] for r in await conn.fetch(_TABLES)]
            self._migrations = [tuple(r) for r in await conn.fetch(_MIGRATIONS)]
        finally:
            await conn.close()

    async def lend(self) -> str:
        """A migrated database holding no rows but ``schema_migrations``; its DSN."""
        if self._free:
            return self._free.pop()
        name = f"t_{uuid.uuid4().hex[:12]}"
        await self._execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        return dsn_for(self._server_dsn, name)

    async def give_back(self, dsn: str) -> None:
        """Empty the database for the next test, or drop it if it is not as lent."""
        if await self._emptied(dsn):
            self._free.append(dsn)
            return
        name = dsn.rsplit("/", 1)[1]
        await self._execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    async def _emptied(self, dsn: str) -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            # What DROP … WITH (FORCE) did: nothing the test left behind keeps a session.
            await conn.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            )
            if [r[0] for r in await conn.fetch(_TABLES)] != self._tables:
                return False
            async with conn.transaction():
                # Rows of every table at once, foreign keys or not.
                await conn.execute("SET LOCAL session_replication_role = replica")
                for table in self._tables:
                    if table != "schema_migrations":
                        await conn.execute(f"DELETE FROM {table}")
                await conn.execute(
                    """SELECT setval(format('%I.%I', schemaname, sequencename), start_value, false)
                       FROM pg_sequences WHERE schemaname = 'public'"""
                )
            return [tuple(r) for r in await conn.fetch(_MIGRATIONS)] == self._migrations
        except asyncpg.PostgresError:
            return False
        finally:
            await conn.close()

    async def _execute(self, statement: str) -> None:
        conn = await asyncpg.connect(self._server_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
