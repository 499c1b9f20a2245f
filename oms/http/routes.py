"""A route described once: registered on the app and rendered into OpenAPI from the same spec."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from oms.http import problems

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["none", "source", "admin"]


class QueryParam(msgspec.Struct, frozen=True):
    name: str
    schema: dict[str, Any]
    description: str = ""


class RouteSpec(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = "source"
    request_body: Any = None
    responses: dict[int, Any]
    problems: tuple[problems.ProblemType, ...] = ()
    query: tuple[QueryParam, ...] = ()
    headers: tuple[QueryParam, ...] = ()
    content_type: str = "application/json"


def register(app: web.Application, specs: list[RouteSpec]) -> None:
    for spec in specs:
        app.router.add_route(spec.method, spec.path, spec.handler)
