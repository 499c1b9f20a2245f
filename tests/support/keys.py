"""The API keys every test database gets: two source systems and an admin."""

from __future__ import annotations

import asyncpg

from oms.store import api_keys

SOURCE_KEY = "oms_acme_test-source-secret"
OTHER_SOURCE_KEY = "oms_globex_test-other-secret"
ADMIN_KEY = "oms_admin1_test-admin-secret"
SOURCE = "acme-policy"
OTHER_SOURCE = "globex-billing"
AUTH = {"Authorization": f"Bearer {SOURCE_KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_SOURCE_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def seed_keys(dsn: str) -> None:
    """Store the test keys in the database at ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        await api_keys.upsert(conn, SOURCE_KEY, SOURCE, "source")
        await api_keys.upsert(conn, OTHER_SOURCE_KEY, OTHER_SOURCE, "source")
        await api_keys.upsert(conn, ADMIN_KEY, "ops", "admin")
    finally:
        await conn.close()
