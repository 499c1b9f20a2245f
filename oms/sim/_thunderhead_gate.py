"""The gate every call to the Thunderhead simulator's API passes, and the state it keeps.

In order: count the call, rate-limit it, add latency, draw a chaos outcome (not for
the token endpoint), answer an injected fault or hang, check the bearer token; then
the handler serves it. Handlers answer an error by raising ``Answer``; every JSON
answer of the API and the token endpoint may carry the ``while(1);`` prefix.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from oms.sim import _thunderhead_jobs as job_model
from oms.sim import _thunderhead_shapes as shapes
from oms.sim._thunderhead_config import (
    API_PATH,
    ENDPOINTS,
    Chaos,
    Endpoint,
    Inject,
    SimConfig,
)
from oms.sim._thunderhead_store import JobFile

HANG_S = 600.0
"""Longer than any client timeout, but bounded so a forgotten hang ends."""
JSON_PREFIX = b"while(1);"
CHAOS_OUTCOMES = ("error_500", "error_503", "hang", "unauthorized")

_encoder = msgspec.json.Encoder()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Problem = shapes.Problem


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
    rejected_413: int = 0
    rejected_400: int = 0
    """submitBatch calls refused with a 400 (malformed, unknown id, ``reject_marker``)."""
    chaos: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


def _first_job_id() -> int:
    """Milliseconds since the epoch: above the ids of any earlier run, file or not."""
    return int(time.time() * 1000)


@dataclasses.dataclass
class State:
    """Everything the simulator holds, under ``STATE`` in its app."""

    config: SimConfig
    tokens: dict[str, float] = dataclasses.field(default_factory=dict)
    jobs: dict[int, job_model.Job] = dataclasses.field(default_factory=dict)
    by_reference: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    submitted: set[str] = dataclasses.field(default_factory=set)
    """Every reference submitted, by submitBatch or generateDocument."""
    stats: Stats = dataclasses.field(default_factory=Stats)
    job_file: JobFile | None = None
    """Where accepted jobs are kept across restarts; None keeps them in memory only."""
    next_job_id: int = dataclasses.field(default_factory=_first_job_id)
    """Never goes back, not even on reset, so a client never meets an id twice."""
    chaos: random.Random = dataclasses.field(init=False)
    # Set (and replaced) on reset and on shutdown, so hung requests and latency
    # sleeps end then instead of holding up a test or a graceful stop.
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Start the chaos draws again from the knob's seed."""
        chaos = self.config.chaos
        self.chaos = random.Random(None if chaos is None else chaos.seed)

    def reset(self) -> None:
        """Forget jobs (the job file too) and stats, end hung calls; knobs and tokens stay."""
        if self.job_file is not None:
            self.job_file.truncate()
        self.jobs.clear()
        self.by_reference.clear()
        self.submitted.clear()
        self.stats = Stats()
        self.release.set()
        self.release = asyncio.Event()

    def take_job_id(self) -> int:
        job_id = self.next_job_id
        self.next_job_id += 1
        return job_id

    def record(self, entry: job_model.Job | job_model.Generated) -> None:
        """Keep a job or a generated document's reference; count what came before."""
        if isinstance(entry, job_model.Generated):
            self._submitted(entry.reference)
            return
        job = entry
        self.jobs[job.job_id] = job
        self.next_job_id = max(self.next_job_id, job.job_id + 1)
        self.stats.transactions += len(job.transactions)
        for tx in job.transactions:
            self._submitted(tx.reference)
            held_by = self.by_reference.setdefault(tx.reference, [])
            if job.job_id not in held_by:
                held_by.append(job.job_id)

    def _submitted(self, reference: str) -> None:
        if reference in self.submitted:
            self.stats.duplicates[reference] += 1
        self.submitted.add(reference)


STATE = web.AppKey("thunderhead_sim_state", State)


class Answer(Exception):
    """Raised by a handler to answer the call with an error now."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


def refuse(status: int, problem: shapes.Problem, msg: str) -> Answer:
    """An error answer of the job API: ``exceptions`` in the public shape."""
    return Answer(status, shapes.exceptions(problem, msg))


@web.middleware
async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Count, rate-limit, delay, break as the knobs say, check the token, then serve."""
    endpoint = request.match_info.route.name
    if endpoint not in ENDPOINTS:
        return await _unrouted(request, handler)
    state = request.app[STATE]
    state.stats.calls[endpoint] += 1
    admitted = _admit(state)
    await pause(state, state.config.latency_s)
    try:
        if not admitted:
            state.stats.rejected_429 += 1
            headers = {"Retry-After": "1"} if state.config.rate_limit_retry_after else None
            raise Answer(
                429, shapes.exceptions(_Problem.RATE_LIMITED, "too many requests"), headers
            )
        if endpoint != "token":
            await _chaos(state)
        if (rule := _take_inject(state, endpoint)) is not None:
            headers = None if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
            raise Answer(
                rule.status,
                shapes.exceptions(_Problem.INJECTED, f"injected fault (HTTP {rule.status})"),
                headers,
            )
        if take(state, "hang", endpoint) is not None:
            await hang(state)
        if endpoint != "token" and not _authorised(state, request):
            raise _invalid_token()
        return await handler(request)
    except Answer as refusal:
        return answer(request, refusal.body, refusal.status, refusal.headers)


async def _unrouted(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A path or method the API does not have: its 404 or 405 carries exceptions too."""
    if not request.path.startswith(API_PATH):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = _Problem.NOT_FOUND if exc.status == 404 else _Problem.INVALID_REQUEST
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return answer(request, shapes.exceptions(problem, exc.reason), exc.status, headers)


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


async def _chaos(state: State) -> None:
    """Draw once; on a fault, count it and answer it (a hang answers only when released)."""
    chaos = state.config.chaos
    if chaos is None:
        return
    outcome = _outcome(chaos, state.chaos.random())
    if outcome is None:
        return
    state.stats.chaos[outcome] += 1
    if outcome == "error_500":
        raise refuse(500, _Problem.SERVER_ERROR, "simulated server error")
    if outcome == "error_503":
        raise refuse(503, _Problem.UNAVAILABLE, "simulated maintenance")
    if outcome == "hang":
        await hang(state)
    if outcome == "unauthorized":  # a spurious 401: the token is fine
        raise _invalid_token()


def _outcome(chaos: Chaos, draw: float) -> str | None:
    """The outcome a draw in [0, 1) falls on, each taking a slice as wide as its odds."""
    odds = (chaos.error_500, chaos.error_503, chaos.hang, chaos.unauthorized)
    for outcome, odd in zip(CHAOS_OUTCOMES, odds, strict=True):
        if draw < odd:
            return outcome
        draw -= odd
    return None


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
    raise refuse(503, _Problem.UNAVAILABLE, "the simulated hang ended")


def _authorised(state: State, request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expiry = state.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    return expiry is not None and expiry > time.monotonic()


def _invalid_token() -> Answer:
    """RFC 6750's 401, with ``exceptions`` as every job API error has."""
    body = {"error": "invalid_token"} | shapes.exceptions(
        _Problem.INVALID_TOKEN, "missing, unknown or expired access token"
    )
    return Answer(401, body, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def answer(
    request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    payload = _encoder.encode(body)
    if request.app[STATE].config.json_prefix:
        payload = JSON_PREFIX + payload
    return web.Response(
        body=payload, status=status, headers=headers, content_type="application/json"
    )
