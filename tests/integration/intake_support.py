"""Helpers shared by the intake API tests: request bodies, problem checks, row counts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg

from oms import config
from oms.store import api_keys
from tests.conftest import ADMIN_KEY, OTHER_SOURCE_KEY, SOURCE_KEY, RunningOms

PROBLEM_JSON = "application/problem+json"
SOURCE = "acme-policy"
OTHER_SOURCE = "globex-billing"
AUTH = {"Authorization": f"Bearer {SOURCE_KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_SOURCE_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TABLES = ("documents", "document_timeline", "outbox", "idempotency_keys")


def urn(slug: str) -> str:
    return f"urn:oms:problem:{slug}"


def document(reference: str = "R-1", **overrides: Any) -> dict[str, Any]:
    """A valid request body (an active email template of brand acme, in English)."""
    body: dict[str, Any] = {
        "client_reference": reference,
        "document_type": "policy_renewal_notice",
        "channel": "email",
        "language": "en",
        "brand": "acme",
        "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "data": {"policy_number": "P-1"},
    }
    body.update(overrides)
    return body


async def expect_problem(
    response: aiohttp.ClientResponse, status: int, slug: str, pointer: str | None = None
) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this status and type (and names ``pointer``)."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_JSON, response.headers.get("Content-Type")
    problem = json.loads(text)
    assert problem["type"] == urn(slug), problem
    assert problem["status"] == status
    assert problem["title"]
    if pointer is not None:
        pointers = [e["pointer"] for e in problem.get("errors") or []]
        assert pointer in pointers, problem
    return problem


async def count(db: asyncpg.Connection, table: str, where: str = "true", *args: Any) -> int:
    assert table in TABLES
    value = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
    return int(value)


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    return {table: await count(db, table) for table in TABLES}


async def nothing_stored(db: asyncpg.Connection) -> None:
    assert await counts(db) == dict.fromkeys(TABLES, 0)


async def submit(
    http: aiohttp.ClientSession, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """POST a request that must be accepted; the Accepted body."""
    async with http.post("/v1/documents", json=body, headers=headers) as response:
        assert response.status == 202, await response.text()
        accepted: dict[str, Any] = await response.json()
    return accepted


async def seed_keys(dsn: str) -> None:
    """The same keys the ``oms`` fixture stores, for an OMS a test starts itself."""
    conn = await asyncpg.connect(dsn)
    try:
        await api_keys.upsert(conn, SOURCE_KEY, SOURCE, "source")
        await api_keys.upsert(conn, OTHER_SOURCE_KEY, OTHER_SOURCE, "source")
        await api_keys.upsert(conn, ADMIN_KEY, "ops", "admin")
    finally:
        await conn.close()


@asynccontextmanager
async def running(settings: config.Settings) -> AsyncIterator[RunningOms]:
    """An OMS with settings of the test's own, on the test database, with the test keys."""
    assert settings.database.dsn
    await seed_keys(settings.database.dsn)
    oms = RunningOms(settings)
    await oms.start()
    try:
        yield oms
    finally:
        await oms.stop()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (a bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
