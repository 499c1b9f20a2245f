"""RefDataClient against the real Reference Data simulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from oms import exceptions
from oms.config import RefDataSettings
from oms.refdata import Brand, RefDataClient
from oms.sim import refdata as sim

TTL = 60.0
WINDOW = 600.0
EXPIRED = TTL + WINDOW + 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Simulator:
    """A running simulator that a test can break, or stop for real."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url
        self.running = True

    async def faults(self, mode: str, status: int = 500) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/_sim/faults", json={"mode": mode, "status": status}) as r,
        ):
            assert r.status == 200

    async def calls(self) -> dict[str, int]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/_sim/stats") as r,
        ):
            stats: dict[str, Any] = await r.json()
        return stats["calls"]

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.runner.cleanup()


async def start_simulator(data_path: Path | None = None) -> Simulator:
    runner = web.AppRunner(sim.make_app(data_path), shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return Simulator(runner, f"http://{host}:{port}")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    running = await start_simulator()
    yield running
    await running.stop()


def settings(url: str, timeout_s: float = 2.0) -> RefDataSettings:
    return RefDataSettings(base_url=url, timeout_s=timeout_s, ttl_s=TTL, revalidate_window_s=WINDOW)


async def test_fetches_and_decodes(simulator: Simulator) -> None:
    async with RefDataClient(settings(simulator.url)) as client:
        types = {t.code: t for t in await client.document_types()}
        templates = await client.templates("policy_renewal_notice")
        acme = await client.brand("acme")
        legacy = await client.brand("legacyco")

    assert types["policy_renewal_notice"].active
    assert not all(t.active for t in types.values())
    assert {t.document_type for t in templates} == {"policy_renewal_notice"}
    active = {(t.channel, t.language, t.brand) for t in templates if t.active}
    assert {("print", "en", "acme"), ("email", "en", "acme")} <= active
    assert all(isinstance(t.batch_config_res_id, int) for t in templates)
    assert isinstance(acme, Brand)
    assert acme.active
    assert acme.return_address.lines
    assert legacy is not None
    assert not legacy.active  # inactive entries come back; OMS decides


async def test_repeated_gets_within_ttl_call_the_api_once(simulator: Simulator) -> None:
    async with RefDataClient(settings(simulator.url)) as client:
        for _ in range(3):
            await client.document_types()
            await client.templates("policy_renewal_notice")
            await client.brand("acme")
        await client.templates("premium_statement")
    assert await simulator.calls() == {"document-types": 1, "templates": 2, "brands": 1}


async def test_unknown_brand_is_none_and_cached(simulator: Simulator) -> None:
    async with RefDataClient(settings(simulator.url)) as client:
        assert await client.brand("nosuchbrand") is None
        assert await client.brand("nosuchbrand") is None
        assert await client.brand("../document-types") is None  # stays one path segment
    assert (await simulator.calls())["brands"] == 2


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_api_error_with_warm_cache_serves_stale(simulator: Simulator, status: int) -> None:
    clock = Clock()
    async with RefDataClient(settings(simulator.url), clock=clock) as client:
        before = await client.templates("policy_renewal_notice")
        await simulator.faults("error", status)
        clock.now += EXPIRED
        assert await client.templates("policy_renewal_notice") == before
    assert (await simulator.calls())["templates"] == 2


async def test_api_error_with_cold_cache_raises_unavailable(simulator: Simulator) -> None:
    await simulator.faults("error", 500)
    async with RefDataClient(settings(simulator.url)) as client:
        with pytest.raises(exceptions.ReferenceDataUnavailable):
            await client.document_types()


async def test_unexpected_status_is_a_reference_data_error(simulator: Simulator) -> None:
    await simulator.faults("error", 400)
    async with RefDataClient(settings(simulator.url)) as client:
        with pytest.raises(exceptions.ReferenceDataError):
            await client.document_types()


async def test_stopped_api_serves_stale_when_warm_and_fails_when_cold(
    simulator: Simulator,
) -> None:
    clock = Clock()
    async with RefDataClient(settings(simulator.url), clock=clock) as client:
        acme = await client.brand("acme")
        await simulator.stop()
        clock.now += EXPIRED
        assert await client.brand("acme") == acme
        assert not await client.ping()
        with pytest.raises(exceptions.ReferenceDataUnavailable):
            await client.brand("globex")
    async with RefDataClient(settings(simulator.url)) as cold:
        with pytest.raises(exceptions.ReferenceDataUnavailable):
            await cold.document_types()


async def test_hanging_api_times_out_as_unavailable(simulator: Simulator) -> None:
    await simulator.faults("hang")
    async with RefDataClient(settings(simulator.url, timeout_s=0.3)) as client:
        started = time.monotonic()
        with pytest.raises(exceptions.ReferenceDataUnavailable):
            await client.templates("policy_renewal_notice")
        assert not await client.ping()
    assert time.monotonic() - started < 2


async def test_ping(simulator: Simulator) -> None:
    async with RefDataClient(settings(simulator.url)) as client:
        assert await client.ping()
        assert await client.ping()
    assert (await simulator.calls())["document-types"] == 2  # ping bypasses the cache


async def test_newer_api_fields_are_ignored_and_bad_shapes_rejected(tmp_path: Path) -> None:
    data = json.loads(sim.DEFAULT_DATA_PATH.read_text())
    data["brands"][0]["tagline"] = "a field this OMS does not know"
    data["document_types"][0]["owner"] = "marketing"
    broken = next(t for t in data["templates"] if t["document_type"] == "welcome_pack")
    del broken["version"]
    path = tmp_path / "refdata.json"
    path.write_text(json.dumps(data))
    running = await start_simulator(path)
    try:
        async with RefDataClient(settings(running.url)) as client:
            assert await client.brand(data["brands"][0]["code"]) is not None
            assert await client.document_types()
            with pytest.raises(exceptions.ReferenceDataError):
                await client.templates("welcome_pack")
    finally:
        await running.stop()


def test_base_url_must_be_absolute() -> None:
    with pytest.raises(exceptions.ConfigError):
        RefDataClient(RefDataSettings(base_url=""))
