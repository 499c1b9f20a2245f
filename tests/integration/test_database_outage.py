"""PostgreSQL stopped under a running OMS: clear 503s, then recovery without a restart.

Intake's answers need the whole OMS; the pipeline's recovery needs only the
stages (``tests.support.stages``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import anyio
import asyncpg
import pytest

from oms.db import embedded, migrate
from oms.store import api_keys
from tests.support.intake import document
from tests.support.keys import SOURCE_KEY
from tests.support.settings import make_settings
from tests.support.sims import SimServer
from tests.support.stages import running_stages
from tests.support.whole_oms import RunningOms

HEADERS = {"Authorization": f"Bearer {SOURCE_KEY}"}


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[embedded.EmbeddedPostgres]:
    """A server of this test's own, so stopping it disturbs no other test."""
    server = embedded.EmbeddedPostgres(tmp_path / "pg")
    server.start()
    yield server
    server.stop(mode="immediate")


@pytest.fixture
async def oms_on_own_postgres(
    own_postgres: embedded.EmbeddedPostgres, refdata_server: SimServer
) -> AsyncIterator[RunningOms]:
    conn = await asyncpg.connect(own_postgres.dsn)
    await migrate.migrate(conn)
    await api_keys.upsert(conn, SOURCE_KEY, "acme-policy", "source")
    await conn.close()
    running = RunningOms(
        make_settings(
            own_postgres.dsn,
            refdata_server.url,
            database={"connect_timeout_s": 1.0, "command_timeout_s": 2.0},
        )
    )
    await running.start()
    yield running
    await running.stop()


async def test_intake_answers_503_while_the_database_is_down_and_recovers(
    own_postgres: embedded.EmbeddedPostgres, oms_on_own_postgres: RunningOms
) -> None:
    url = oms_on_own_postgres.url
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        async with http.post("/v1/documents", json=document("before")) as response:
            assert response.status == 202

        own_postgres.stop(mode="immediate")
        with anyio.fail_after(10):  # "quickly": bounded by the connect timeout, not hanging
            async with http.post("/v1/documents", json=document("during")) as response:
                assert response.status == 503
                assert response.content_type == "application/problem+json"
                assert response.headers["Retry-After"]
                problem = await response.json()
        assert problem["type"] == "urn:oms:problem:database-unavailable"
        async with http.get("/readyz") as response:
            assert response.status == 503
            assert (await response.json())["checks"]["database"] != "ok"

        own_postgres.start()  # same data directory, same port
        statuses = []
        for attempt in range(50):  # bounded: the pool replaces its dead connections
            async with http.post("/v1/documents", json=document(f"after-{attempt}")) as response:
                statuses.append(response.status)
                if response.status == 202:
                    break
            await anyio.sleep(0.1)
        assert statuses[-1] == 202, statuses
        assert set(statuses) <= {202, 503}, statuses  # never a 500 on the way back
        async with http.get("/readyz") as response:
            assert response.status == 200

    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        stored = {
            r["client_reference"]
            for r in await conn.fetch("SELECT client_reference FROM documents")
        }
    finally:
        await conn.close()
    # What was accepted is there; what was refused with 503 is not.
    assert "before" in stored
    assert "during" not in stored


async def test_the_pipeline_survives_a_database_restart_mid_run(
    own_postgres: embedded.EmbeddedPostgres,
    refdata_server: SimServer,
    thunderhead_server: SimServer,
) -> None:
    """Actors meet a dead database mid-work; once it is back every document still ends final."""
    conn = await asyncpg.connect(own_postgres.dsn)
    await migrate.migrate(conn)
    await conn.close()
    settings = make_settings(
        own_postgres.dsn,
        refdata_server.url,
        thunderhead_server.url,
        database={"connect_timeout_s": 1.0, "command_timeout_s": 2.0},
        processing={
            "start_paused": False,
            "batch_max_age_s": 0.1,
            "lease_s": 3.0,
            "restart_backoff_s": 0.05,
            "max_redeliveries": 100,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            # OMS's own waits (the database down) and reconciliation rounds capped as the
            # other fault tests cap them: with the 60 s default a document may sit out
            # the test's whole minute; a batch whose outcome the outage hid is decided
            # once its in-flight window closes.
            "wait_backoff_max_s": 1.0,
            "in_flight_window_s": 3.0,
            "reconcile_interval_s": 0.2,
        },
        monitoring={"poll_initial_s": 0.1, "poll_max_s": 0.5},
        sweeper={"interval_s": 0.5, "received_after_s": 1.0, "submitted_unpolled_after_s": 1.0},
    )
    async with running_stages(settings) as stages:
        accepted = []
        for n in range(30):
            accepted.append(await stages.submit(document(f"M-{n}")))
        own_postgres.stop(mode="immediate")  # mid-run: claims, batches, polls in flight
        await anyio.sleep(1.5)
        own_postgres.start()
        with anyio.fail_after(60):
            while True:
                try:
                    conn = await asyncpg.connect(own_postgres.dsn)
                    rows = await conn.fetch("SELECT status FROM documents")
                    await conn.close()
                except (OSError, asyncpg.PostgresError):
                    rows = []
                if len(rows) == 30 and all(r["status"] == "COMPLETED" for r in rows):
                    break
                await anyio.sleep(0.2)
    assert len(accepted) == 30
