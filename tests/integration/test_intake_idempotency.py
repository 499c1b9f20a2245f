"""Idempotency-Key on POST /v1/documents: replay, reuse with another body, in flight, scope."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import asyncpg
import pytest

from tests.support.api import ApiServer, serving
from tests.support.intake import count, document, expect_problem, nothing_stored, wait_until
from tests.support.keys import AUTH, OTHER_AUTH, SOURCE
from tests.support.settings import make_settings
from tests.support.sims import SimServer

JSON = {"Content-Type": "application/json"}


def _body(reference: str = "I-1", **overrides: object) -> bytes:
    return json.dumps(document(reference, **overrides)).encode()


async def test_same_key_same_body_replays_the_first_answer(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    headers = {**AUTH, **JSON, "Idempotency-Key": "key-1"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_body()) as first:
            first_body = await first.read()
            assert first.status == 202
            assert "Idempotent-Replayed" not in first.headers
        for _ in range(2):
            async with http.post("/v1/documents", data=_body()) as again:
                assert again.status == first.status
                assert await again.read() == first_body
                assert again.content_type == "application/json"
                assert again.headers["Idempotent-Replayed"] == "true"
                assert again.headers["Location"] == first.headers["Location"]

    assert await count(db, "documents") == 1
    assert await count(db, "outbox") == 1
    assert await count(db, "document_timeline") == 1
    key = await db.fetchrow("SELECT * FROM idempotency_keys")
    assert (key["source_system"], key["idempotency_key"]) == (SOURCE, "key-1")
    assert str(key["document_id"]) == json.loads(first_body)["id"]
    assert key["expires_at"] > key["created_at"]


async def test_same_key_different_body_is_422(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, **JSON, "Idempotency-Key": "key-1"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_body("I-1")) as response:
            assert response.status == 202
        for other in (_body("I-2"), _body("I-1", priority="urgent")):
            async with http.post("/v1/documents", data=other) as response:
                await expect_problem(response, 422, "idempotency-key-reused")
    assert await count(db, "documents") == 1
    assert await count(db, "outbox") == 1
    assert await db.fetchval("SELECT client_reference FROM documents") == "I-1"


async def test_same_key_from_another_source_system_is_independent(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    key = {"Idempotency-Key": "shared-key"}
    async with aiohttp.ClientSession(api.url, headers={**JSON, **key}) as http:
        async with http.post("/v1/documents", data=_body(), headers=AUTH) as response:
            assert response.status == 202
            ours = await response.json()
        async with http.post("/v1/documents", data=_body(), headers=OTHER_AUTH) as response:
            assert response.status == 202
            assert "Idempotent-Replayed" not in response.headers
            theirs = await response.json()
    assert ours["id"] != theirs["id"]
    assert await count(db, "documents") == 2
    assert await count(db, "idempotency_keys") == 2
    assert await count(db, "outbox") == 2


async def test_rejected_request_does_not_take_the_key(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    """A 422 is not remembered: the corrected request under the same key is accepted."""
    headers = {**AUTH, **JSON, "Idempotency-Key": "key-1"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_body(brand="nosuchbrand")) as response:
            await expect_problem(response, 422, "unknown-reference", "/brand")
        await nothing_stored(db)
        async with http.post("/v1/documents", data=_body()) as response:
            assert response.status == 202
            assert "Idempotent-Replayed" not in response.headers
    assert await count(db, "documents") == 1


async def test_duplicate_client_reference_under_a_new_key_releases_the_key(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers={**AUTH, **JSON}) as http:
        async with http.post("/v1/documents", data=_body()) as response:
            assert response.status == 202
            first = await response.json()
        headers = {"Idempotency-Key": "key-2"}
        for _ in range(2):  # a retry meets the same answer, not a replay of a stale one
            async with http.post("/v1/documents", data=_body(), headers=headers) as response:
                problem = await expect_problem(response, 409, "duplicate-client-reference")
                assert problem["document_id"] == first["id"]
    assert await count(db, "idempotency_keys") == 0
    assert await count(db, "documents") == 1


async def test_replay_needs_no_reference_data(
    api: ApiServer, db: asyncpg.Connection, refdata_server: SimServer
) -> None:
    headers = {**AUTH, **JSON, "Idempotency-Key": "key-1"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_body()) as response:
            assert response.status == 202
            first = await response.read()
        await refdata_server.stop()
        async with http.post("/v1/documents", data=_body()) as response:
            assert response.status == 202
            assert await response.read() == first
            assert response.headers["Idempotent-Replayed"] == "true"
    assert await count(db, "documents") == 1


@pytest.mark.parametrize(
    "key",
    ["", "   ", "with space", "x" * 256, "tab\there"],
    ids=["empty", "blank", "space", "256", "tab"],
)
async def test_invalid_idempotency_key_is_400(
    api: ApiServer, db: asyncpg.Connection, key: str
) -> None:
    headers = {**AUTH, **JSON, "Idempotency-Key": key}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_body()) as response:
            await expect_problem(response, 400, "invalid-header")
    await nothing_stored(db)


async def test_longest_idempotency_key_is_accepted(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, **JSON, "Idempotency-Key": "k" * 255}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        for replayed in (False, True):
            async with http.post("/v1/documents", data=_body()) as response:
                assert response.status == 202
                assert ("Idempotent-Replayed" in response.headers) is replayed
    assert await count(db, "documents") == 1


async def test_replay_while_the_first_is_in_flight_is_409(
    database_dsn: str, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    """The first request hangs on a cold Reference Data cache; its twin is told to retry."""
    settings = make_settings(database_dsn, refdata_server.url, refdata={"timeout_s": 3.0})
    async with serving(settings) as api, aiohttp.ClientSession() as sim:
        async with sim.post(f"{refdata_server.url}/_sim/faults", json={"mode": "hang"}) as r:
            assert r.status == 200

        async def refdata_called() -> bool:
            async with sim.get(f"{refdata_server.url}/_sim/stats") as r:
                return sum((await r.json())["calls"].values()) > 0

        headers = {**AUTH, **JSON, "Idempotency-Key": "key-1"}
        async with aiohttp.ClientSession(api.url, headers=headers) as http:

            async def post() -> tuple[int, bytes]:
                async with http.post("/v1/documents", data=_body()) as response:
                    return response.status, await response.read()

            first = asyncio.create_task(post())
            try:
                await wait_until(refdata_called, what="the first request to reach Reference Data")
                assert not first.done()
                async with http.post("/v1/documents", data=_body()) as response:
                    problem = await expect_problem(response, 409, "idempotency-key-in-flight")
                    assert int(response.headers["Retry-After"]) >= 1
                assert problem["retry_after"] >= 1
            finally:
                # End the hang: the first request now fails with nothing cached.
                async with sim.post(f"{refdata_server.url}/_sim/faults", json={"mode": "ok"}):
                    pass
                status, body = await asyncio.wait_for(first, timeout=10)
            assert status == 503, body
            assert json.loads(body)["type"] == "urn:oms:problem:reference-data-unavailable"
            await nothing_stored(db)

            # The key is free again once the first request has its answer.
            async with http.post("/v1/documents", data=_body()) as response:
                assert response.status == 202
                assert "Idempotent-Replayed" not in response.headers
    assert await count(db, "documents") == 1
