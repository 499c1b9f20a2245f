"""Intake requests and their checks: request bodies, problem answers, row counts, waits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import asyncpg

PROBLEM_JSON = "application/problem+json"
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


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (a bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_statuses(
    db: asyncpg.Connection, ids: list[uuid.UUID], done: set[str], timeout_s: float = 20
) -> dict[uuid.UUID, asyncpg.Record]:
    """Bounded wait until every document is in one of ``done``; their rows."""
    with anyio.fail_after(timeout_s):
        while True:
            rows = await db.fetch("SELECT * FROM documents WHERE id = ANY($1::uuid[])", ids)
            if len(rows) == len(ids) and all(r["status"] in done for r in rows):
                return {r["id"]: r for r in rows}
            await anyio.sleep(0.05)
