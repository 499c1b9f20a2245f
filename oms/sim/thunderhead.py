"""Thunderhead simulator: the job API of ``docs/thunderhead.md`` over real HTTP.

Runs in-process on the embedded default or standalone
(``python -m oms.sim.thunderhead --port 8082``). Jobs progress with time, not
with background tasks: a job keeps the moment it was submitted and its status is
computed whenever it is read. Knobs under ``/_sim/config`` inject faults, hangs,
latency, chaos and a server-side rate limit; ``/_sim/stats`` counts what the client
did. With a state file (``make_app(state_file=...)``, ``--state-file``) the jobs it
accepted, and the stats that come of them, outlive a restart.

It follows the document, not OMS's client, and imports nothing from OMS, so a bug
in the client cannot hide itself here.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from oms.sim import _thunderhead_gate as gate
from oms.sim import _thunderhead_jobs as job_model
from oms.sim import _thunderhead_requests as incoming
from oms.sim import _thunderhead_shapes as shapes
from oms.sim._thunderhead_config import (
    API_PATH,
    ENDPOINTS,
    MAX_REQUEST_BYTES,
    TOKEN_PATH,
    AcceptThenHang,
    BusinessFailure,
    Chaos,
    Hang,
    Inject,
    SimConfig,
)
from oms.sim._thunderhead_store import JobFile
from oms.sim._thunderhead_token import token

__all__ = [
    "API_PATH",
    "MAX_BODY_BYTES",
    "STATE",
    "TOKEN_PATH",
    "AcceptThenHang",
    "BusinessFailure",
    "Chaos",
    "Hang",
    "Inject",
    "SimConfig",
    "main",
    "make_app",
]

MAX_BODY_BYTES = MAX_REQUEST_BYTES
"""The default of ``max_request_bytes``: Thunderhead's "10MB"."""
STATE = gate.STATE
"""The simulator's state in its app: knobs, tokens, jobs and stats."""

_JSON = "application/json"
_Problem = shapes.Problem
_encoder = msgspec.json.Encoder()


def make_app(config: SimConfig | None = None, *, state_file: Path | None = None) -> web.Application:
    """Build the simulator app, its knobs set to ``config`` (default: no faults).

    With ``state_file``, every submission taken is appended to it, and on start the
    ones already there are taken back (with ``by_reference`` and the job stats), so a
    restarted simulator still answers for its jobs and still counts duplicates.
    """
    # API bodies are streamed past ``max_request_bytes`` (incoming.read_body); this cap
    # only bounds the token form and /_sim/config.
    app = web.Application(middlewares=[gate.middleware], client_max_size=MAX_REQUEST_BYTES)
    app[STATE] = gate.State(config=config or SimConfig())
    if state_file is not None:
        app[STATE].job_file = JobFile(state_file)
        app.cleanup_ctx.append(_job_file)
    add = app.router.add_route
    add("POST", TOKEN_PATH, token, name="token")
    add("POST", f"{API_PATH}/submitBatch", _submit_batch, name="submitBatch")
    add("POST", f"{API_PATH}/generateDocument", _generate_document, name="generateDocument")
    add("GET", f"{API_PATH}/{{job_id}}", _job_status, name="jobStatus")
    add("GET", API_PATH, _find_by_reference, name="findByReference")
    add("GET", "/_sim/config", _get_config)
    add("POST", "/_sim/config", _set_config)
    add("GET", "/_sim/stats", _stats)
    app.on_shutdown.append(_release_hangs)
    return app


# --- the API ----------------------------------------------------------------


