"""Readiness: is this OMS able to do its work now (``GET /readyz``)?"""

from __future__ import annotations

import anyio
import asyncpg

from oms.actors.relay import OutboxRelay
from oms.db import migrate
from oms.db.pool import CONNECTION_ERRORS
from oms.http import health
from oms.thunderhead import ThunderheadClient


async def check(
    db: asyncpg.Pool, thunderhead: ThunderheadClient, relay: OutboxRelay
) -> health.ReadinessReport:
    """Database reachable, schema current, Thunderhead answering, Kafka taking events.

    Kafka being down does not stop intake (the outbox keeps every event), but
    readiness says so, so an operator sees it.
    """
    checks: dict[str, str] = {}
    checks["kafka"] = "ok" if relay.healthy else f"failing: {relay.last_error or 'unknown'}"
    with anyio.move_on_after(2.0):
        if not await thunderhead.ping():
            problem = thunderhead.credentials_error
            checks["thunderhead"] = f"credentials refused: {problem}" if problem else "unreachable"
        elif thunderhead.api_error:
            checks["thunderhead"] = f"misconfigured: {thunderhead.api_error}"
        else:
            checks["thunderhead"] = "ok"
    checks.setdefault("thunderhead", "timed out")
    with anyio.move_on_after(2.0) as scope:
        try:
            async with db.acquire() as conn:
                version = await migrate.applied_version(conn)
            checks["database"] = "ok"
            latest = migrate.latest_version()
            checks["migrations"] = (
                "ok" if version == latest else f"schema at {version}, expected {latest}"
            )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
    if scope.cancelled_caught:
        checks["database"] = "timed out"
    ready = all(v == "ok" for v in checks.values()) and "migrations" in checks
    return health.ReadinessReport(ready, checks)
