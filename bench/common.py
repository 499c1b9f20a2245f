"""What the benchmark scripts share: ports, databases, child processes, request bodies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import msgspec

from oms.db.embedded import EmbeddedPostgres
from oms.net import free_port
from oms.store import api_keys

R = TypeVar("R")

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "oms_bench_benchmarksecret123"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
RESUBMIT_WAIT_S = 0.1  # after a 503: short, so the wait is not what is measured
TRANSPORT_RETRIES = 3
RESUBMIT_LIMIT = 10_000  # calls for one chunk; the run's timeout comes first


def with_database(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


def document(reference: str, data: Mapping[str, Any] | None = None) -> bytes:
    """A valid request for the Reference Data the simulator ships (email, acme, en)."""
    return msgspec.json.encode(
        {
            "client_reference": reference,
            "document_type": "policy_renewal_notice",
            "channel": "email",
            "language": "en",
            "brand": "acme",
            "priority": "normal",
            "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "data": {"policy_number": "P-123", "premium": "123.45"} if data is None else data,
        }
    )


async def create_database(admin_dsn: str, database: str) -> str:
    """A fresh, empty database (dropped first if it exists); returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, database)


async def add_api_key(dsn: str) -> None:
    """``API_KEY`` as a source-system key (once OMS has migrated the database)."""
    conn = await asyncpg.connect(dsn)
    try:
        await api_keys.upsert(conn, API_KEY, "bench", "source")
    finally:
        await conn.close()


class Child:
    """One subprocess; its output goes to a file so it can never block on a pipe."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], ready_url: str, log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._argv = argv
        self._env = env
        self._ready_url = ready_url
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                cwd=REPO_ROOT,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self._proc.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    self._ready_url, timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    async def stop(self) -> int | None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            print(
                f"  {self.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", flush=True
            )
            proc.kill()
            return await proc.wait()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def simulator_child(config: Mapping[str, Any], log_path: Path) -> tuple[Child, str]:
    """The Thunderhead simulator as its own process on a free loopback port, these knobs set."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "oms.sim.thunderhead", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--config", msgspec.json.encode(config).decode()]
    return Child("simulator", argv, dict(os.environ), f"{base_url}/_sim/stats", log_path), base_url


def oms_child(
    dsn: str,
    thunderhead_url: str,
    settings: Mapping[str, str],
    log_path: Path,
    ready_path: str = "/readyz",
) -> tuple[Child, str]:
    """OMS (``run.py``) on a free port with its own Kafka broker, pointed at ``dsn`` and
    the Thunderhead at ``thunderhead_url``; ``settings`` are more ``OMS_*`` variables."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OMS_DATABASE__DSN": dsn,
        "OMS_SERVER__HOST": "127.0.0.1",
        "OMS_SERVER__PORT": str(port),
        "OMS_KAFKA__EMBEDDED_PORT": str(free_port()),  # its own broker, never a shared port
        "OMS_LOGGING__LEVEL": "WARNING",
        "OMS_THUNDERHEAD__BASE_URL": thunderhead_url,
        **settings,
    }
    argv = [sys.executable, "run.py"]
    return Child("OMS", argv, env, f"{base_url}{ready_path}", log_path), base_url


async def sim_stats(session: aiohttp.ClientSession, sim_url: str) -> dict[str, Any]:
    """The simulator's ``GET /_sim/stats``."""
    async with session.get(
        f"{sim_url}/_sim/stats", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        response.raise_for_status()
        stats: dict[str, Any] = msgspec.json.decode(await response.read())
    return stats


async def submit_documents(
    session: aiohttp.ClientSession,
    base_url: str,
    bodies: Sequence[bytes],
    per_call: int,
    concurrency: int,
    tally: Counter[str],
) -> None:
    """Every body through ``POST /v1/documents/batch``, ``per_call`` items a call,
    ``concurrency`` calls at once; items answered 503 are sent again until stored.

    ``tally`` counts as it goes (so it holds the counts so far if this is cancelled):
    ``accepted`` (202), ``resubmitted_503``, ``transport_errors``, ``409 (stored
    earlier)`` (stored by a call whose answer was lost), and any other status.
    """
    url = f"{base_url}/v1/documents/batch"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    chunks: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for start in range(0, len(bodies), per_call):
        chunks.put_nowait(list(bodies[start : start + per_call]))

    async def post(items: list[bytes]) -> list[bytes]:
        """One call; the items to send again (503s, or all of them after a transport error)."""
        payload = b'{"documents":[' + b",".join(items) + b"]}"
        for attempt in range(TRANSPORT_RETRIES + 1):
            try:
                async with session.post(url, data=payload, headers=headers, timeout=timeout) as r:
                    body = await r.read()
                    if r.status == 503:  # the whole call was refused: send it again
                        tally["resubmitted_503"] += len(items)
                        return items
                    if r.status != 200:
                        tally[f"batch {r.status}"] += len(items)
                        print(f"  batch call answered {r.status}: {body[:300]!r}", flush=True)
                        return []
                    answer = msgspec.json.decode(body)
                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally["transport_errors"] += 1
                if attempt == TRANSPORT_RETRIES:
                    raise RuntimeError(f"batch call failed {attempt + 1} times: {exc!r}") from exc
                await asyncio.sleep(0.2)
        again = []
        for item in answer["results"]:
            status = item["status"]
            if status == 202:
                tally["accepted"] += 1
            elif status == 503:
                again.append(items[item["index"]])
            elif status == 409 and (item.get("problem") or {}).get("document_id"):
                tally["409 (stored earlier)"] += 1
            else:
                tally[str(status)] += 1
        tally["resubmitted_503"] += len(again)
        return again

    async def worker() -> None:
        while True:
            try:
                items = chunks.get_nowait()
            except asyncio.QueueEmpty:
                return
            for attempt in range(RESUBMIT_LIMIT):
                if attempt:
                    await asyncio.sleep(RESUBMIT_WAIT_S)
                items = await post(items)
                if not items:
                    break
            else:
                raise RuntimeError(f"{len(items)} items still refused after {RESUBMIT_LIMIT} calls")

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


async def run_rounds(
    variants: Sequence[str],
    repeat: int,
    connection_limit: int,
    run_variant: Callable[[str, int, str, Path, aiohttp.ClientSession], Awaitable[R]],
) -> list[R]:
    """One embedded PostgreSQL for the whole run; variants alternate round by round
    (so neither always runs on a warmer machine); returns every round's result."""
    results: list[R] = []
    with tempfile.TemporaryDirectory(prefix="oms-bench-") as tempdir:
        workdir = Path(tempdir)
        postgres = EmbeddedPostgres(workdir / "pgdata")
        try:
            admin_dsn = await asyncio.to_thread(postgres.start)
            connector = aiohttp.TCPConnector(limit=connection_limit)
            async with aiohttp.ClientSession(connector=connector) as session:
                for round_ in range(1, repeat + 1):
                    order = variants if round_ % 2 else tuple(reversed(variants))
                    for variant in order:
                        results.append(
                            await run_variant(variant, round_, admin_dsn, workdir, session)
                        )
        finally:
            await asyncio.to_thread(postgres.stop)
    return results


def print_machine(details: str) -> None:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(f"cores: {cores} (usable {usable}); {details}", flush=True)
