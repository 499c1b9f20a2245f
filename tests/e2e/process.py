"""Whole OMS processes (``run.py``) and standalone simulators for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from oms.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class Process:
    """A child process that is always reaped: terminate, wait (bounded), then kill."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=REPO_ROOT, env=self.env, stderr=asyncio.subprocess.PIPE
        )

    async def terminate(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.process.communicate(), timeout=timeout_s)
        self.stderr += err
        return self.process.returncode or 0

    async def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        await asyncio.wait_for(self.process.wait(), timeout=30)

    async def close(self) -> None:
        """Kill if still running, and reap: no process, pipe or transport left behind."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        _, err = await asyncio.wait_for(self.process.communicate(), timeout=30)
        self.stderr += err or b""


class OmsProcess(Process):
    def __init__(self, data_dir: Path, port: int, **overrides: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
        env.update(
            OMS_DATABASE__DATA_DIR=str(data_dir),
            OMS_SERVER__PORT=str(port),
            OMS_LOGGING__LEVEL="WARNING",
            # Its own broker port: never 9092, which a developer's OMS may hold.
            OMS_KAFKA__EMBEDDED_PORT=str(free_port()),
        )
        env.update(overrides)
        super().__init__(sys.executable, "run.py", env=env)
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.dsn = ""

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.spawn()
        assert self.process is not None
        assert self.process.stderr is not None
        banner = b""
        for _ in range(600):  # bounded: 60 s
            if self.process.returncode is not None:
                _, err = await self.process.communicate()
                pytest.fail(f"OMS exited at start: {(banner + err).decode()[-3000:]}")
            try:
                line = await asyncio.wait_for(self.process.stderr.readline(), timeout=0.1)
                banner += line
            except TimeoutError:
                pass
            match = re.search(rb"database: +(\S+)", banner)
            if match and b"demo admin key" in banner:
                self.dsn = match.group(1).decode()
                break
        else:
            pytest.fail("OMS did not print its banner in 60 s")
        # Keep draining stderr so the child never blocks on a full pipe.
        self._drain = asyncio.create_task(self._read_rest())
        async with http.get(f"{self.url}/healthz") as response:
            assert response.status == 200

    async def _read_rest(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.stderr = (self.stderr + chunk)[-200_000:]

    async def terminate(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
        await self._drain
        return self.process.returncode or 0

    async def close(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), timeout=30)
        if hasattr(self, "_drain"):
            await self._drain


class ThunderheadSimProcess(Process):
    def __init__(self, port: int, config_json: str) -> None:
        super().__init__(
            sys.executable,
            "-m",
            "oms.sim.thunderhead",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            config_json,
        )
        self.url = f"http://127.0.0.1:{port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.spawn()
        for _ in range(300):
            try:
                async with http.get(f"{self.url}/_sim/stats") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail("the Thunderhead simulator did not start in 30 s")