async def _submit_batch(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await incoming.read_body(request, state)
    try:
        batch, res_id, transactions = incoming.accept_batch(state.config, body)
    except gate.Answer as refusal:
        if refusal.status == 400:
            state.stats.rejected_400 += 1
        raise
    if (failure := gate.take(state, "business_failure", "submitBatch")) is not None:
        return gate.answer(request, _business_failure(failure.form, batch.batchName))
    job = _create_job(state, batch.batchName, transactions, res_id)
    if gate.take(state, "accept_then_hang", "submitBatch") is not None:
        await gate.hang(state)
    return gate.answer(request, {"jobId": job.job_id, "exceptions": [], "jobMessages": []})


async def _generate_document(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    body = await incoming.read_body(request, state)
    document = incoming.accept_document(config, body, request.query)
    reference = document.reference
    if reference is not None:
        _keep(state, job_model.Generated(reference, time.monotonic()))
    await gate.pause(state, config.processing_s_per_document)  # composed while the caller waits
    stem = reference or "document"
    answer: dict[str, Any]
    if job_model.fails(reference or document.data.decode("latin-1"), config.failure_ratio):
        failure = job_model.composition_failure(stem)
        answer = {
            "exceptions": [failure],
            "envelopes": [],
            "jobMessages": [shapes.message("E", failure.msg, time.monotonic())],
        }
    else:
        location = f"th://documents/{secrets.token_hex(8)}"
        envelope = shapes.envelope(
            stem, document.channel, location=location, with_data=document.include_data
        )
        answer = {
            "exceptions": [],
            "envelopes": [envelope],
            "jobMessages": [shapes.message("I", "document generated", time.monotonic())],
        }
    return gate.answer(request, answer | {"numberTransactions": 1})


async def _job_status(request: web.Request) -> web.Response:
    raw_id = request.match_info["job_id"]
    job_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None
    job = request.app[STATE].jobs.get(job_id) if job_id is not None else None
    if job is None:
        raise gate.refuse(404, _Problem.NOT_FOUND, f"no job {raw_id!r}")
    return gate.answer(request, job_model.view(job, time.monotonic()))


async def _find_by_reference(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reference = request.query.get("reference", "")
    if not reference.strip():
        raise gate.refuse(400, _Problem.INVALID_REQUEST, "the reference parameter is required")
    now = time.monotonic()
    jobs = [state.jobs[job_id] for job_id in state.by_reference.get(reference, [])]
    found = [
        {"jobId": job.job_id, "batchName": job.batch_name, "status": job_model.status_at(job, now)}
        for job in jobs
    ]
    return gate.answer(request, {"jobs": found})


def _business_failure(form: str, batch_name: str) -> dict[str, Any]:
    text = f"batch {batch_name!r} rejected (simulated business failure)"
    if form == "jobMessages":
        return {"exceptions": [], "jobMessages": [shapes.message("E", text, time.monotonic())]}
    return shapes.exceptions(_Problem.BATCH_REJECTED, text) | {"jobMessages": []}


def _create_job(
    state: gate.State,
    batch_name: str,
    transactions: list[job_model.Transaction],
    batch_config_res_id: int,
) -> job_model.Job:
    config = state.config
    job = job_model.new_job(
        state.take_job_id(),
        batch_name,
        transactions,
        batch_config_res_id=batch_config_res_id,
        correlation_field=config.correlation_field,
        now=time.monotonic(),
        per_document_s=config.processing_s_per_document,
        failure_ratio=config.failure_ratio,
    )
    _keep(state, job)
    return job


def _keep(state: gate.State, entry: job_model.Job | job_model.Generated) -> None:
    """Write to the job file if there is one (before the call is answered), and record."""
    if state.job_file is not None:
        state.job_file.append(entry)
    state.record(entry)


async def _job_file(app: web.Application) -> AsyncIterator[None]:
    """On start, take back the entries of the job file; on cleanup, close it."""
    state = app[STATE]
    job_file = state.job_file
    assert job_file is not None
    for entry in job_file.open():
        if not isinstance(entry, job_model.Job) or entry.job_id not in state.jobs:
            state.record(entry)
    try:
        yield
    finally:
        job_file.close()


# --- /_sim ------------------------------------------------------------------


def _sim_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type=_JSON)


async def _get_config(request: web.Request) -> web.Response:
    return _sim_json(msgspec.to_builtins(request.app[STATE].config))


async def _set_config(request: web.Request) -> web.Response:
    """Change the knobs named in the body (the rest stay); ``reset`` clears jobs and stats.

    Setting ``chaos`` (or resetting) starts its draws again from its seed.
    """
    state = request.app[STATE]
    try:
        changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
        reset = changes.pop("reset", False)
        if not isinstance(reset, bool):
            raise msgspec.ValidationError("reset must be true or false")
        config = msgspec.convert(msgspec.to_builtins(state.config) | changes, SimConfig)
    except msgspec.DecodeError as exc:  # ValidationError is one
        return _sim_json({"error": str(exc)}, status=400)
    if reset:
        state.reset()
    state.config = config
    if reset or "chaos" in changes:
        state.reseed()
    return _sim_json(msgspec.to_builtins(config))


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stats = state.stats
    return _sim_json(
        {
            "calls": {name: stats.calls[name] for name in ENDPOINTS},
            "peak_rate_per_s": stats.peak_rate_per_s,
            "duplicate_submissions": stats.duplicates.total(),
            "duplicates": dict(stats.duplicates),
            "jobs": len(state.jobs),
            "transactions": stats.transactions,
            "rejected_429": stats.rejected_429,
            "rejected_413": stats.rejected_413,
            "rejected_400": stats.rejected_400,
            "chaos": {outcome: stats.chaos[outcome] for outcome in gate.CHAOS_OUTCOMES},
        }
    )


async def _release_hangs(app: web.Application) -> None:
    app[STATE].release.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Thunderhead simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument(
        "--config", default="{}", help="initial knobs as JSON, e.g. '{\"failure_ratio\": 0.1}'"
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="keep accepted jobs in this file (JSON lines) so they outlive a restart",
    )
    args = parser.parse_args(argv)
    try:
        config = msgspec.json.decode(args.config, type=SimConfig)
    except msgspec.DecodeError as exc:
        parser.error(f"--config: {exc}")
    web.run_app(make_app(config, state_file=args.state_file), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
