"""A simulator (Reference Data, Thunderhead) served on a real loopback port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web


class SimServer:
    """A simulator on a real loopback port, stoppable for real."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(self._make_app(), handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def post(self, path: str, body: object) -> Any:
        async with aiohttp.ClientSession(self.url) as http, http.post(path, json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession(self.url) as http, http.get(path) as r:
            assert r.status == 200, await r.text()
            return await r.json()
