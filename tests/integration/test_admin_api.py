"""The admin API: admin keys only; pools, the error table, any document."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg

from tests.support.api import ApiServer
from tests.support.intake import document, expect_problem, submit
from tests.support.keys import ADMIN_AUTH, AUTH
from tests.support.whole_oms import RunningOms


async def test_admin_routes_refuse_source_keys_and_no_keys(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        async with http.get("/admin/api/pools") as response:
            await expect_problem(response, 401, "unauthorized")
        async with http.get("/admin/api/pools", headers=AUTH) as response:
            await expect_problem(response, 403, "forbidden")


async def test_pools_can_be_paused_and_resumed(oms: RunningOms) -> None:
    async with aiohttp.ClientSession(oms.url, headers=ADMIN_AUTH) as http:
        async with http.get("/admin/api/pools") as response:
            pools = {p["name"]: p["paused"] for p in await response.json()}
        assert pools == {"processing": True, "monitoring": False}  # tests start paused
        async with http.post("/admin/api/pools/processing/resume") as response:
            assert (await response.json())["paused"] is False
        assert not oms.started.pools["processing"].paused  # type: ignore[union-attr]
        async with http.post("/admin/api/pools/processing/pause") as response:
            assert (await response.json())["paused"] is True
        async with http.post("/admin/api/pools/nope/pause") as response:
            await expect_problem(response, 404, "not-found")


async def test_dead_events_are_listed_and_republished(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("A-1"))
    event_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
               created_at)
           VALUES ($1, 'oms.document.status', $2, 'oms.document.failed', $2, '{}', now())""",
        event_id,
        accepted["id"],
    )
    outbox_id = await db.fetchval(
        """UPDATE outbox SET dead_at = now(), attempts = 10, last_error = 'too large'
           WHERE event_id = $1 RETURNING id""",
        event_id,
    )
    async with aiohttp.ClientSession(api.url, headers=ADMIN_AUTH) as http:
        async with http.get("/admin/api/outbox/dead") as response:
            page = await response.json()
        assert [row["id"] for row in page["items"]] == [outbox_id]
        assert page["items"][0]["last_error"] == "too large"
        async with http.get("/admin/api/outbox/backlog") as response:
            assert (await response.json())["dead"] == 1
        async with http.post(f"/admin/api/outbox/{outbox_id}/republish") as response:
            assert response.status == 200
        async with http.post(f"/admin/api/outbox/{outbox_id}/republish") as response:
            await expect_problem(response, 404, "not-found")  # no longer dead
        async with http.get("/admin/api/outbox/dead?limit=abc") as response:
            await expect_problem(response, 400, "invalid-query")
    row = await db.fetchrow("SELECT dead_at, attempts FROM outbox WHERE id = $1", outbox_id)
    assert row["dead_at"] is None
    assert row["attempts"] == 0


async def test_an_admin_reads_any_source_systems_document(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("A-2"))
    async with aiohttp.ClientSession(api.url, headers=ADMIN_AUTH) as http:
        async with http.get(f"/admin/api/documents/{accepted['id']}") as response:
            assert response.status == 200
            body = await response.json()
    assert body["client_reference"] == "A-2"
    assert body["timeline"][0]["to_status"] == "RECEIVED"
