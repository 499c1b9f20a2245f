"""GET /v1/documents (filters, cursor pages) and POST /v1/documents/{id}/cancel."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.api import ApiServer
from tests.support.intake import count, document, expect_problem, submit
from tests.support.keys import AUTH, OTHER_AUTH

# --- listing ----------------------------------------------------------------------------------


async def _list(http: aiohttp.ClientSession, **params: str) -> dict[str, Any]:
    async with http.get("/v1/documents", params=params) as response:
        assert response.status == 200, await response.text()
        page: dict[str, Any] = await response.json()
    return page


async def _submit_many(http: aiohttp.ClientSession, n: int, prefix: str = "L") -> list[dict]:
    return [await submit(http, document(f"{prefix}-{i}")) for i in range(n)]


async def test_cursor_pages_visit_each_document_once_newest_first(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        created = await _submit_many(http, 7)
        await submit(http, document("THEIRS"), OTHER_AUTH)

        seen: list[str] = []
        sizes: list[int] = []
        params = {"limit": "3"}
        for _ in range(10):  # bounded: 3 pages expected
            page = await _list(http, **params)
            sizes.append(len(page["items"]))
            seen += [item["id"] for item in page["items"]]
            if page["next_cursor"] is None:
                break
            params = {"limit": "3", "cursor": page["next_cursor"]}

    assert sizes == [3, 3, 1]
    assert seen == [c["id"] for c in reversed(created)]


async def test_exact_multiple_of_limit_ends_with_null_cursor(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        created = await _submit_many(http, 4)
        first = await _list(http, limit="2")
        second = await _list(http, limit="2", cursor=first["next_cursor"])
    assert first["next_cursor"] is not None
    assert second["next_cursor"] is None
    assert [i["id"] for i in first["items"] + second["items"]] == [
        c["id"] for c in reversed(created)
    ]


async def test_list_items_carry_status_and_links(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("L-1", priority="urgent"))
        page = await _list(http)
    assert page["next_cursor"] is None
    (item,) = page["items"]
    assert item["id"] == accepted["id"]
    assert item["status"] == "RECEIVED"
    assert item["priority"] == "urgent"
    assert item["client_reference"] == "L-1"
    assert item["links"] == accepted["links"]


async def test_listing_shows_only_the_callers_documents(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        ours = await submit(http, document("MINE"), AUTH)
        theirs = await submit(http, document("YOURS"), OTHER_AUTH)
        async with http.get("/v1/documents", headers=AUTH) as response:
            our_page = await response.json()
        async with http.get("/v1/documents", headers=OTHER_AUTH) as response:
            their_page = await response.json()
        async with http.get(
            "/v1/documents", params={"client_reference": "YOURS"}, headers=AUTH
        ) as response:
            filtered = await response.json()
    assert [i["id"] for i in our_page["items"]] == [ours["id"]]
    assert [i["id"] for i in their_page["items"]] == [theirs["id"]]
    assert filtered == {"items": [], "next_cursor": None}


async def test_filter_by_status(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        created = await _submit_many(http, 4)
        for c in created[:2]:
            async with http.post(c["links"]["cancel"]) as response:
                assert response.status == 200
        cancelled = await _list(http, status="CANCELLED")
        received = await _list(http, status="RECEIVED")
        submitted = await _list(http, status="SUBMITTED")
    assert {i["id"] for i in cancelled["items"]} == {c["id"] for c in created[:2]}
    assert {i["status"] for i in cancelled["items"]} == {"CANCELLED"}
    assert {i["id"] for i in received["items"]} == {c["id"] for c in created[2:]}
    assert submitted["items"] == []


async def test_filter_by_client_reference(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        created = await _submit_many(http, 3)
        page = await _list(http, client_reference="L-1")
        none = await _list(http, client_reference="L-99")
    assert [i["id"] for i in page["items"]] == [created[1]["id"]]
    assert none["items"] == []


async def test_filter_by_created_after(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        created = await _submit_many(http, 5)
        after = await _list(http, created_after=created[1]["created_at"])
        future = await _list(http, created_after="2999-01-01T00:00:00Z")
        past = await _list(http, created_after="2000-01-01")  # naive: taken as UTC
    assert [i["id"] for i in after["items"]] == [c["id"] for c in reversed(created[2:])]
    assert future["items"] == []
    assert len(past["items"]) == 5


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"status": "DONE"},
        {"status": "received"},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "100000"},
        {"cursor": "!!!"},
        {"cursor": "bm90LWpzb24"},  # "not-json"
        {"cursor": _cursor(b'["2024-01-01T00:00:00Z","not-a-uuid"]')},
        {"cursor": _cursor(b"[1, 2, 3]")},
        {"created_after": "yesterday"},
        {"created_after": "2024-13-45"},
        {"created_before": "soon"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items())[:40],
)
async def test_invalid_list_query_is_400(api: ApiServer, params: dict[str, str]) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.get("/v1/documents", params=params) as response:
            problem = await expect_problem(response, 400, "invalid-query")
    assert problem["detail"]


# --- cancel -----------------------------------------------------------------------------------


async def _cancelled_events(db: asyncpg.Connection, document_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM outbox WHERE event_type = 'oms.document.cancelled' AND message_key = $1",
        document_id,
    )


async def test_cancel_received_document(api: ApiServer, db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        async with http.post(accepted["links"]["cancel"]) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            cancelled = await response.json()

    assert cancelled["id"] == accepted["id"]
    assert cancelled["status"] == "CANCELLED"
    assert [(t["from_status"], t["to_status"]) for t in cancelled["timeline"]] == [
        (None, "RECEIVED"),
        ("RECEIVED", "CANCELLED"),
    ]
    assert cancelled["timeline"][-1]["actor"] == "source:acme-policy"

    document_id = uuid.UUID(accepted["id"])
    assert await db.fetchval("SELECT status FROM documents WHERE id = $1", document_id) == (
        "CANCELLED"
    )
    timeline = await db.fetch(
        "SELECT from_status, to_status FROM document_timeline WHERE document_id = $1 ORDER BY id",
        document_id,
    )
    assert [tuple(t) for t in timeline] == [(None, "RECEIVED"), ("RECEIVED", "CANCELLED")]
    events = await _cancelled_events(db, accepted["id"])
    assert len(events) == 1
    assert events[0]["topic"] == "oms.document.status"
    assert events[0]["subject"] == accepted["id"]


async def test_cancel_is_idempotent(api: ApiServer, db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        for _ in range(2):
            async with http.post(accepted["links"]["cancel"]) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "CANCELLED"
    assert len(await _cancelled_events(db, accepted["id"])) == 1
    assert await count(db, "document_timeline") == 2


@pytest.mark.parametrize("status", ["SUBMITTED", "COMPLETED", "FAILED"])
async def test_cancel_after_hand_over_or_final_is_409(
    api: ApiServer, db: asyncpg.Connection, status: str
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        document_id = uuid.UUID(accepted["id"])
        await db.execute("UPDATE documents SET status = $2 WHERE id = $1", document_id, status)
        async with http.post(accepted["links"]["cancel"]) as response:
            problem = await expect_problem(response, 409, "cancel-rejected")
    assert problem["current_status"] == status
    assert await db.fetchval("SELECT status FROM documents WHERE id = $1", document_id) == status
    assert await _cancelled_events(db, accepted["id"]) == []
    assert await count(db, "document_timeline") == 1


async def test_cancel_while_processing_under_a_lease_is_409(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        document_id = uuid.UUID(accepted["id"])
        await db.execute(
            """UPDATE documents SET status = 'PROCESSING', lease_owner = 'worker-1',
                   lease_expires_at = now() + interval '5 minutes'
               WHERE id = $1""",
            document_id,
        )
        async with http.post(accepted["links"]["cancel"]) as response:
            problem = await expect_problem(response, 409, "cancel-rejected")
    assert problem["current_status"] == "PROCESSING"
    row = await db.fetchrow("SELECT status, lease_owner FROM documents WHERE id = $1", document_id)
    assert tuple(row) == ("PROCESSING", "worker-1")
    assert await _cancelled_events(db, accepted["id"]) == []


async def test_cancel_while_waiting_for_a_retry_succeeds(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        document_id = uuid.UUID(accepted["id"])
        await db.execute(
            """UPDATE documents SET status = 'PROCESSING', lease_owner = NULL, attempts = 1,
                   next_attempt_at = now() + interval '1 minute'
               WHERE id = $1""",
            document_id,
        )
        async with http.post(accepted["links"]["cancel"]) as response:
            assert response.status == 200
            cancelled = await response.json()
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["next_attempt_at"] is None
    assert (cancelled["timeline"][-1]["from_status"], cancelled["timeline"][-1]["to_status"]) == (
        "PROCESSING",
        "CANCELLED",
    )
    assert len(await _cancelled_events(db, accepted["id"])) == 1


async def test_cancel_while_a_submissions_outcome_is_unknown_is_409(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    """Waiting for a retry, but its last batch may be at Thunderhead: cancel must lose."""
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("C-1"))
        document_id = uuid.UUID(accepted["id"])
        batch_id = uuid.uuid4()
        await db.execute(
            """INSERT INTO thunderhead_batches (id, batch_config_res_id, status, document_count)
               VALUES ($1, '1335501440', 'RECONCILING', 1)""",
            batch_id,
        )
        await db.execute(
            """UPDATE documents SET status = 'PROCESSING', lease_owner = NULL, attempts = 1,
                   next_attempt_at = now() + interval '1 minute', batch_id = $2
               WHERE id = $1""",
            document_id,
            batch_id,
        )
        async with http.post(accepted["links"]["cancel"]) as response:
            problem = await expect_problem(response, 409, "cancel-rejected")
    assert problem["current_status"] == "PROCESSING"
    assert await _cancelled_events(db, accepted["id"]) == []
