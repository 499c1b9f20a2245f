"""Reference Data down: a warm cache keeps intake validating; a cold one answers 503."""

from __future__ import annotations

import aiohttp
import asyncpg

from tests.support.api import ApiServer
from tests.support.intake import count, document, expect_problem, nothing_stored, submit
from tests.support.keys import AUTH
from tests.support.sims import SimServer


async def _stats(refdata_server: SimServer) -> dict[str, int]:
    async with aiohttp.ClientSession() as sim:
        async with sim.get(f"{refdata_server.url}/_sim/stats") as response:
            calls: dict[str, int] = (await response.json())["calls"]
    return calls


async def test_warm_cache_keeps_validating_while_reference_data_is_down(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        await submit(http, document("W-1"))
        assert sum((await _stats(refdata_server)).values()) > 0  # it was asked, once warm
        await refdata_server.stop()

        accepted = await submit(http, document("W-2", priority="urgent"))
        # Still validated against the cached data, not waved through:
        async with http.post("/v1/documents", json=document("W-3", language="es")) as response:
            await expect_problem(response, 422, "unknown-reference", "/language")
        async with http.get(accepted["links"]["self"]) as response:
            assert response.status == 200

    assert await count(db, "documents") == 2
    assert await count(db, "outbox") == 2


async def test_warm_cache_does_not_cover_what_was_never_fetched(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        await submit(http, document("W-1"))
        await refdata_server.stop()
        # brand globex was never looked up: nothing to serve it from
        body = document("W-2", language="fr", brand="globex")
        async with http.post("/v1/documents", json=body) as response:
            await expect_problem(response, 503, "reference-data-unavailable")
            assert int(response.headers["Retry-After"]) > 0
    assert await count(db, "documents") == 1


async def test_cold_cache_with_reference_data_down_is_503_and_stores_nothing(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    await refdata_server.stop()
    headers = {**AUTH, "Idempotency-Key": "cold-1"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", json=document("C-1")) as response:
            problem = await expect_problem(response, 503, "reference-data-unavailable")
            retry_after = response.headers["Retry-After"]
    assert int(retry_after) > 0
    assert problem["retry_after"] == int(retry_after)
    await nothing_stored(db)


async def test_cold_cache_batch_is_503_and_stores_nothing(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    await refdata_server.stop()
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        items = [document("C-1"), document("C-2")]
        async with http.post("/v1/documents/batch", json={"documents": items}) as response:
            await expect_problem(response, 503, "reference-data-unavailable")
            assert int(response.headers["Retry-After"]) > 0
    await nothing_stored(db)


async def test_reference_data_errors_with_cold_cache_are_503(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession() as sim:
        faults = {"mode": "error", "status": 502}
        async with sim.post(f"{refdata_server.url}/_sim/faults", json=faults) as response:
            assert response.status == 200
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=document("E-1")) as response:
            await expect_problem(response, 503, "reference-data-unavailable")
    await nothing_stored(db)


async def test_schema_errors_need_no_reference_data(
    api: ApiServer, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    """A request that is wrong on its face gets its 422 even while Reference Data is down."""
    await refdata_server.stop()
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        body = document("S-1", recipient={"name": "Ada"})  # email channel, no email
        async with http.post("/v1/documents", json=body) as response:
            await expect_problem(response, 422, "validation-error", "/recipient/email")
    await nothing_stored(db)
