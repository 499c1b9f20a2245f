"""Hostile but well-formed requests: each must get a 4xx and leave OMS serving.

Requests that once brought the whole OMS down (a writer error ended its task group)
run it as a separate process, so a regression stays contained and cannot leak
sockets into the other tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from oms.net import free_port
from tests.support.api import ApiServer
from tests.support.intake import count, document, expect_problem, nothing_stored, submit
from tests.support.keys import AUTH, seed_keys
from tests.support.sims import SimServer

REPO_ROOT = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
# Valid JSON (RFC 8259 sets no limit on exponents), but beyond PostgreSQL's numeric
# range, so the jsonb insert fails with NumericValueOutOfRangeError.
HUGE_NUMBER = b'{"n": 1e1000000}'


def _with_data(reference: str, data: bytes) -> bytes:
    body = json.dumps(document(reference, data=None)).encode()
    return body.replace(b'"data": null', b'"data": ' + data)


class OmsProcess:
    def __init__(self, url: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@pytest.fixture
async def oms_process(
    database_dsn: str, refdata_server: SimServer, tmp_path: Path
) -> AsyncIterator[OmsProcess]:
    """``python run.py`` on the test database: a crash takes down only this process."""
    async with run_py(database_dsn, refdata_server, tmp_path) as running:
        yield running


@asynccontextmanager
async def run_py(
    database_dsn: str, refdata_server: SimServer, tmp_path: Path
) -> AsyncIterator[OmsProcess]:
    await seed_keys(database_dsn)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OMS_")},
        "OMS_DATABASE__DSN": database_dsn,
        "OMS_DATABASE__POOL_MIN_SIZE": "1",
        "OMS_DATABASE__POOL_MAX_SIZE": "4",
        "OMS_REFDATA__BASE_URL": refdata_server.url,
        "OMS_SERVER__PORT": str(port),
        # Its own broker port: never 9092, which another test process may hold.
        "OMS_KAFKA__EMBEDDED_PORT": str(free_port()),
        "OMS_SERVER__SHUTDOWN_TIMEOUT_S": "1",
        "OMS_LOGGING__LEVEL": "WARNING",
    }
    log = tmp_path / "oms.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "run.py",
            cwd=REPO_ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    running = OmsProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # bounded: 30 s
                if not running.alive:
                    pytest.fail(f"OMS exited at start: {log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{running.url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("OMS did not become ready in 30 s")
        yield running
    finally:
        if running.alive:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_number_postgres_cannot_store_is_422_and_oms_keeps_serving(
    oms_process: OmsProcess, db: asyncpg.Connection
) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {**AUTH, **JSON}
    async with aiohttp.ClientSession(oms_process.url, headers=headers, timeout=timeout) as http:
        async with http.post("/v1/documents", data=_with_data("N-1", HUGE_NUMBER)) as response:
            await expect_problem(response, 422, "validation-error", "/data")
        await nothing_stored(db)
        await submit(http, document("N-2"))
    assert oms_process.alive


async def test_batch_item_postgres_cannot_store_fails_alone(
    oms_process: OmsProcess, db: asyncpg.Connection
) -> None:
    items = b"[" + _with_data("B-0", b"{}") + b"," + _with_data("B-1", HUGE_NUMBER) + b"]"
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {**AUTH, **JSON}
    async with aiohttp.ClientSession(oms_process.url, headers=headers, timeout=timeout) as http:
        body = b'{"documents": ' + items + b"}"
        async with http.post("/v1/documents/batch", data=body) as response:
            status, text = response.status, await response.text()
    # With the bug: (500, 1), the client is told the batch failed yet B-0 was stored.
    assert (status, await count(db, "documents")) == (200, 1), text
    assert [r["status"] for r in json.loads(text)["results"]] == [202, 422]
    assert oms_process.alive


async def test_large_but_storable_number_is_accepted(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    headers = {**AUTH, **JSON}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", data=_with_data("N-1", b'{"n": 1e1000}')) as r:
            assert r.status == 202, await r.text()
    assert await count(db, "documents") == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("data", {"note": "nul \u0000 inside"}),
        ("recipient", {"name": "Ada\u0000", "email": "a@b.cd"}),
    ],
    ids=["data", "recipient"],
)
async def test_nul_character_is_422(
    api: ApiServer, db: asyncpg.Connection, field: str, value: object
) -> None:
    """PostgreSQL's jsonb cannot hold U+0000: refused up front, naming the field."""
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=document(**{field: value})) as response:
            problem = await expect_problem(response, 422, "validation-error")
        assert problem["errors"][0]["pointer"].startswith(f"/{field}")
        await submit(http, document("after"))  # and OMS still takes requests
    assert await count(db, "documents") == 1


