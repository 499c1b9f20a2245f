"""A whole OMS (``app.run``) in-process: for what needs actors, Kafka or the full start-up.

The slowest level short of a separate process; tests of the HTTP layer alone use
``tests.support.api`` instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio

from oms import app, config
from tests.support.keys import AUTH, seed_keys
from tests.support.own_task import OwnTask
from tests.support.settings import pipeline_settings
from tests.support.sims import SimServer


class RunningOms(OwnTask[app.Started]):
    """A whole OMS (``app.run``) serving on a loopback port, in a task of its own."""

    def __init__(self, settings: config.Settings) -> None:
        super().__init__()
        self.settings = settings
        self.started: app.Started | None = None

    @property
    def url(self) -> str:
        assert self.started is not None
        return self.started.base_url

    async def start(self) -> None:
        self.started = await self._start(self._serve)

    async def _serve(self, ready: asyncio.Future[app.Started]) -> None:
        async with anyio.create_task_group() as tg:
            ready.set_result(await tg.start(app.run, self.settings, self._stop))


@asynccontextmanager
async def running(settings: config.Settings) -> AsyncIterator[RunningOms]:
    """An OMS with settings of the test's own, on the test database, with the test keys."""
    assert settings.database.dsn
    await seed_keys(settings.database.dsn)
    oms = RunningOms(settings)
    await oms.start()
    try:
        yield oms
    finally:
        await oms.stop()


@asynccontextmanager
async def oms_with(
    database_dsn: str,
    refdata_sim: SimServer,
    thunderhead_sim: SimServer,
    processing: dict[str, Any] | None = None,
    thunderhead_settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[RunningOms]:
    """A running pipeline (processing resumed) against the Thunderhead simulator."""
    settings = pipeline_settings(
        database_dsn, refdata_sim, thunderhead_sim, processing, thunderhead_settings, **sections
    )
    async with running(settings) as oms:
        yield oms


async def submit_all(oms: RunningOms, bodies: list[dict[str, Any]]) -> list[uuid.UUID]:
    """POST every body at once; the accepted documents' ids."""
    async with aiohttp.ClientSession(oms.url, headers=AUTH) as http:

        async def one(body: dict[str, Any]) -> uuid.UUID:
            async with http.post("/v1/documents", json=body) as response:
                assert response.status == 202, await response.text()
                return uuid.UUID((await response.json())["id"])

        ids: list[uuid.UUID] = []
        async with anyio.create_task_group() as tg:
            for body in bodies:
                tg.start_soon(lambda b=body: _append(ids, one(b)))
    return ids


async def _append(into: list[uuid.UUID], value: Awaitable[uuid.UUID]) -> None:
    into.append(await value)
