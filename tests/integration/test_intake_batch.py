"""POST /v1/documents/batch: one result per item, in order; bad items never sink good ones."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.api import ApiServer, serving
from tests.support.intake import count, document, expect_problem, nothing_stored, submit, urn
from tests.support.keys import AUTH, SOURCE
from tests.support.settings import make_settings
from tests.support.sims import SimServer


async def _batch(http: aiohttp.ClientSession, items: list[Any]) -> dict[str, Any]:
    async with http.post("/v1/documents/batch", json={"documents": items}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        result: dict[str, Any] = await response.json()
    return result


def _problem(result: dict[str, Any]) -> dict[str, Any]:
    problem: dict[str, Any] = result["problem"]
    assert "document" not in result
    assert problem["status"] == result["status"]
    return problem


async def test_mixed_batch_answers_each_item_in_order(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        existing = await submit(http, document("EXISTING"))
        missing_channel = document("B-1")
        del missing_channel["channel"]
        items = [
            document("B-0"),  # valid
            missing_channel,  # schema error
            document("B-2", document_type="no_such_type"),  # unknown reference
            document("EXISTING"),  # duplicate of a stored document
            document("B-4", channel="sms", recipient={"name": "A", "phone": "+44 7700 900123"}),
            document("B-0", priority="urgent"),  # duplicate within this batch
            document("B-6", channel="email", recipient={"name": "A"}),  # channel needs email
            42,  # not an object
        ]
        body = await _batch(http, items)

    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    statuses = [r["status"] for r in results]

    # Items 0 and 5 share a client_reference: exactly one is stored, the other names it.
    assert sorted([statuses[0], statuses[5]]) == [202, 409]
    winner, loser = (0, 5) if statuses[0] == 202 else (5, 0)
    assert statuses[:5] == [statuses[0], 422, 422, 409, 202]
    assert statuses[6:] == [422, 422]
    assert body["accepted"] == 2
    assert body["rejected"] == 6

    for index in (winner, 4):
        accepted = results[index]["document"]
        assert accepted["status"] == "RECEIVED"
        assert accepted["client_reference"] == items[index]["client_reference"]
        assert accepted["links"]["self"] == f"/v1/documents/{accepted['id']}"
        assert "problem" not in results[index]

    assert _problem(results[1])["type"] == urn("validation-error")
    assert "/channel" in [e["pointer"] for e in _problem(results[1])["errors"]]
    assert _problem(results[2])["type"] == urn("unknown-reference")
    assert [e["pointer"] for e in _problem(results[2])["errors"]] == ["/document_type"]
    assert _problem(results[3])["type"] == urn("duplicate-client-reference")
    assert _problem(results[3])["document_id"] == existing["id"]
    assert _problem(results[loser])["type"] == urn("duplicate-client-reference")
    assert _problem(results[loser])["document_id"] == results[winner]["document"]["id"]
    assert [e["pointer"] for e in _problem(results[6])["errors"]] == ["/recipient/email"]
    assert _problem(results[7])["type"] == urn("validation-error")

    rows = await db.fetch("SELECT id, client_reference, priority, source_system FROM documents")
    assert {r["client_reference"] for r in rows} == {"EXISTING", "B-0", "B-4"}
    assert {r["source_system"] for r in rows} == {SOURCE}
    stored_b0 = next(r for r in rows if r["client_reference"] == "B-0")
    assert str(stored_b0["id"]) == results[winner]["document"]["id"]
    assert stored_b0["priority"] == (1 if winner == 0 else 0)
    assert await count(db, "outbox", "event_type = 'oms.document.requested'") == 3
    assert await count(db, "document_timeline") == 3


async def test_batch_documents_are_readable_one_by_one(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        body = await _batch(http, [document(f"B-{i}") for i in range(5)])
        assert (body["accepted"], body["rejected"]) == (5, 0)
        for result in body["results"]:
            async with http.get(result["document"]["links"]["self"]) as response:
                assert response.status == 200
                got = await response.json()
                assert got["client_reference"] == result["document"]["client_reference"]
                assert got["status"] == "RECEIVED"


async def test_batch_at_the_item_limit_is_taken_and_over_it_is_422(
    database_dsn: str, refdata_server: SimServer, db: asyncpg.Connection
) -> None:
    settings = make_settings(database_dsn, refdata_server.url, intake={"max_batch_items": 3})
    async with serving(settings) as api, aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post(
            "/v1/documents/batch", json={"documents": [document(f"B-{i}") for i in range(4)]}
        ) as response:
            problem = await expect_problem(response, 422, "validation-error", "/documents")
        assert problem["errors"][0]["code"] == "too_many"
        await nothing_stored(db)

        body = await _batch(http, [document(f"B-{i}") for i in range(3)])
        assert body["accepted"] == 3
    assert await count(db, "documents") == 3


async def test_batch_over_the_default_limit_is_422(api: ApiServer, db: asyncpg.Connection) -> None:
    limit = api.settings.intake.max_batch_items
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        items = [document(f"B-{i}") for i in range(limit + 1)]
        async with http.post("/v1/documents/batch", json={"documents": items}) as response:
            await expect_problem(response, 422, "validation-error", "/documents")
    await nothing_stored(db)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"documents": []}, "/documents"),
        ({"documents": "all of them"}, "/documents"),
        ({}, "/documents"),
        ({"documents": [], "extra": 1}, "/extra"),
    ],
    ids=["empty", "not-a-list", "missing", "unknown-field"],
)
async def test_invalid_batch_envelope_is_422(
    api: ApiServer, db: asyncpg.Connection, body: dict[str, Any], pointer: str
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents/batch", json=body) as response:
            await expect_problem(response, 422, "validation-error", pointer)
    await nothing_stored(db)


async def test_malformed_batch_json_is_400(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents/batch", data=b'{"documents": [') as response:
            await expect_problem(response, 400, "malformed-request")
    await nothing_stored(db)


async def test_batch_wrong_content_type_is_415(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Content-Type": "text/plain"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents/batch", data=b'{"documents": []}') as response:
            await expect_problem(response, 415, "unsupported-media-type")
    await nothing_stored(db)


async def test_idempotency_key_on_batch_is_400(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Idempotency-Key": str(uuid.uuid4())}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post(
            "/v1/documents/batch", json={"documents": [document("B-0")]}
        ) as response:
            await expect_problem(response, 400, "invalid-header")
    await nothing_stored(db)


async def test_retried_batch_stores_nothing_twice(api: ApiServer, db: asyncpg.Connection) -> None:
    items = [document(f"B-{i}") for i in range(3)]
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        first = await _batch(http, items)
        again = await _batch(http, items)
    assert first["accepted"] == 3
    assert (again["accepted"], again["rejected"]) == (0, 3)
    for before, after in zip(first["results"], again["results"], strict=True):
        assert after["status"] == 409
        assert after["problem"]["document_id"] == before["document"]["id"]
    assert await count(db, "documents") == 3
    assert await count(db, "outbox") == 3
