"""The whole OMS process on its embedded default: start, serve, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from oms import app
from oms.net import free_port
from tests.support.intake import document

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": f"Bearer {app.DEMO_SOURCE_KEY}"}


class OmsProcess:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OMS_")},
            "OMS_DATABASE__DATA_DIR": str(data_dir),
            "OMS_SERVER__PORT": str(port),
            "OMS_KAFKA__EMBEDDED_PORT": str(free_port()),
            "OMS_LOGGING__LEVEL": "WARNING",
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", cwd=REPO_ROOT, env=self.env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(600):  # bounded: 60 s
            if self.process.returncode is not None:
                _, err = await self.process.communicate()
                pytest.fail(f"OMS exited at start: {err.decode()[-2000:]}")
            try:
                async with http.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail("OMS did not become ready in 60 s")

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.process.communicate(), timeout=60)
        self.stderr = err.decode()
        return self.process.returncode or 0

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests_and_data_survives_restart(
    tmp_path: Path,
) -> None:
    oms = OmsProcess(tmp_path / "pgdata", free_port())
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        try:
            await oms.start(http)

            async def submit(n: int) -> str | None:
                try:
                    async with http.post(f"{oms.url}/v1/documents", json=document(f"R-{n}")) as r:
                        return (await r.json())["id"] if r.status == 202 else None
                except aiohttp.ClientError:
                    return None  # refused after the listener closed: never accepted

            first = await submit(0)
            assert first is not None
            in_flight = [asyncio.create_task(submit(n)) for n in range(1, 101)]
            await asyncio.sleep(0.05)
            exit_code = await oms.terminate()
            accepted = [first, *[i for i in await asyncio.gather(*in_flight) if i]]
        finally:
            oms.kill()
        assert exit_code == 0, oms.stderr[-2000:]
        assert not (oms.data_dir / "postmaster.pid").exists(), "embedded PostgreSQL still running"

        await oms.start(http)
        try:
            for document_id in accepted:
                async with http.get(f"{oms.url}/v1/documents/{document_id}") as response:
                    assert response.status == 200
                    body = await response.json()
                    # Stored; the pipeline may have taken it on or finished it. What a
                    # shutdown left RECEIVED the restarted sweeper re-feeds.
                    assert body["status"] in {
                        "RECEIVED",
                        "PROCESSING",
                        "SUBMITTED",
                        "COMPLETED",
                    }, body["last_error"]
            async with http.get(f"{oms.url}/v1/documents?limit=200") as response:
                listed = {d["id"] for d in (await response.json())["items"]}
            # Everything the clients were told was accepted, and nothing else, is stored.
            assert listed == set(accepted)
        finally:
            assert await oms.terminate() == 0
            oms.kill()
