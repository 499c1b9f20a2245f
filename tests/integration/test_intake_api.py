"""POST /v1/documents and GET /v1/documents/{id} over real HTTP: what is answered, what is stored.

Every error must be ``application/problem+json`` with its stable ``type`` and, for a bad
field, a JSON Pointer naming it; the database proves nothing was stored for a rejection.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.api import ApiServer
from tests.support.intake import count, document, expect_problem, nothing_stored, submit
from tests.support.keys import ADMIN_AUTH, AUTH, OTHER_AUTH, SOURCE
from tests.support.whole_oms import RunningOms

# A well-formed id no document has (fixed, so every test process collects the same tests).
NO_SUCH_ID = "00000000-0000-7000-8000-000000000000"

ROUTES = [
    ("POST", "/v1/documents"),
    ("POST", "/v1/documents/batch"),
    ("GET", "/v1/documents"),
    ("GET", f"/v1/documents/{NO_SUCH_ID}"),
    ("POST", f"/v1/documents/{NO_SUCH_ID}/cancel"),
]


# --- the happy path ------------------------------------------------------------------------


async def test_accepted_request_is_stored_with_timeline_and_one_event(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**AUTH, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", json=document("R-1", priority="urgent")) as response:
            assert response.status == 202
            assert response.content_type == "application/json"
            accepted = await response.json()
            location = response.headers["Location"]

    document_id = uuid.UUID(accepted["id"])
    assert accepted["status"] == "RECEIVED"
    assert accepted["client_reference"] == "R-1"
    assert accepted["created_at"]
    assert location == f"/v1/documents/{document_id}"
    assert accepted["links"] == {"self": location, "cancel": f"{location}/cancel"}

    row = await db.fetchrow("SELECT * FROM documents WHERE id = $1", document_id)
    assert row is not None
    assert row["source_system"] == SOURCE
    assert row["client_reference"] == "R-1"
    assert row["status"] == "RECEIVED"
    assert row["priority"] == 0  # urgent sorts first
    assert (row["document_type"], row["channel"], row["language"], row["brand"]) == (
        "policy_renewal_notice",
        "email",
        "en",
        "acme",
    )
    assert json.loads(row["data"]) == {"policy_number": "P-1"}
    assert json.loads(row["recipient"])["email"] == "ada@example.com"
    assert row["trace_id"] == trace

    timeline = await db.fetch(
        "SELECT actor, from_status, to_status FROM document_timeline WHERE document_id = $1",
        document_id,
    )
    assert [tuple(t) for t in timeline] == [("intake", None, "RECEIVED")]

    events = await db.fetch("SELECT * FROM outbox")
    assert len(events) == 1
    event = events[0]
    assert event["event_type"] == "oms.document.requested"
    assert event["topic"] == "oms.document.requested"
    assert event["message_key"] == str(document_id)
    assert event["published_at"] is None
    payload = json.loads(event["payload"])
    assert payload["document_id"] == str(document_id)
    assert payload["source_system"] == SOURCE
    assert payload["priority"] == "urgent"


async def test_get_returns_status_priority_and_timeline(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("R-1", priority="bulk"))
        async with http.get(accepted["links"]["self"]) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            got = await response.json()
    assert got["id"] == accepted["id"]
    assert got["status"] == "RECEIVED"
    assert got["priority"] == "bulk"
    assert got["client_reference"] == "R-1"
    assert got["links"] == accepted["links"]
    assert [(t["actor"], t["from_status"], t["to_status"]) for t in got["timeline"]] == [
        ("intake", None, "RECEIVED")
    ]


async def test_priority_defaults_to_normal(api: ApiServer, db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        accepted = await submit(http, document("R-1"))
        async with http.get(accepted["links"]["self"]) as response:
            assert (await response.json())["priority"] == "normal"
    assert await db.fetchval("SELECT priority FROM documents") == 1


@pytest.mark.parametrize(
    ("channel", "recipient"),
    [
        ("print", {"name": "Ada", "address": {"lines": ["1 Main St"], "country": "GB"}}),
        ("sms", {"name": "Ada", "phone": "+44 7700 900123"}),
        ("archive", {"name": "Ada"}),
    ],
)
async def test_each_channel_is_accepted_with_what_it_needs(
    api: ApiServer, channel: str, recipient: dict[str, Any]
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        await submit(http, document("R-1", channel=channel, recipient=recipient))


# --- authentication and authorization ---------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Bearer not-an-api-key",
        "Bearer oms_nosuchkey_secret-secret-secret",
        "Bearer oms_acme_the-wrong-secret",
    ],
    ids=["no-header", "wrong-scheme", "no-token", "malformed", "unknown", "wrong-secret"],
)
async def test_unauthenticated_is_401_with_www_authenticate(
    api: ApiServer, db: asyncpg.Connection, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with aiohttp.ClientSession(api.url) as http:
        async with http.post("/v1/documents", json=document(), headers=headers) as response:
            await expect_problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await nothing_stored(db)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_v1_route_needs_a_key(api: ApiServer, method: str, path: str) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        async with http.request(method, path, json={}) as response:
            await expect_problem(response, 401, "unauthorized")
            assert "WWW-Authenticate" in response.headers


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_admin_key_is_forbidden_on_v1(
    api: ApiServer, db: asyncpg.Connection, method: str, path: str
) -> None:
    body = {"documents": [document()]} if path.endswith("batch") else document()
    async with aiohttp.ClientSession(api.url, headers=ADMIN_AUTH) as http:
        async with http.request(method, path, json=body) as response:
            await expect_problem(response, 403, "forbidden")
    await nothing_stored(db)


# --- the body: JSON, media type, size ---------------------------------------------------------


async def test_malformed_json_is_400(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=b'{"client_reference": "R-1",') as response:
            await expect_problem(response, 400, "malformed-request")
    await nothing_stored(db)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_wrong_content_type_is_415(
    api: ApiServer, db: asyncpg.Connection, content_type: str
) -> None:
    body = json.dumps(document()).encode()
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        headers = {"Content-Type": content_type}
        async with http.post("/v1/documents", data=body, headers=headers) as response:
            await expect_problem(response, 415, "unsupported-media-type")
    await nothing_stored(db)


async def test_body_over_max_body_bytes_is_413(api: ApiServer, db: asyncpg.Connection) -> None:
    limit = api.settings.intake.max_body_bytes
    big = document(data={"blob": "x" * limit})
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=big) as response:
            problem = await expect_problem(response, 413, "payload-too-large")
    assert str(limit) in problem["detail"]
    await nothing_stored(db)


async def test_chunked_body_over_max_body_bytes_is_413(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    """Without a Content-Length the limit holds while reading."""
    limit = api.settings.intake.max_body_bytes
    payload = json.dumps(document(data={"blob": "x" * limit})).encode()

    async def chunks() -> Any:
        for start in range(0, len(payload), 16_384):
            yield payload[start : start + 16_384]

    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=chunks()) as response:
            await expect_problem(response, 413, "payload-too-large")
    await nothing_stored(db)


# --- the schema -------------------------------------------------------------------------------


def _without(field: str) -> dict[str, Any]:
    body = document()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (document(colour="blue"), "/colour"),
        (document(recipient={"name": "Ada", "email": "a@b.example", "age": 3}), "/recipient/age"),
        (document(client_reference=42), "/client_reference"),
        (document(priority="whenever"), "/priority"),
        (document(channel="fax"), "/channel"),
        (document(language="english"), "/language"),
        (document(recipient={"name": "Ada", "email": "not-an-email"}), "/recipient/email"),
        (document(recipient="Ada"), "/recipient"),
        (_without("document_type"), "/document_type"),
        (_without("recipient"), "/recipient"),
        (document(recipient={"email": "a@b.example"}), "/recipient/name"),
        (
            document(
                channel="print",
                recipient={"name": "Ada", "address": {"lines": [], "country": "GB"}},
            ),
            "/recipient/address/lines",
        ),
    ],
    ids=[
        "unknown-field",
        "unknown-nested-field",
        "wrong-type",
        "bad-enum",
        "unknown-channel",
        "bad-language",
        "bad-email",
        "recipient-not-object",
        "missing-document-type",
        "missing-recipient",
        "missing-nested-name",
        "empty-address-lines",
    ],
)
async def test_schema_violation_is_422_naming_the_field(
    api: ApiServer, db: asyncpg.Connection, body: dict[str, Any], pointer: str
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=body) as response:
            await expect_problem(response, 422, "validation-error", pointer)
    await nothing_stored(db)


@pytest.mark.parametrize(
    ("channel", "recipient", "pointer"),
    [
        ("email", {"name": "Ada", "phone": "+44 7700 900123"}, "/recipient/email"),
        ("sms", {"name": "Ada", "email": "ada@example.com"}, "/recipient/phone"),
        ("print", {"name": "Ada", "email": "ada@example.com"}, "/recipient/address"),
    ],
)
async def test_channel_without_the_recipient_field_it_needs_is_422(
    api: ApiServer, db: asyncpg.Connection, channel: str, recipient: dict[str, Any], pointer: str
) -> None:
    body = document(channel=channel, recipient=recipient)
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=body) as response:
            problem = await expect_problem(response, 422, "validation-error", pointer)
    assert problem["errors"][0]["code"] == "required"
    await nothing_stored(db)


async def test_data_over_max_data_bytes_is_422(api: ApiServer, db: asyncpg.Connection) -> None:
    limit = api.settings.intake.max_data_bytes
    assert limit + 1024 < api.settings.intake.max_body_bytes  # under the body cap: a 422
    body = document(data={"blob": "x" * limit})
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=body) as response:
            problem = await expect_problem(response, 422, "validation-error", "/data")
    assert problem["errors"][0]["code"] == "too_large"
    await nothing_stored(db)


@pytest.mark.parametrize("data", [[1, 2], "text", 42, None, True])
async def test_data_that_is_not_an_object_is_422(
    api: ApiServer, db: asyncpg.Connection, data: object
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=document(data=data)) as response:
            await expect_problem(response, 422, "validation-error", "/data")
    await nothing_stored(db)


async def test_body_that_is_not_an_object_is_422(api: ApiServer, db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=[document()]) as response:
            await expect_problem(response, 422, "validation-error")
    await nothing_stored(db)


# --- Reference Data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "pointer", "code"),
    [
        ({"document_type": "no_such_type"}, "/document_type", "unknown"),
        ({"document_type": "no_claims_certificate"}, "/document_type", "inactive"),
        ({"brand": "nosuchbrand"}, "/brand", "unknown"),
        ({"brand": "legacyco"}, "/brand", "inactive"),
        # premium_statement has no sms template at all
        (
            {"document_type": "premium_statement", "channel": "sms", "recipient": {
                "name": "Ada", "phone": "+44 7700 900123"}},
            "/channel",
            "unknown",
        ),
        # policy_renewal_notice has email templates, none in Spanish
        ({"language": "es"}, "/language", "unknown"),
        # premium_statement's only German email template (initech) is inactive
        ({"document_type": "premium_statement", "language": "de", "brand": "initech"},
         "/language", "unknown"),
        # active brand, active email/en template, but not for this brand
        ({"brand": "globex"}, "/brand", "unknown"),
    ],
    ids=[
        "unknown-type",
        "inactive-type",
        "unknown-brand",
        "inactive-brand",
        "channel-without-template",
        "language-without-template",
        "language-template-inactive",
        "brand-without-template",
    ],
)  # fmt: skip
async def test_unknown_or_inactive_reference_is_422_naming_the_field(
    api: ApiServer,
    db: asyncpg.Connection,
    overrides: dict[str, Any],
    pointer: str,
    code: str,
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=document(**overrides)) as response:
            problem = await expect_problem(response, 422, "unknown-reference", pointer)
    assert len(problem["errors"]) == 1
    assert problem["errors"][0]["code"] == code
    await nothing_stored(db)


# --- duplicates -------------------------------------------------------------------------------


async def test_duplicate_client_reference_is_409_naming_the_first(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        first = await submit(http, document("R-1"))
        again = document("R-1", priority="urgent", data={"policy_number": "P-2"})
        async with http.post("/v1/documents", json=again) as response:
            problem = await expect_problem(response, 409, "duplicate-client-reference")
    assert problem["document_id"] == first["id"]
    assert await count(db, "documents") == 1
    assert await count(db, "outbox") == 1
    assert await count(db, "document_timeline") == 1
    assert await db.fetchval("SELECT priority FROM documents") == 1  # the first is untouched


async def test_client_reference_is_unique_per_source_system_only(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        ours = await submit(http, document("R-1"), AUTH)
        theirs = await submit(http, document("R-1"), OTHER_AUTH)
    assert ours["id"] != theirs["id"]
    assert await count(db, "documents", "client_reference = 'R-1'") == 2


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("document_id", [NO_SUCH_ID, "not-a-uuid", "12345"])
async def test_unknown_or_malformed_id_is_404(api: ApiServer, document_id: str) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.get(f"/v1/documents/{document_id}") as response:
            await expect_problem(response, 404, "not-found")
        async with http.post(f"/v1/documents/{document_id}/cancel") as response:
            await expect_problem(response, 404, "not-found")


async def test_unknown_path_is_404_problem(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.get("/v1/nothing-here") as response:
            await expect_problem(response, 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/documents"),
        ("PUT", "/v1/documents"),
        ("DELETE", f"/v1/documents/{NO_SUCH_ID}"),
        ("GET", f"/v1/documents/{NO_SUCH_ID}/cancel"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_405_with_allow(api: ApiServer, method: str, path: str) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.request(method, path) as response:
            await expect_problem(response, 405, "method-not-allowed")
            assert response.headers["Allow"]
            assert method not in response.headers["Allow"].split(",")


async def test_another_source_systems_document_is_404(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        accepted = await submit(http, document("R-1"), AUTH)
        path = accepted["links"]["self"]
        async with http.get(path, headers=OTHER_AUTH) as response:
            await expect_problem(response, 404, "not-found")
        async with http.post(f"{path}/cancel", headers=OTHER_AUTH) as response:
            await expect_problem(response, 404, "not-found")
        async with http.get(path, headers=AUTH) as response:
            assert response.status == 200
    assert await db.fetchval("SELECT status FROM documents") == "RECEIVED"
    assert await count(db, "outbox", "event_type = 'oms.document.cancelled'") == 0


# --- ops endpoints ----------------------------------------------------------------------------


async def test_healthz(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as http:
        async with http.get("/healthz") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert (await response.json())["status"] == "ok"


async def test_readyz_reports_database_and_migrations(oms: RunningOms) -> None:
    async with aiohttp.ClientSession(oms.url) as http:
        async with http.get("/readyz") as response:
            assert response.status == 200
            report = await response.json()
    assert report["ready"] is True
    assert report["checks"]["database"] == "ok"
    assert report["checks"]["migrations"] == "ok"


async def test_metrics_count_intake_requests(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        await submit(http, document("R-1"))
        async with http.get("/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    assert "# TYPE oms_intake_requests_total counter" in text
    assert 'oms_intake_requests_total{route="/v1/documents",status="202"}' in text
