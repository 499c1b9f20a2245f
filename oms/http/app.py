"""The aiohttp application: routes, problem+json for every error, auth, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from importlib import metadata

import asyncpg
from aiohttp import web

from oms import config, exceptions, metrics
from oms.db.pool import CONNECTION_ERRORS
from oms.http import admin, auth, health, intake, openapi, problems
from oms.http.routes import Handler, RouteSpec, register
from oms.intake.service import IntakeService

logger = logging.getLogger(__name__)

AUTHENTICATOR = web.AppKey("authenticator", auth.Authenticator)
_AUTH_BY_ROUTE = web.AppKey("auth_by_route", dict)


def all_routes() -> list[RouteSpec]:
    return [*intake.ROUTES, *admin.ROUTES, *health.ROUTES, openapi.ROUTE]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as RFC 9457 problem+json, and every request is counted."""
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except exceptions.OmsError as exc:
        problem = problems.from_exception(exc)
        if problem.status >= 500:
            logger.warning("request failed: %s", exc, extra={"route": route_name})
        response = problems.response(problem, _auth_headers(problem))
    except web.HTTPException as exc:
        response = _http_exception(exc)
    except CONNECTION_ERRORS as exc:
        logger.warning("database unavailable: %s", exc, extra={"route": route_name})
        response = problems.response(problems.from_exception(exceptions.DatabaseError()))
    except Exception:
        logger.exception("unexpected error", extra={"route": route_name})
        response = problems.response(problems.build(problems.INTERNAL))
    metrics.INTAKE_REQUESTS.labels(route_name, str(response.status)).inc()
    metrics.INTAKE_LATENCY.labels(route_name).observe(time.perf_counter() - started)
    return response


def _auth_headers(problem: problems.Problem) -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="oms"'} if problem.status == 401 else {}


def _http_exception(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc
    by_status = {
        404: problems.NOT_FOUND,
        405: problems.METHOD_NOT_ALLOWED,
        413: problems.TOO_LARGE,
    }
    problem_type = by_status.get(exc.status)
    if problem_type is None:
        problem = problems.Problem(
            type="about:blank", title=exc.reason, status=exc.status, detail=exc.text
        )
    else:
        problem = problems.build(problem_type, exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return problems.response(problem, headers)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    needed = request.app[_AUTH_BY_ROUTE].get(
        (request.method, resource.canonical if resource else ""), "none"
    )
    if needed != "none":
        principal = await request.app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization")
        )
        if principal.role != needed:
            raise exceptions.Forbidden(f"this endpoint needs a {needed} key")
        request[auth.PRINCIPAL] = principal
    return await handler(request)


def make_app(client_max_size: int) -> web.Application:
    """An app with every route; the caller fills the service AppKeys before it starts."""
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware], client_max_size=client_max_size
    )
    specs = all_routes()
    register(app, specs)
    app[_AUTH_BY_ROUTE] = {(s.method, s.path): s.auth for s in specs}
    app[openapi.OPENAPI] = openapi.encode(openapi.build(specs, _version()))
    return app


def make_api(
    settings: config.Settings,
    db: asyncpg.Pool,
    intake_service: IntakeService,
    authenticator: auth.Authenticator,
    readiness: health.ReadinessProbe,
    pools: Mapping[str, admin.Pausable],
    poke_relay: Callable[[], None],
) -> web.Application:
    """The app OMS serves, wired to its services: one builder for ``app.run`` and the tests."""
    app = make_app(settings.intake.max_batch_body_bytes + 4096)
    app[intake.SETTINGS] = settings
    app[intake.DB] = db
    app[intake.INTAKE] = intake_service
    app[AUTHENTICATOR] = authenticator
    app[health.READINESS] = readiness
    app[admin.POOLS] = dict(pools)
    app[admin.POKE_RELAY] = poke_relay
    return app


def _version() -> str:
    try:
        return metadata.version("oms")
    except metadata.PackageNotFoundError:
        return "0.0.0"
