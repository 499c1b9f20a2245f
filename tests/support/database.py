"""The template-database trick: migrate once, copy per test (procrastinate's trick).

``CREATE DATABASE … TEMPLATE`` copies a migrated schema in milliseconds.
"""

from __future__ import annotations

import uuid

import asyncpg

from oms.db import migrate

TEMPLATE_DB = "oms_template"


def dsn_for(dsn: str, database: str) -> str:
    """The same server as ``dsn``, another database."""
    return dsn.rsplit("/", 1)[0] + f"/{database}"


async def make_template(dsn: str) -> None:
    """(Re)create the template database and migrate it to the latest schema."""
    await _execute(dsn, f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
    await _execute(dsn, f"CREATE DATABASE {TEMPLATE_DB}")
    conn = await asyncpg.connect(dsn_for(dsn, TEMPLATE_DB))
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


async def create_from_template(dsn: str) -> str:
    """A fresh, migrated database on the server at ``dsn``; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _execute(dsn, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    return dsn_for(dsn, name)


async def drop(dsn: str, database_dsn: str) -> None:
    """Drop the database ``database_dsn`` names, closing whatever still uses it."""
    name = database_dsn.rsplit("/", 1)[1]
    await _execute(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
