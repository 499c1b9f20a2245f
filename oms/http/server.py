"""The HTTP server as a component: listen when started, drain requests when stopped.

aiohttp's own order on ``cleanup``: stop listening, let the handlers in hand
finish (up to ``shutdown_timeout_s``), then close what is left.
"""

from __future__ import annotations

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from oms import config
from oms.lifecycle import Component


class HttpServer(Component):
    name = "http"

    def __init__(self, app: web.Application, settings: config.ServerSettings) -> None:
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_s,
            # Bodies are decoded by OMS (``http.intake.read_json_body``): bounded, and a
            # coding it does not take is a problem+json 415, not aiohttp's text/plain 400.
            auto_decompress=False,
        )
        self._settings = settings
        self._cleaned_up = False
        self.url = ""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()  # not drained (a failed start): close at once

    async def drain(self) -> None:
        """Stop listening and finish the requests in hand."""
        await self._cleanup()

    async def _cleanup(self) -> None:
        if not self._cleaned_up:
            self._cleaned_up = True
            await self._runner.cleanup()
