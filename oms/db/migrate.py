"""Versioned SQL migrations, applied at start under an advisory lock.

Files are ``migrations/NNNN_name.sql``; each runs in its own transaction and is
recorded in ``schema_migrations``. The session-level advisory lock makes a second
process that starts at the same moment wait, then find nothing left to do.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import asyncpg
import msgspec

from oms import exceptions
from oms.db.pool import Connection

logger = logging.getLogger(__name__)

# Any constant shared by every OMS process; "OMS" in ASCII.
_ADVISORY_LOCK_KEY = 0x4F4D53
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with this OMS build, oldest first."""
    found = []
    for entry in resources.files("oms.db").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    return available()[-1].version


async def applied_version(conn: Connection) -> int:
    """The newest version applied to this database, 0 for a fresh one."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(conn: Connection) -> list[int]:
    """Apply what is missing; return the versions this call applied."""
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        current = await applied_version(conn)
        for migration in available():
            if migration.version <= current:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except asyncpg.PostgresError as exc:
                raise exceptions.MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            logger.info("migration applied", extra={"version": migration.version})
            applied.append(migration.version)
        if current > latest_version():
            raise exceptions.MigrationError(
                f"database schema is at version {current}, newer than this OMS "
                f"({latest_version()}): refusing to start"
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied
