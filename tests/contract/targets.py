"""Where the Thunderhead contract suite runs, and what its cases share.

The same cases run against the simulator (``oms.sim.thunderhead`` on a loopback
port, always) and against a real tenant when ``OMS_THUNDERHEAD_CONTRACT_URL`` is set.
The tenant's variables are read when this module is imported, at collection: the
session fixture in ``tests/conftest.py`` clears every ``OMS_*`` variable before the
first test, so a developer's shell cannot change any other result.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import msgspec
import pytest

from oms.config import ThunderheadSettings
from oms.thunderhead import JobStatus, ThunderheadClient, Transaction
from tests.support.sims import SimServer

ENV_PREFIX = "OMS_THUNDERHEAD_CONTRACT_"
SIM_BATCH_CONFIG_RES_ID = 1335501440
JSON_PREFIX = "while(1);"
FINAL = ("COMPLETED", "FAILED")

_REQUIRED = ("CLIENT_ID", "CLIENT_SECRET", "BATCH_CONFIG_RES_ID")
_OPTIONAL = {  # variable suffix -> ThunderheadSettings field
    "API_PATH": "api_path",
    "TOKEN_PATH": "token_path",
    "CLIENT_AUTH": "client_auth",
    "CORRELATION_FIELD": "correlation_field",
    "GRANT_TYPE": "grant_type",
    "USERNAME": "username",
    "PASSWORD": "password",
}
# Read once, at import (collection); see the module docstring.
_TENANT_ENV = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
TENANT_CONFIGURED = bool(_TENANT_ENV.get(ENV_PREFIX + "URL", "").strip())


@dataclasses.dataclass(frozen=True)
class Target:
    """One Thunderhead the cases run against."""

    name: str
    base_url: str
    settings: ThunderheadSettings
    """What OMS's ThunderheadClient is built with for this target."""
    batch_config_res_id: int
    sim: SimServer | None = None
    """The simulator, for its knobs and stats; None for a real tenant."""

    @property
    def is_simulator(self) -> bool:
        return self.sim is not None

    @property
    def final_within_s(self) -> float:
        """How long a small job may take to become final."""
        return 10.0 if self.is_simulator else 60.0

    @property
    def poll_every_s(self) -> float:
        return 0.05 if self.is_simulator else 2.0

    def simulator(self) -> SimServer:
        """The simulator; skips the test against a real tenant."""
        if self.sim is None:
            pytest.skip("simulator only (knobs, stats or a check risky on a real tenant)")
        return self.sim

    async def configure(self, **knobs: object) -> None:
        """Set simulator knobs (``POST /_sim/config``); skips against a real tenant."""
        await self.simulator().post("/_sim/config", knobs)

    async def stats(self) -> Any:
        return await self.simulator().get("/_sim/stats")

    def client(self, **overrides: Any) -> ThunderheadClient:
        settings = msgspec.structs.replace(self.settings, **overrides)
        return ThunderheadClient(settings)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def token_url(self) -> str:
        return self.url(self.settings.token_path)

    @property
    def api_url(self) -> str:
        return self.url(self.settings.api_path.rstrip("/"))


def simulator_settings(base_url: str) -> ThunderheadSettings:
    """The client settings for the simulator: its default credentials and paths."""
    return msgspec.structs.replace(ThunderheadSettings(), base_url=base_url)


def tenant_target() -> Target:
    """The real tenant of ``OMS_THUNDERHEAD_CONTRACT_*``; fails naming a missing variable."""
    env = {k.removeprefix(ENV_PREFIX): v.strip() for k, v in _TENANT_ENV.items()}
    missing = [ENV_PREFIX + key for key in _REQUIRED if not env.get(key)]
    if missing:
        pytest.fail(f"{ENV_PREFIX}URL is set but not {', '.join(missing)}")
    raw_id = env["BATCH_CONFIG_RES_ID"]
    if not (raw_id.isascii() and raw_id.isdigit() and int(raw_id) > 0):
        pytest.fail(f"{ENV_PREFIX}BATCH_CONFIG_RES_ID must be a positive integer, not {raw_id!r}")
    changes = {field: env[key] for key, field in _OPTIONAL.items() if env.get(key)}
    settings = msgspec.structs.replace(
        ThunderheadSettings(),
        base_url=env["URL"],
        client_id=env["CLIENT_ID"],
        client_secret=env["CLIENT_SECRET"],
        **changes,
    )
    try:  # replace() does not validate: convert once so a bad value names its key
        settings = msgspec.convert(msgspec.to_builtins(settings), ThunderheadSettings)
    except msgspec.ValidationError as exc:
        pytest.fail(f"{ENV_PREFIX}*: {exc}")
    return Target("tenant", env["URL"], settings, int(raw_id))