@pytest.mark.parametrize("path", ["/v1/documents", "/v1/documents/batch"])
async def test_deeply_nested_json_is_a_client_error(
    api: ApiServer, db: asyncpg.Connection, path: str
) -> None:
    deep = b'{"d": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    body = _with_data("D-1", deep)
    if path.endswith("batch"):
        body = b'{"documents": [' + body + b"]}"
    async with aiohttp.ClientSession(api.url, headers={**AUTH, **JSON}) as http:
        async with http.post(path, data=body) as response:
            assert 400 <= response.status < 500, await response.text()
            assert response.content_type == "application/problem+json"
    await nothing_stored(db)


async def test_body_that_is_not_an_object_names_no_field(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=["not", "an", "object"]) as response:
            problem = await expect_problem(response, 422, "validation-error")
    assert len(problem["errors"]) == 1


async def test_pointer_to_the_whole_body_is_the_empty_pointer(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url, headers=AUTH) as http:
        async with http.post("/v1/documents", json=["not", "an", "object"]) as response:
            problem = await expect_problem(response, 422, "validation-error")
    assert problem["errors"][0]["pointer"] == ""


async def test_empty_quoted_idempotency_key_is_400(api: ApiServer, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Idempotency-Key": '""'}
    async with aiohttp.ClientSession(api.url, headers=headers) as http:
        async with http.post("/v1/documents", json=document()) as response:
            await expect_problem(response, 400, "invalid-header")
    await nothing_stored(db)


async def test_quoted_idempotency_key_is_the_same_key(
    api: ApiServer, db: asyncpg.Connection
) -> None:
    """The IETF draft sends the key as a structured-field string: "abc" is the key abc."""
    body = json.dumps(document()).encode()
    async with aiohttp.ClientSession(api.url, headers={**AUTH, **JSON}) as http:
        async with http.post("/v1/documents", data=body, headers={"Idempotency-Key": '"abc"'}) as r:
            assert r.status == 202
        async with http.post("/v1/documents", data=body, headers={"Idempotency-Key": "abc"}) as r:
            assert r.status == 202
            assert r.headers["Idempotent-Replayed"] == "true"
    assert await db.fetchval("SELECT idempotency_key FROM idempotency_keys") == "abc"


async def test_the_database_password_is_never_shown(
    database_dsn: str, refdata_server: SimServer, tmp_path: Path
) -> None:
    """Issue 8, item 11: the banner and the logs show the DSN without its password."""
    secret = "Top-Secret-0815"
    # The embedded server trusts loopback connections: any password is accepted.
    with_password = database_dsn.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in with_password
    async with run_py(with_password, refdata_server, tmp_path) as running:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{running.url}/readyz") as response:
                assert response.status == 200
    output = running.log.read_text()
    assert "postgres:***@" in output  # the banner names the database, redacted
    assert secret not in output


async def test_an_outage_answers_every_request_but_floods_no_log(
    database_dsn: str, refdata_server: SimServer, tmp_path: Path
) -> None:
    """Issue 8, item 10: with Reference Data down every POST is a 503, and the log
    keeps a burst of each kind of line instead of one line per request."""
    requests = 200
    async with run_py(database_dsn, refdata_server, tmp_path) as running:
        await refdata_server.stop()  # down, for real: its port refuses connections
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers={**AUTH, **JSON}, timeout=timeout) as http:

            async def one(n: int) -> int:
                body = json.dumps(document(f"FLOOD-{n}")).encode()
                async with http.post(f"{running.url}/v1/documents", data=body) as response:
                    return response.status

            statuses = await asyncio.gather(*(one(n) for n in range(requests)))
    assert statuses == [503] * requests  # every request answered, none stored
    lines = running.log.read_text().splitlines()
    failed = [line for line in lines if "request failed" in line]
    assert 1 <= len(failed) <= 10, len(failed)  # one burst, not one line per request
    assert len(lines) < 60, lines[-5:]
