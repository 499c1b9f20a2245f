"""GET /openapi.json: OpenAPI 3.1 and true to the routes the app really registers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from oms.http import app as http_app
from oms.http import problems
from tests.support.api import ApiServer

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# /readyz answers 503 with its readiness report (what a probe reads), not a problem.
NOT_PROBLEMS = {("GET", "/readyz", "503")}


@pytest.fixture
async def spec(api: ApiServer) -> dict[str, Any]:
    async with aiohttp.ClientSession(api.url) as http:
        async with http.get("/openapi.json") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            document: dict[str, Any] = await response.json()
    return document


def _registered() -> set[tuple[str, str]]:
    app = http_app.make_app(1024)
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical))
    return routes


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _component(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    schemas: dict[str, Any] = spec["components"]["schemas"]
    assert ref.removeprefix(prefix) in schemas, f"dangling {ref}"
    schema: dict[str, Any] = schemas[ref.removeprefix(prefix)]
    return schema


async def test_is_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"]
    assert spec["info"]["version"]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }


async def test_documents_exactly_the_registered_routes(spec: dict[str, Any]) -> None:
    registered = _registered()
    documented = {(method, path) for method, path, _ in _operations(spec)}
    assert registered, "no routes registered"
    assert documented == registered
    assert ("POST", "/v1/documents") in documented
    assert ("POST", "/v1/documents/{document_id}/cancel") in documented


async def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))


async def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == in_path, (method, path)
        for p in operation.get("parameters", []):
            if p["in"] == "path":
                assert p["required"] is True


async def test_every_error_response_is_a_problem(spec: dict[str, Any]) -> None:
    problem_schema = {"$ref": "#/components/schemas/Problem"}
    _component(spec, problem_schema["$ref"])
    known = {t.uri for t in problems.ALL}
    for method, path, operation in _operations(spec):
        errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
        assert "500" in errors, (method, path)
        for status, response in errors.items():
            if (method, path, status) in NOT_PROBLEMS:
                continue
            assert set(response["content"]) == {"application/problem+json"}, (method, path, status)
            assert response["content"]["application/problem+json"]["schema"] == problem_schema
            named = [u for u in known if u in response["description"]]
            assert named, f"{method} {path} {status} names no problem type"


async def test_authenticated_routes_document_401_and_403(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        if path.startswith(("/v1/", "/admin/api/")):
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            assert problems.UNAUTHORIZED.uri in operation["responses"]["401"]["description"]
        else:
            assert "security" not in operation, (method, path)


async def test_request_bodies_reference_existing_components(spec: dict[str, Any]) -> None:
    bodies = {}
    for method, path, operation in _operations(spec):
        if "requestBody" not in operation:
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        bodies[(method, path)] = _component(spec, schema["$ref"])
    assert set(bodies) == {("POST", "/v1/documents"), ("POST", "/v1/documents/batch")}

    request = bodies[("POST", "/v1/documents")]
    assert {"client_reference", "document_type", "channel", "language", "brand"} <= set(
        request["required"]
    )
    assert request["additionalProperties"] is False
    assert request["properties"]["data"]["type"] == "object"
    items = bodies[("POST", "/v1/documents/batch")]["properties"]["documents"]["items"]
    assert items == {"$ref": "#/components/schemas/DocumentRequest"}


async def test_success_responses_reference_existing_components(spec: dict[str, Any]) -> None:
    created = spec["paths"]["/v1/documents"]["post"]["responses"]["202"]
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Accepted"
    }
    for method, path, operation in _operations(spec):
        ok = [s for s in operation["responses"] if int(s) < 400]
        assert ok, (method, path)


async def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        _component(spec, ref)


async def test_idempotency_key_header_is_documented(spec: dict[str, Any]) -> None:
    parameters = spec["paths"]["/v1/documents"]["post"]["parameters"]
    headers = {p["name"]: p for p in parameters if p["in"] == "header"}
    assert headers["Idempotency-Key"]["schema"]["maxLength"] == 255
    # Issue 8, item 13: the document says what the server takes (visible ASCII, no ").
    pattern = re.compile(headers["Idempotency-Key"]["schema"]["pattern"])
    assert pattern.match("order-42")
    assert pattern.match('"order-42"')
    assert not pattern.match("with space")
    assert not pattern.match("caf\u00e9")


async def test_list_query_parameters_are_documented(spec: dict[str, Any]) -> None:
    parameters = spec["paths"]["/v1/documents"]["get"]["parameters"]
    query = {p["name"] for p in parameters if p["in"] == "query"}
    assert {"status", "client_reference", "created_after", "cursor", "limit"} <= query
