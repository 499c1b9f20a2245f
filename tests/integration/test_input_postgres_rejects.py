"""Input PostgreSQL (or the body decoder) would reject answers 4xx problem+json, never 5xx.

Issue 8, item 2: each input below once gave a 500 (or a text/plain 400).
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import aiohttp
import asyncpg
import pytest

from tests.support.api import ApiServer
from tests.support.intake import count, document, expect_problem
from tests.support.keys import ADMIN_AUTH, AUTH


@pytest.mark.parametrize(
    "query",
    [
        "client_reference=a%00b",
        "created_after=9999-12-31T23:59:59-23:59",
        "created_after=0001-01-01T00:00:00%2B23:59",
        "created_before=9999-12-31T23:59:59-23:59",
        "created_before=0001-01-01T00:00:00%2B23:59",
        "status=RECEIVED%00",
    ],
)
async def test_a_list_query_postgres_cannot_take_is_400(api: ApiServer, query: str) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.get(f"/v1/documents?{query}") as response:
            await expect_problem(response, 400, "invalid-query")


async def test_a_cursor_carrying_an_out_of_range_date_is_400(api: ApiServer) -> None:
    for date in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        raw = json.dumps([date, "00000000-0000-7000-8000-000000000000"]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
            async with http.get("/v1/documents", params={"cursor": cursor}) as response:
                await expect_problem(response, 400, "invalid-query")


@pytest.mark.parametrize("after", ["9223372036854775808", "-1", "99999999999999999999999"])
async def test_a_dead_events_page_after_a_bigint_is_400(api: ApiServer, after: str) -> None:
    async with aiohttp.ClientSession(api.url, headers=ADMIN_AUTH) as http:
        async with http.get("/admin/api/outbox/dead", params={"after": after}) as response:
            await expect_problem(response, 400, "invalid-query")


@pytest.mark.parametrize("outbox_id", ["9223372036854775808", "-5", "1e3"])
async def test_republishing_an_id_that_cannot_exist_is_404(api: ApiServer, outbox_id: str) -> None:
    async with aiohttp.ClientSession(api.url, headers=ADMIN_AUTH) as http:
        async with http.post(f"/admin/api/outbox/{outbox_id}/republish") as response:
            await expect_problem(response, 404, "not-found")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decode_is_400_and_nothing_is_stored(
    api: ApiServer, db: asyncpg.Connection, encoding: str
) -> None:
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding}
    async with aiohttp.ClientSession(api.url) as http:
        async with http.post("/v1/documents", data=b"not compressed at all", headers=headers) as r:
            await expect_problem(r, 400, "malformed-request")
    assert await count(db, "documents") == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_decodes_is_accepted(api: ApiServer, encoding: str) -> None:
    raw = json.dumps(document(f"Z-{encoding}")).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding}
    async with aiohttp.ClientSession(api.url) as http:
        async with http.post("/v1/documents", data=body, headers=headers) as response:
            assert response.status == 202, await response.text()


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
async def test_a_content_encoding_oms_does_not_take_is_415(api: ApiServer, encoding: str) -> None:
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding}
    async with aiohttp.ClientSession(api.url) as http:
        async with http.post("/v1/documents", data=b"\x00\x01\x02", headers=headers) as r:
            problem = await expect_problem(r, 415, "unsupported-media-type")
    assert "Content-Encoding" in problem["detail"]


async def test_a_compressed_body_that_decodes_past_the_limit_is_413(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")  # ~64 KB that inflates to 64 MB
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession(api.url) as http:
        async with http.post("/v1/documents/batch", data=bomb, headers=headers) as response:
            await expect_problem(response, 413, "payload-too-large")
    assert await count(db, "documents") == 0
