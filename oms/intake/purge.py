"""Expired Idempotency-Key records are deleted on a timer, so the table stays bounded."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import asyncpg
from anyio.abc import TaskStatus

from oms import config
from oms.db.pool import CONNECTION_ERRORS
from oms.lifecycle import Component
from oms.store import idempotency

logger = logging.getLogger(__name__)


class IdempotencyKeyPurge(Component):
    name = "idempotency key purge"

    def __init__(self, db: asyncpg.Pool, settings: config.IntakeSettings) -> None:
        self._db = db
        self._settings = settings

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._settings.idempotency_purge_interval_s)
            await self.purge_once()

    async def purge_once(self) -> int:
        try:
            async with self._db.acquire() as conn:
                removed = await idempotency.purge_expired(conn, datetime.now(UTC))
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            logger.warning("idempotency key purge failed: %s", exc)
            return 0
        if removed:
            logger.info("expired idempotency keys purged", extra={"count": removed})
        return removed
