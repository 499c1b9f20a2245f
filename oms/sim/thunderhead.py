"""Thunderhead simulator: the job API of ``docs/thunderhead.md`` over real HTTP.

Runs in-process on the embedded default or standalone
(``python -m oms.sim.thunderhead --port 8082``). Jobs progress with time, not
with background tasks: a job keeps the moment it was submitted and its status is
computed whenever it is read. Knobs under ``/_sim/config`` inject faults, hangs,
latency and a server-side rate limit; ``/_sim/stats`` counts what the client did.
With a state file (``make_app(state_file=...)``, ``--state-file``) the jobs it
accepted, and the stats that come of them, outlive a restart.

It imports nothing from OMS, so a bug in OMS's client cannot hide itself here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from oms.sim import _thunderhead_gate as gate
from oms.sim import _thunderhead_jobs as job_model
from oms.sim._thunderhead_config import (
    ENDPOINTS,
    AcceptThenHang,
    BusinessFailure,
    Hang,
    Inject,
    SimConfig,
)
from oms.sim._thunderhead_store import JobFile

__all__ = [
    "API_PATH",
    "MAX_BODY_BYTES",
    "STATE",
    "TOKEN_PATH",
    "AcceptThenHang",
    "BusinessFailure",
    "Hang",
    "Inject",
    "SimConfig",
    "main",
    "make_app",
]

TOKEN_PATH = "/one/oauth2Server/token"
API_PATH = "/one/oauth2/api/v12/job"
MAX_BODY_BYTES = 10_000_000
"""Thunderhead's cap on one request body ("10 MB"); one byte more is a 413."""


class _BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    batchConfigResId: str
    batchName: str
    transactionDataType: str
    transactionData: str


STATE = gate.STATE
"""The simulator's state in its app: knobs, tokens, jobs and stats."""

_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(_BatchRequest)
_transaction_decoder = msgspec.json.Decoder(job_model.Transaction)
_transactions_decoder = msgspec.json.Decoder(list[job_model.Transaction])


def make_app(config: SimConfig | None = None, *, state_file: Path | None = None) -> web.Application:
    """Build the simulator app, its knobs set to ``config`` (default: no faults).

    With ``state_file``, every job accepted is appended to it, and on start the jobs
    already there are taken back (with ``by_reference`` and the job stats), so a
    restarted simulator still answers for them and still counts duplicates.
    """
    # Read bodies well past the cap so an oversized request gets our 413, not a reset.
    app = web.Application(middlewares=[gate.middleware], client_max_size=4 * MAX_BODY_BYTES)
    app[STATE] = gate.State(config=config or SimConfig())
    if state_file is not None:
        app[STATE].job_file = JobFile(state_file)
        app.cleanup_ctx.append(_job_file)
    add = app.router.add_route
    add("POST", TOKEN_PATH, _token, name="token")
    add("POST", f"{API_PATH}/submitBatch", _submit_batch, name="submitBatch")
    add("POST", f"{API_PATH}/generateDocument", _generate_document, name="generateDocument")
    add("GET", f"{API_PATH}/{{job_id}}", _job_status, name="jobStatus")
    add("GET", API_PATH, _find_by_reference, name="findByReference")
    add("GET", "/_sim/config", _get_config)
    add("POST", "/_sim/config", _set_config)
    add("GET", "/_sim/stats", _stats)
    app.on_shutdown.append(_release_hangs)
    return app


def _bad_request(code: str, message: str) -> gate.Answer:
    return gate.Answer(400, gate.exceptions(code, message))


async def _read_body(request: web.Request) -> bytes:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        body = None
    if body is None or len(body) > MAX_BODY_BYTES:
        raise gate.Answer(
            413, gate.exceptions("REQUEST_TOO_LARGE", f"request body over {MAX_BODY_BYTES} bytes")
        )
    return body


# --- the API ----------------------------------------------------------------