# --- what the cases send ------------------------------------------------------


def new_reference() -> str:
    return f"oms-contract-{uuid.uuid4()}"


def new_batch_name() -> str:
    return str(uuid.uuid4())


def transaction(reference: str, channel: str = "print") -> Transaction:
    """One of OMS's transactions, harmless for a real tenant (test data only)."""
    return Transaction(
        correlation_reference=reference,
        template_id="oms-contract-test",
        template_version=1,
        channel=channel,
        language="en",
        brand={"code": "oms-contract"},
        recipient={"name": "OMS contract test"},
        data=msgspec.Raw(b'{"purpose":"OMS contract suite"}'),
    )


def wire_transaction(target: Target, reference: str) -> dict[str, Any]:
    """A transaction as the client writes it, for raw requests."""
    tx = transaction(reference)
    return {
        target.settings.correlation_field: tx.correlation_reference,
        "templateId": tx.template_id,
        "templateVersion": tx.template_version,
        "channel": tx.channel,
        "language": tx.language,
        "brand": tx.brand,
        "recipient": tx.recipient,
        "data": json.loads(bytes(tx.data)),
    }


def b64_json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode("ascii")


# --- raw HTTP -----------------------------------------------------------------


def decode(text: str) -> Any:
    """A JSON answer, the ``while(1);`` prefix stripped when present."""
    return json.loads(text.lstrip().removeprefix(JSON_PREFIX))


def basic_header(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then Base64 of ``id:secret``."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def token_request(
    settings: ThunderheadSettings, client_auth: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of a token request with ONE client authentication method."""
    form = {"grant_type": settings.grant_type}
    if settings.grant_type == "password":
        form |= {"username": settings.username, "password": settings.password}
    headers: dict[str, str] = {}
    if (client_auth or settings.client_auth) == "basic":
        headers["Authorization"] = basic_header(settings.client_id, settings.client_secret)
    else:
        form |= {"client_id": settings.client_id, "client_secret": settings.client_secret}
    return form, headers


@dataclasses.dataclass(frozen=True)
class RawAnswer:
    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return decode(self.text)


class Raw:
    """aiohttp straight to the target, for what the client hides (the wire itself)."""

    def __init__(self, target: Target, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        self._token: str | None = None

    async def call(self, method: str, url: str, **kwargs: Any) -> RawAnswer:
        timeout = aiohttp.ClientTimeout(total=self.target.settings.submit_timeout_s)
        async with self.session.request(
            method, url, timeout=timeout, allow_redirects=False, **kwargs
        ) as r:
            return RawAnswer(r.status, await r.text(), r.headers.copy())

    async def token_answer(
        self, form: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> RawAnswer:
        return await self.call("POST", self.target.token_url, data=dict(form), headers=headers)

    async def bearer(self) -> dict[str, str]:
        if self._token is None:
            answer = await self.token_answer(*token_request(self.target.settings))
            assert answer.status == 200, answer.text
            self._token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    async def api(self, method: str, path: str = "", **kwargs: Any) -> RawAnswer:
        headers = await self.bearer() | kwargs.pop("headers", {})
        return await self.call(method, self.target.api_url + path, headers=headers, **kwargs)


# --- waiting ------------------------------------------------------------------


async def wait_final(target: Target, client: ThunderheadClient, job_id: str) -> JobStatus:
    """Poll ``job_id`` until it is final, at most ``target.final_within_s``."""
    give_up = time.monotonic() + target.final_within_s
    seen: list[str] = []
    while True:
        job = await client.job_status(job_id)
        seen.append(job.status)
        if job.status in FINAL:
            return job
        if time.monotonic() >= give_up:
            pytest.fail(f"job {job_id} not final within {target.final_within_s} s: {seen[-5:]}")
        await asyncio.sleep(target.poll_every_s)
