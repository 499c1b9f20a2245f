"""The ``target`` fixture: each contract case runs once per Thunderhead target.

Always the simulator, on a loopback port; also a real tenant when
``OMS_THUNDERHEAD_CONTRACT_URL`` is set (tests/contract/targets.py). No address but
127.0.0.1 is called unless that variable is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest

from oms.config import ThunderheadSettings
from oms.sim import thunderhead as thunderhead_sim
from tests.contract import targets
from tests.support.sims import SimServer

TARGETS = ["simulator", *(["tenant"] if targets.TENANT_CONFIGURED else [])]


@pytest.fixture(params=TARGETS)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[targets.Target]:
    if request.param == "tenant":
        yield targets.tenant_target()
        return
    # Strict where a tenant may be: the configured client authentication only, and
    # only the one Template Selector the suite uses.
    config = thunderhead_sim.SimConfig(
        client_auth=ThunderheadSettings().client_auth,
        batch_config_ids=(targets.SIM_BATCH_CONFIG_RES_ID,),
    )
    sim = SimServer(partial(thunderhead_sim.make_app, config))
    await sim.start()
    try:
        yield targets.Target(
            "simulator",
            sim.url,
            targets.simulator_settings(sim.url),
            targets.SIM_BATCH_CONFIG_RES_ID,
            sim,
        )
    finally:
        await sim.stop()


@pytest.fixture
async def raw(target: targets.Target) -> AsyncIterator[targets.Raw]:
    """aiohttp straight to the target, for checks of the wire itself."""
    async with aiohttp.ClientSession() as session:
        yield targets.Raw(target, session)
