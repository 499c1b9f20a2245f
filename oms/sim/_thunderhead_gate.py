"""The gate every call to the Thunderhead simulator's API passes, and the state it keeps.

In order: count the call, rate-limit it, add latency, answer an injected fault or
hang, check the bearer token; then the handler serves it. Handlers answer an
error by raising ``Answer``; every API answer may carry the ``while(1);`` prefix.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from oms.sim import _thunderhead_jobs as job_model
from oms.sim._thunderhead_config import ENDPOINTS, Endpoint, Inject, SimConfig
from oms.sim._thunderhead_store import JobFile

HANG_S = 600.0
"""Longer than any client timeout, but bounded so a forgotten hang ends."""
JSON_PREFIX = b"while(1);"

_encoder = msgspec.json.Encoder()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Stats:
    """What ``GET /_sim/stats`` reports; a reset starts them again."""

    calls: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # Arrival times of the admitted API calls of the last second.
    window: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    peak_rate_per_s: int = 0
    duplicates: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    transactions: int = 0
    rejected_429: int = 0


@dataclasses.dataclass
class State:
    """Everything the simulator holds, under ``STATE`` in its app."""

    config: SimConfig
    tokens: dict[str, float] = dataclasses.field(default_factory=dict)
    jobs: dict[str, job_model.Job] = dataclasses.field(default_factory=dict)
    by_reference: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    stats: Stats = dataclasses.field(default_factory=Stats)
    job_file: JobFile | None = None
    """Where accepted jobs are kept across restarts; None keeps them in memory only."""
    # Set (and replaced) on reset and on shutdown, so hung requests and latency
    # sleeps end then instead of holding up a test or a graceful stop.
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Forget jobs (the job file too) and stats, end hung calls; knobs and tokens stay."""
        if self.job_file is not None:
            self.job_file.truncate()
        self.jobs.clear()
        self.by_reference.clear()
        self.stats = Stats()
        self.release.set()
        self.release = asyncio.Event()


STATE = web.AppKey("thunderhead_sim_state", State)


class Answer(Exception):
    """Raised by a handler to answer the call with an error now."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


@web.middleware
async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Count, rate-limit, delay, break as the knobs say, check the token, then serve."""
    endpoint = request.match_info.route.name
    if endpoint not in ENDPOINTS:
        return await handler(request)
    state = request.app[STATE]
    state.stats.calls[endpoint] += 1
    admitted = _admit(state)
    await pause(state, state.config.latency_s)
    try:
        if not admitted:
            state.stats.rejected_429 += 1
            raise Answer(429, exceptions("RATE_LIMITED", "too many requests"), {"Retry-After": "1"})
        if (rule := _take_inject(state, endpoint)) is not None:
            headers = None if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
            raise Answer(rule.status, exceptions(f"HTTP_{rule.status}", "injected fault"), headers)
        if take(state, "hang", endpoint) is not None:
            await hang(state)
        if endpoint != "token" and not _authorised(state, request):
            raise Answer(
                401,
                {"error": "invalid_token"},
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return await handler(request)
    except Answer as refusal:
        return answer(request, refusal.body, refusal.status, refusal.headers)


def _admit(state: State) -> bool:
    """Let the call in unless the last second already holds ``rate_limit_per_s`` calls."""
    now = time.monotonic()
    stats = state.stats
    while stats.window and stats.window[0] <= now - 1.0:
        stats.window.popleft()
    limit = state.config.rate_limit_per_s
    if limit is not None and len(stats.window) + 1 > limit:
        return False
    stats.window.append(now)
    stats.peak_rate_per_s = max(stats.peak_rate_per_s, len(stats.window))
    return True


def _take_inject(state: State, endpoint: Endpoint) -> Inject | None:
    """Use up one call of the first ``inject`` rule that matches ``endpoint``."""
    rules = state.config.inject
    for i, rule in enumerate(rules):
        if rule.count > 0 and rule.endpoint in (None, endpoint):
            left = (msgspec.structs.replace(rule, count=rule.count - 1),) if rule.count > 1 else ()
            rest = rules[:i] + left + rules[i + 1 :]
            state.config = msgspec.structs.replace(state.config, inject=rest)
            return rule
    return None


def take(
    state: State,
    knob: Literal["hang", "accept_then_hang", "business_failure"],
    endpoint: Endpoint,
) -> Any:
    """Use up one call of a counted knob if it applies to ``endpoint``; the knob or None."""
    value = getattr(state.config, knob)
    if (
        value is None
        or value.count == 0
        or getattr(value, "endpoint", None) not in (None, endpoint)
    ):
        return None
    left = msgspec.structs.replace(value, count=value.count - 1) if value.count > 1 else None
    state.config = msgspec.structs.replace(state.config, **{knob: left})
    return value


async def pause(state: State, seconds: float) -> None:
    """Sleep ``seconds``, or less if the simulator is reset or shut down meanwhile."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.release.wait(), seconds)


async def hang(state: State) -> None:
    await pause(state, HANG_S)
    raise Answer(503, exceptions("HANG_ENDED", "the simulated hang ended"))


def _authorised(state: State, request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expiry = state.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    return expiry is not None and expiry > time.monotonic()


def answer(
    request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    payload = _encoder.encode(body)
    if request.app[STATE].config.json_prefix:
        payload = JSON_PREFIX + payload
    return web.Response(
        body=payload, status=status, headers=headers, content_type="application/json"
    )


def exceptions(code: str, message: str) -> dict[str, Any]:
    return {"exceptions": [{"code": code, "message": message}]}
