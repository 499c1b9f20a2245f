"""The admin API under /admin/api (admin keys only): the error table, pools, any document.

The admin UI (a later issue) is built on these calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

import msgspec
from aiohttp import web

from oms import domain, exceptions
from oms.http import intake, problems
from oms.http.routes import QueryParam, RouteSpec
from oms.intake import service as intake_service
from oms.store import documents, outbox


class Pausable(Protocol):
    @property
    def paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


POOLS = web.AppKey("pools", dict)
POKE_RELAY = web.AppKey("poke_relay", Callable)  # type: ignore[type-abstract]
_MAX_ID = 2**63 - 1  # outbox ids are PostgreSQL bigints


class PoolState(msgspec.Struct, frozen=True):
    name: str
    paused: bool


class DeadPage(msgspec.Struct, frozen=True):
    items: list[outbox.DeadRow]
    next_after: int | None


class Backlog(msgspec.Struct, frozen=True):
    unpublished: int
    oldest_age_s: float
    dead: int


class Republished(msgspec.Struct, frozen=True):
    id: int
    republished: bool = True


def _pool(request: web.Request) -> Pausable:
    pool: Pausable | None = request.app[POOLS].get(request.match_info["name"])
    if pool is None:
        raise exceptions.DocumentNotFound("no such pool")
    return pool


def _pool_states(request: web.Request) -> list[PoolState]:
    return [PoolState(name, p.paused) for name, p in request.app[POOLS].items()]


async def list_pools(request: web.Request) -> web.Response:
    return intake.json_response(_pool_states(request))


async def pause_pool(request: web.Request) -> web.Response:
    pool = _pool(request)
    pool.pause()
    return intake.json_response(PoolState(request.match_info["name"], pool.paused))


async def resume_pool(request: web.Request) -> web.Response:
    pool = _pool(request)
    pool.resume()
    return intake.json_response(PoolState(request.match_info["name"], pool.paused))


async def dead_events(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", 50))
        after = int(request.query["after"]) if "after" in request.query else None
    except ValueError as exc:
        raise exceptions.InvalidQuery("limit and after must be integers") from exc
    if not 1 <= limit <= 500:
        raise exceptions.InvalidQuery("limit must be between 1 and 500")
    if after is not None and not 0 <= after <= _MAX_ID:
        raise exceptions.InvalidQuery(f"after must be between 0 and {_MAX_ID}")
    async with request.app[intake.DB].acquire() as conn:
        rows = await outbox.list_dead(conn, limit + 1, after)
    page = rows[:limit]
    return intake.json_response(DeadPage(page, page[-1].id if len(rows) > limit and page else None))


async def backlog(request: web.Request) -> web.Response:
    async with request.app[intake.DB].acquire() as conn:
        found = await outbox.backlog(conn)
    return intake.json_response(Backlog(found.unpublished, found.oldest_age_s, found.dead))


async def republish(request: web.Request) -> web.Response:
    try:
        outbox_id = int(request.match_info["outbox_id"])
    except ValueError as exc:
        raise exceptions.DocumentNotFound("no such dead event") from exc
    if not 1 <= outbox_id <= _MAX_ID:  # a bigint identity: nothing else can exist
        raise exceptions.DocumentNotFound("no such dead event")
    async with request.app[intake.DB].acquire() as conn:
        found = await outbox.republish(conn, outbox_id)
    if not found:
        raise exceptions.DocumentNotFound("no such dead event")
    request.app[POKE_RELAY]()
    return intake.json_response(Republished(outbox_id))


async def get_any_document(request: web.Request) -> web.Response:
    try:
        document_id = uuid.UUID(request.match_info["document_id"])
    except ValueError as exc:
        raise exceptions.DocumentNotFound() from exc
    async with request.app[intake.DB].acquire() as conn:
        document = await documents.get(conn, document_id, None)
    if document is None:
        raise exceptions.DocumentNotFound()
    return intake.json_response(
        msgspec.structs.replace(document, links=intake_service.links(document.id))
    )


_ADMIN = (problems.UNAUTHORIZED, problems.FORBIDDEN, problems.DATABASE_UNAVAILABLE)

ROUTES = [
    RouteSpec(
        method="GET",
        path="/admin/api/pools",
        handler=list_pools,
        summary="Actor pools and whether they are paused",
        auth="admin",
        responses={200: list[PoolState]},
        problems=_ADMIN,
    ),
    RouteSpec(
        method="POST",
        path="/admin/api/pools/{name}/pause",
        handler=pause_pool,
        summary="Pause a pool: actors finish the message in hand, then wait",
        auth="admin",
        responses={200: PoolState},
        problems=(*_ADMIN, problems.NOT_FOUND),
    ),
    RouteSpec(
        method="POST",
        path="/admin/api/pools/{name}/resume",
        handler=resume_pool,
        summary="Resume a paused pool",
        auth="admin",
        responses={200: PoolState},
        problems=(*_ADMIN, problems.NOT_FOUND),
    ),
    RouteSpec(
        method="GET",
        path="/admin/api/outbox/dead",
        handler=dead_events,
        summary="The error table: events Kafka refused past their attempts",
        auth="admin",
        responses={200: DeadPage},
        problems=(*_ADMIN, problems.BAD_QUERY),
        query=(
            QueryParam("after", {"type": "integer"}, "next_after of the previous page"),
            QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
        ),
    ),
    RouteSpec(
        method="GET",
        path="/admin/api/outbox/backlog",
        handler=backlog,
        summary="Events waiting for Kafka, the age of the oldest, dead events",
        auth="admin",
        responses={200: Backlog},
        problems=_ADMIN,
    ),
    RouteSpec(
        method="POST",
        path="/admin/api/outbox/{outbox_id}/republish",
        handler=republish,
        summary="Publish a dead event again",
        auth="admin",
        responses={200: Republished},
        problems=(*_ADMIN, problems.NOT_FOUND),
    ),
    RouteSpec(
        method="GET",
        path="/admin/api/documents/{document_id}",
        handler=get_any_document,
        summary="Any source system's document, with its timeline",
        auth="admin",
        responses={200: domain.Document},
        problems=(*_ADMIN, problems.NOT_FOUND),
    ),
]
