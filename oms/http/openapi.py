"""OpenAPI 3.1, generated from the route specs and their msgspec types.

The app registers its routes from the same specs, so the document cannot drift
from the routes; problem shapes come from the one problem catalog.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from oms.http import problems
from oms.http.routes import RouteSpec

_REF = "#/components/schemas/{name}"


def build(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    types: list[Any] = [problems.Problem]
    for spec in specs:
        if spec.request_body is not None:
            types.append(spec.request_body)
        types.extend(t for t in spec.responses.values() if t is not str)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        operation: dict[str, Any] = {
            "operationId": spec.handler.__name__,
            "summary": spec.summary,
            "responses": {},
        }
        if spec.auth != "none":
            operation["security"] = [{"bearerAuth": []}]
        parameters = [
            {"name": p.name, "in": "query", "schema": p.schema, "description": p.description}
            for p in spec.query
        ] + [
            {"name": p.name, "in": "header", "schema": p.schema, "description": p.description}
            for p in spec.headers
        ]
        parameters += [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(spec.path)
        ]
        if parameters:
            operation["parameters"] = parameters
        if spec.request_body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[id(spec.request_body)]}},
            }
        for status, body_type in spec.responses.items():
            schema = {"type": "string"} if body_type is str else schema_of[id(body_type)]
            operation["responses"][str(status)] = {
                "description": spec.summary if status < 400 else "not ready",
                "content": {spec.content_type: {"schema": schema}},
            }
        by_status: dict[int, list[problems.ProblemType]] = {}
        for problem_type in (*spec.problems, problems.INTERNAL):
            by_status.setdefault(problem_type.status, []).append(problem_type)
        for status, types_here in sorted(by_status.items()):
            operation["responses"][str(status)] = {
                "description": "; ".join(f"{t.uri}: {t.title}" for t in types_here),
                "content": {problems.CONTENT_TYPE: {"schema": schema_of[id(problems.Problem)]}},
            }
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OMS — Output Management System",
            "version": version,
            "description": "Errors are RFC 9457 problem details; each `type` is stable.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


OPENAPI = web.AppKey("openapi", bytes)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


ROUTE = RouteSpec(
    method="GET",
    path="/openapi.json",
    handler=openapi_json,
    summary="This API's OpenAPI 3.1 document",
    auth="none",
    responses={200: dict},
)


def encode(document: dict[str, Any]) -> bytes:
    return msgspec.json.encode(document)
