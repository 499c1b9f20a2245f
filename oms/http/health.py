"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import prometheus_client
from aiohttp import web

from oms.http.routes import RouteSpec


class ReadinessReport(msgspec.Struct, frozen=True):
    ready: bool
    checks: dict[str, str]


ReadinessProbe = Callable[[], Awaitable[ReadinessReport]]
READINESS = web.AppKey[ReadinessProbe]("readiness")


class Alive(msgspec.Struct, frozen=True):
    status: str = "ok"


_encoder = msgspec.json.Encoder()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_encoder.encode(Alive()), content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READINESS]()
    return web.Response(
        status=200 if report.ready else 503,
        body=_encoder.encode(report),
        content_type="application/json",
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=prometheus_client.generate_latest(),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


ROUTES = [
    RouteSpec(
        method="GET",
        path="/healthz",
        handler=healthz,
        summary="Alive: the process answers",
        auth="none",
        responses={200: Alive},
    ),
    RouteSpec(
        method="GET",
        path="/readyz",
        handler=readyz,
        summary="Ready: database reachable, schema up to date, Thunderhead answering",
        auth="none",
        responses={200: ReadinessReport, 503: ReadinessReport},
    ),
    RouteSpec(
        method="GET",
        path="/metrics",
        handler=metrics,
        summary="Prometheus metrics",
        auth="none",
        responses={200: str},
        content_type="text/plain",
    ),
]