async def _token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    form = await request.post()
    grant_type = form.get("grant_type")
    if grant_type not in ("client_credentials", "password"):
        raise gate.Answer(400, {"error": "unsupported_grant_type"})
    if grant_type == "password" and not (form.get("username") and form.get("password")):
        raise gate.Answer(400, {"error": "invalid_request"})
    offered = []
    if "client_id" in form or "client_secret" in form:
        offered.append((form.get("client_id"), form.get("client_secret")))
    if "Authorization" in request.headers:
        offered.append(_basic_credentials(request.headers["Authorization"]))
    if not offered or any(pair != (config.client_id, config.client_secret) for pair in offered):
        raise gate.Answer(401, {"error": "invalid_client"})
    now = time.monotonic()
    state.tokens = {token: expiry for token, expiry in state.tokens.items() if expiry > now}
    token = secrets.token_urlsafe(32)
    state.tokens[token] = now + config.token_ttl_s
    ttl = config.token_ttl_s
    expires_in = int(ttl) if ttl.is_integer() else ttl
    return gate.answer(
        request, {"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    )


def _basic_credentials(header: str) -> tuple[str, str]:
    """``(client_id, client_secret)`` from a Basic header; blanks if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return ("", "")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    return (client_id, secret)


async def _submit_batch(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_body(request)
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad_request("INVALID_REQUEST", str(exc)) from None
    if not _known_batch_config(state.config, batch.batchConfigResId):
        raise _bad_request(
            "UNKNOWN_BATCH_CONFIG", f"unknown batchConfigResId {batch.batchConfigResId!r}"
        )
    if batch.transactionDataType != "application/json":
        raise _bad_request(
            "INVALID_REQUEST", f"unsupported transactionDataType {batch.transactionDataType!r}"
        )
    try:
        data = base64.b64decode(batch.transactionData, validate=True)
    except binascii.Error:
        raise _bad_request("INVALID_TRANSACTION_DATA", "transactionData is not Base64") from None
    try:
        transactions = _transactions_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise _bad_request("INVALID_TRANSACTION_DATA", f"transactionData: {exc}") from None
    if not transactions:
        raise _bad_request("INVALID_TRANSACTION_DATA", "transactionData holds no transaction")
    for tx in transactions:
        _check_reference(tx)
    if (failure := gate.take(state, "business_failure", "submitBatch")) is not None:
        return gate.answer(request, _business_failure(failure.form, batch.batchName))
    job = _create_job(state, batch.batchName, transactions, batch.batchConfigResId)
    if gate.take(state, "accept_then_hang", "submitBatch") is not None:
        await gate.hang(state)
    return gate.answer(request, {"jobId": job.job_id})


async def _generate_document(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_body(request)
    try:
        tx = _transaction_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad_request("INVALID_REQUEST", str(exc)) from None
    _check_reference(tx)
    job = _create_job(state, "", [tx], "")
    await gate.pause(state, job.per_document_s)  # composed while the caller waits
    answer: dict[str, Any] = {"jobId": job.job_id, "correlationReference": tx.correlationReference}
    if job.fails[0]:
        answer |= {
            "status": "FAILED",
            "envelopes": [],
            "exceptions": job_model.composition_failure(tx),
        }
    else:
        answer |= {"status": "COMPLETED", "envelopes": [job_model.envelope(job, tx)]}
    return gate.answer(request, answer)


async def _job_status(request: web.Request) -> web.Response:
    job = request.app[STATE].jobs.get(request.match_info["job_id"])
    if job is None:
        raise gate.Answer(404, gate.exceptions("JOB_NOT_FOUND", "no such job"))
    return gate.answer(request, job_model.view(job, time.monotonic()))


async def _find_by_reference(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reference = request.query.get("reference", "")
    if not reference.strip():
        raise _bad_request("INVALID_REQUEST", "the reference parameter is required")
    now = time.monotonic()
    jobs = [state.jobs[job_id] for job_id in state.by_reference.get(reference, [])]
    found = [
        {"jobId": job.job_id, "batchName": job.batch_name, "status": job_model.status_at(job, now)}
        for job in jobs
    ]
    return gate.answer(request, {"jobs": found})


def _known_batch_config(config: SimConfig, res_id: str) -> bool:
    if not res_id.strip():
        return False
    if config.batch_config_ids is not None:
        return res_id in config.batch_config_ids
    return res_id.startswith("BC-") and bool(res_id[3:].strip())


def _check_reference(tx: job_model.Transaction) -> None:
    if not tx.correlationReference.strip():
        raise _bad_request("INVALID_TRANSACTION_DATA", "a transaction has no correlationReference")


def _business_failure(form: str, batch_name: str) -> dict[str, Any]:
    text = f"batch {batch_name!r} rejected (simulated business failure)"
    if form == "jobMessages":
        return {"jobMessages": [{"type": "E", "text": text}]}
    return gate.exceptions("BATCH_REJECTED", text)


def _create_job(
    state: gate.State,
    batch_name: str,
    transactions: list[job_model.Transaction],
    batch_config_res_id: str,
) -> job_model.Job:
    """Create a job, write it to the job file if there is one, and record it."""
    config = state.config
    job = job_model.new_job(
        batch_name,
        transactions,
        batch_config_res_id=batch_config_res_id,
        now=time.monotonic(),
        per_document_s=config.processing_s_per_document,
        failure_ratio=config.failure_ratio,
    )
    if state.job_file is not None:
        state.job_file.append(job)  # before the call is answered
    _record_job(state, job)
    return job


def _record_job(state: gate.State, job: job_model.Job) -> None:
    """Keep a job; count its transactions, and those whose reference came before."""
    state.jobs[job.job_id] = job
    state.stats.transactions += len(job.transactions)
    for tx in job.transactions:
        held_by = state.by_reference.setdefault(tx.correlationReference, [])
        if held_by:
            state.stats.duplicates[tx.correlationReference] += 1
        if job.job_id not in held_by:
            held_by.append(job.job_id)


async def _job_file(app: web.Application) -> AsyncIterator[None]:
    """On start, take back the jobs of the job file; on cleanup, close it."""
    state = app[STATE]
    job_file = state.job_file
    assert job_file is not None
    for job in job_file.open():
        if job.job_id not in state.jobs:
            _record_job(state, job)
    try:
        yield
    finally:
        job_file.close()


# --- /_sim ------------------------------------------------------------------


def _sim_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def _get_config(request: web.Request) -> web.Response:
    return _sim_json(msgspec.to_builtins(request.app[STATE].config))


async def _set_config(request: web.Request) -> web.Response:
    """Change the knobs named in the body (the rest stay); ``reset`` clears jobs and stats."""
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
