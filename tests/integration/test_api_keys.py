from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import asyncpg

from oms import app
from oms.store import api_keys
from tests.support.settings import make_settings
from tests.support.sims import SimServer
from tests.support.whole_oms import RunningOms


async def _cli(dsn: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env["OMS_DATABASE__DSN"] = dsn
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oms.keys",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode().strip(), err.decode()


async def test_created_key_is_stored_as_a_digest_and_revocable(
    database_dsn: str, db: asyncpg.Connection
) -> None:
    code, key, _ = await _cli(database_dsn, "create", "--source-system", "billing")
    assert code == 0
    key_id, secret = api_keys.split(key) or ("", "")
    row = await db.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    assert row["source_system"] == "billing"
    assert row["role"] == "source"
    assert secret.encode() not in bytes(row["secret_sha256"])  # only the digest is kept
    stored = await api_keys.fetch(db, key_id)
    assert stored is not None
    assert api_keys.matches(stored, secret)
    assert not api_keys.matches(stored, secret + "x")

    code, _, _ = await _cli(database_dsn, "revoke", key_id)
    assert code == 0
    stored = await api_keys.fetch(db, key_id)
    assert stored is not None
    assert not api_keys.matches(stored, secret)


async def test_demo_keys_are_never_active_on_a_real_database(
    database_dsn: str, db: asyncpg.Connection, refdata_server: SimServer
) -> None:
    # Someone copied the demo key into a real database: OMS disables it at start.
    await api_keys.upsert(db, app.DEMO_SOURCE_KEY, "demo", "source", is_demo=True)
    running = RunningOms(make_settings(database_dsn, refdata_server.url))
    await running.start()
    try:
        headers = {"Authorization": f"Bearer {app.DEMO_SOURCE_KEY}"}
        async with aiohttp.ClientSession(running.url, headers=headers) as http:
            async with http.get("/v1/documents") as response:
                assert response.status == 401
    finally:
        await running.stop()
    assert not await db.fetchval("SELECT active FROM api_keys WHERE is_demo")
