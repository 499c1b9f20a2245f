"""The Thunderhead simulator over real HTTP on 127.0.0.1, as docs/thunderhead.md says.

Plain aiohttp calls only: nothing from OMS's own Thunderhead client, so the two
are checked against the contract separately.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from oms.sim import thunderhead as sim

API = "/one/oauth2/api/v12/job"
TOKEN = "/one/oauth2Server/token"
BATCH_CONFIG = 1335501440
CLIENT = ("oms", "oms-simulator-secret")
FINAL = {"COMPLETED", "FAILED"}
PREFIX = "while(1);"


def decode(text: str) -> Any:
    """An answer's JSON, its ``while(1);`` prefix stripped if it has one."""
    return json.loads(text.removeprefix(PREFIX))


class Simulator:
    """A running simulator, a client session for it, and a bearer token once asked for."""

    def __init__(self, runner: web.AppRunner, url: str, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.url = url
        self.session = session
        self.token = ""

    async def stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    async def configure(self, **knobs: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/_sim/config", json=knobs) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sim/stats") as r:
            assert r.status == 200
            return await r.json()

    async def post_token(
        self, form: dict[str, str], auth: tuple[str, str] | None = None
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        """The token endpoint; ``auth`` goes in a Basic header."""
        headers = {} if auth is None else {"Authorization": basic(*auth)}
        async with self.session.post(f"{self.url}{TOKEN}", data=form, headers=headers) as r:
            return r.status, decode(await r.text()), r.headers

    async def login(self) -> None:
        status, body, _ = await self.post_token({"grant_type": "client_credentials"}, CLIENT)
        assert status == 200, body
        self.token = body["access_token"]

    def request(
        self, method: str, path: str, timeout_s: float = 10.0, **kwargs: Any
    ) -> Any:  # the aiohttp request context manager
        headers = {"Authorization": f"Bearer {self.token}"} | kwargs.pop("headers", {})
        return self.session.request(
            method,
            f"{self.url}{path}",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            **kwargs,
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.request(method, path, **kwargs) as r:
            return r.status, decode(await r.text())

    async def submit(self, *references: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        return await self.post_batch(batch(*references), timeout_s=timeout_s)

    async def post_batch(self, body: Any, timeout_s: float = 10.0) -> tuple[int, Any]:
        return await self.call("POST", f"{API}/submitBatch", json=body, timeout_s=timeout_s)

    async def generate(
        self, body: Any, include: str | None = "false", timeout_s: float = 10.0
    ) -> tuple[int, Any]:
        params = {} if include is None else {"includeDocumentData": include}
        return await self.call(
            "POST", f"{API}/generateDocument", json=body, params=params, timeout_s=timeout_s
        )

    async def find(self, reference: str) -> list[dict[str, Any]]:
        status, body = await self.call("GET", API, params={"reference": reference})
        assert status == 200, body
        return body["jobs"]

    async def wait_final(self, job_id: int, deadline_s: float = 5.0) -> tuple[list[str], Any]:
        """Poll the job until it is final; every job status seen, and the last answer."""
        seen: list[str] = []
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            status, body = await self.call("GET", f"{API}/{job_id}")
            assert status == 200, body
            seen.append(body["status"])
            if body["status"] in FINAL:
                return seen, body
            await asyncio.sleep(0.02)
        pytest.fail(f"job {job_id} not final after {deadline_s} s: {seen[-5:]}")


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then Base64 of ``id:secret``."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def transaction(reference: str, channel: str = "email", **extra: Any) -> dict[str, Any]:
    return {
        "correlationReference": reference,
        "templateId": "TPL-renewal",
        "templateVersion": 3,
        "channel": channel,
        "language": "en",
        "brand": {"code": "acme"},
        "recipient": {"email": "a@example.com"},
        "data": {"policy": "P-1"},
    } | extra


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.b64encode(raw).decode()


def batch(*references: str, batch_config: Any = BATCH_CONFIG) -> dict[str, Any]:
    return batch_of([transaction(ref) for ref in references], batch_config=batch_config)


def batch_of(transactions: list[Any], batch_config: Any = BATCH_CONFIG) -> dict[str, Any]:
    return {
        "batchConfigResId": batch_config,
        "batchName": "0b6f3c1e-batch",
        "transactionDataType": "application/json",
        "transactionData": b64(transactions),
    }


def document(tx: Any, **fields: Any) -> dict[str, Any]:
    """A generateDocument body for one JSON transaction."""
    return {
        "batchConfigResId": BATCH_CONFIG,
        "transactionData": b64(tx),
        "transactionDataType": "application/json",
    } | fields


def assert_exceptions(body: Any) -> list[dict[str, Any]]:
    """The body's exceptions, each in the public shape; there is at least one."""
    found = body["exceptions"]
    assert found, body
    for exc in found:
        assert set(exc) == {"classId", "id", "className", "msg"}, exc
        assert type(exc["classId"]) is int
        assert type(exc["id"]) is int
        assert isinstance(exc["className"], str)
        assert isinstance(exc["msg"], str)
        assert exc["msg"]
    return found


def assert_message(message: Any, msg_type: str) -> None:
    assert set(message) == {"msgType", "msgText", "msgDate"}, message
    assert message["msgType"] == msg_type
    assert message["msgText"]
    date = datetime.datetime.fromisoformat(message["msgDate"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs(date.timestamp() - time.time()) < 60


async def start(config: sim.SimConfig | None = None, state_file: Path | None = None) -> Simulator:
    runner = web.AppRunner(sim.make_app(config, state_file=state_file), shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return Simulator(runner, f"http://{host}:{port}", aiohttp.ClientSession())


@pytest.fixture
async def th() -> AsyncIterator[Simulator]:
    running = await start(sim.SimConfig(processing_s_per_document=0.02))
    try:
        await running.login()
        yield running
    finally:
        await running.stop()


# --- token ------------------------------------------------------------------

GRANT = {"grant_type": "client_credentials"}
FORM_CLIENT = {"client_id": CLIENT[0], "client_secret": CLIENT[1]}


async def test_token_with_basic_authentication(th: Simulator) -> None:
    status, body, _ = await th.post_token(GRANT, CLIENT)
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"]


async def test_token_with_form_authentication(th: Simulator) -> None:
    status, body, _ = await th.post_token(GRANT | FORM_CLIENT)
    assert status == 200, body
    th.token = body["access_token"]
    assert (await th.call("GET", API, params={"reference": "doc-1"}))[0] == 200


async def test_two_authentication_methods_are_invalid_request(th: Simulator) -> None:
    status, body, _ = await th.post_token(GRANT | FORM_CLIENT, CLIENT)
    assert (status, body) == (400, {"error": "invalid_request"})
    # Even a client_id alone in the form is a second method.
    status, body, _ = await th.post_token(GRANT | {"client_id": CLIENT[0]}, CLIENT)
    assert (status, body) == (400, {"error": "invalid_request"})


async def test_no_authentication_is_invalid_client(th: Simulator) -> None:
    status, body, headers = await th.post_token(GRANT)
    assert (status, body) == (401, {"error": "invalid_client"})
    assert "WWW-Authenticate" not in headers


async def test_wrong_basic_credentials_get_a_basic_challenge(th: Simulator) -> None:
    status, body, headers = await th.post_token(GRANT, ("oms", "wrong"))
    assert (status, body) == (401, {"error": "invalid_client"})
    assert headers["WWW-Authenticate"] == 'Basic realm="thunderhead"'
    async with th.session.post(
        f"{th.url}{TOKEN}", data=GRANT, headers={"Authorization": "Basic !!not-base64"}
    ) as r:
        assert r.status == 401
        assert "Basic" in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "form",
    [
        {"client_id": "oms", "client_secret": "wrong"},
        {"client_id": "oms"},  # no secret
        {"client_secret": CLIENT[1]},  # no id
    ],
)
async def test_wrong_form_credentials_are_invalid_client(
    th: Simulator, form: dict[str, str]
) -> None:
    status, body, headers = await th.post_token(GRANT | form)
    assert (status, body) == (401, {"error": "invalid_client"})
    assert "WWW-Authenticate" not in headers


async def test_basic_parts_are_form_urlencoded(th: Simulator) -> None:
    client = ("oms:client", "s3cret with:colon+plus/é")
    await th.configure(client_id=client[0], client_secret=client[1])
    assert (await th.post_token(GRANT, client))[0] == 200
    assert (await th.post_token(GRANT | dict(zip(FORM_CLIENT, client, strict=True))))[0] == 200
    assert (await th.post_token(GRANT, CLIENT))[0] == 401


async def test_client_auth_knob_limits_the_method(th: Simulator) -> None:
    await th.configure(client_auth="basic")
    status, body, headers = await th.post_token(GRANT | FORM_CLIENT)
    assert (status, body) == (401, {"error": "invalid_client"})
    assert (await th.post_token(GRANT, CLIENT))[0] == 200

    await th.configure(client_auth="form")
    status, body, headers = await th.post_token(GRANT, CLIENT)
    assert (status, body) == (401, {"error": "invalid_client"})
    assert headers["WWW-Authenticate"] == 'Basic realm="thunderhead"'
    assert (await th.post_token(GRANT | FORM_CLIENT))[0] == 200
    # Two methods stay a 400, whatever the server accepts.
    assert (await th.post_token(GRANT | FORM_CLIENT, CLIENT))[0] == 400


async def test_grants(th: Simulator) -> None:
    password = {"grant_type": "password", "username": "u", "password": "p"}
    assert (await th.post_token(password, CLIENT))[0] == 200
    for missing in ("username", "password"):
        form = {k: v for k, v in password.items() if k != missing}
        assert (await th.post_token(form, CLIENT))[:2] == (400, {"error": "invalid_request"})
    assert (await th.post_token({}, CLIENT))[:2] == (400, {"error": "invalid_request"})
    status, body, _ = await th.post_token({"grant_type": "authorization_code"}, CLIENT)
    assert (status, body) == (400, {"error": "unsupported_grant_type"})


async def test_calls_need_a_valid_token(th: Simulator) -> None:
    for token in ("not-a-token", ""):
        th.token = token
        async with th.request("GET", f"{API}?reference=doc-1") as r:
            assert r.status == 401
            body = decode(await r.text())
            assert body["error"] == "invalid_token"
            assert_exceptions(body)
            assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_tokens_expire() -> None:
    running = await start(sim.SimConfig(token_ttl_s=0.2))
    try:
        _, body, _ = await running.post_token(GRANT, CLIENT)
        assert body["expires_in"] == 0.2
        running.token = body["access_token"]
        assert (await running.call("GET", f"{API}?reference=doc-1"))[0] == 200
        await asyncio.sleep(0.3)
        status, body = await running.call("GET", f"{API}?reference=doc-1")
        assert (status, body["error"]) == (401, "invalid_token")
    finally:
        await running.stop()


# --- submitBatch and job ids -------------------------------------------------


async def test_submit_answers_a_numeric_job_id(th: Simulator) -> None:
    status, first = await th.submit("doc-1")
    assert status == 200, first
    assert set(first) == {"jobId", "exceptions", "jobMessages"}
    assert (first["exceptions"], first["jobMessages"]) == ([], [])
    assert type(first["jobId"]) is int
    # A string of digits is accepted too; ids go up.
    status, second = await th.post_batch(batch("doc-2", batch_config=str(BATCH_CONFIG)))
    assert status == 200, second
    assert type(second["jobId"]) is int
    assert second["jobId"] > first["jobId"]


@pytest.mark.parametrize(
    "batch_config", [True, 1.5, 12.0, "12a", "", " 12", "-3", "+5", 0, -3, "0", None, [12]]
)
async def test_invalid_batch_config_is_400(th: Simulator, batch_config: Any) -> None:
    status, body = await th.post_batch(batch("doc-1", batch_config=batch_config))
    assert status == 400
    assert_exceptions(body)
    stats = await th.stats()
    assert (stats["rejected_400"], stats["jobs"]) == (1, 0)


async def test_batch_config_ids_knob(th: Simulator) -> None:
    await th.configure(batch_config_ids=[7, 8])
    status, unknown = await th.submit("doc-1")
    assert status == 400
    (exc,) = assert_exceptions(unknown)
    assert str(BATCH_CONFIG) in exc["msg"]
    assert (await th.post_batch(batch("doc-1", batch_config=7)))[0] == 200
    assert (await th.post_batch(batch("doc-1", batch_config="8")))[0] == 200
    assert (await th.stats())["rejected_400"] == 1
    async with th.session.post(f"{th.url}/_sim/config", json={"batch_config_ids": ["7"]}) as r:
        assert r.status == 400


@pytest.mark.parametrize("job_id", ["J-nope", "12a", "-1", "1.0", "999999999999999"])
async def test_unknown_or_non_numeric_job_is_404(th: Simulator, job_id: str) -> None:
    await th.submit("doc-1")
    status, body = await th.call("GET", f"{API}/{job_id}")
    assert status == 404
    assert "jobId" not in body
    assert_exceptions(body)


async def test_unrouted_api_calls_carry_exceptions(th: Simulator) -> None:
    _, submitted = await th.submit("doc-1")
    status, body = await th.call("POST", f"{API}/{submitted['jobId']}", json={})
    assert status == 405
    assert_exceptions(body)
    status, body = await th.call("GET", f"{API}/1/envelopes")
    assert status == 404
    assert_exceptions(body)


async def test_submit_needs_a_correlation_reference(th: Simulator) -> None:
    for tx in (
        {"channel": "email"},
        {"correlationReference": " "},
        {"correlationReference": 12},
        {"correlationReference": None},
    ):
        status, body = await th.post_batch(batch_of([transaction("doc-1"), tx]))
        assert status == 400, tx
        assert "correlationReference" in assert_exceptions(body)[0]["msg"]
    stats = await th.stats()
    assert (stats["rejected_400"], stats["jobs"], stats["transactions"]) == (4, 0, 0)


@pytest.mark.parametrize(
    ("transaction_data", "why"),
    [
        ("not base64!!", "not Base64"),
        (b64(b"{not json"), "not JSON"),
        (b64({"correlationReference": "x"}), "not a list"),
        (b64([]), "empty"),
        (b64(["doc-1"]), "a transaction that is not an object"),
    ],
)
async def test_bad_transaction_data_is_400(th: Simulator, transaction_data: str, why: str) -> None:
    body = batch("doc-1") | {"transactionData": transaction_data}
    status, answer = await th.post_batch(body)
    assert status == 400, why
    assert_exceptions(answer)
    stats = await th.stats()
    assert (stats["jobs"], stats["rejected_400"]) == (0, 1), why


@pytest.mark.parametrize(
    "body",
    [
        {"batchName": "b", "transactionDataType": "application/json", "transactionData": ""},
        batch("doc-1") | {"transactionDataType": "application/xml"},
        batch("doc-1") | {"unexpected": 1},
        batch("doc-1") | {"projectId": "zero"},
        batch("doc-1") | {"properties": [{"name": "a"}]},
        ["not", "an", "object"],
    ],
)
async def test_malformed_submission_is_400(th: Simulator, body: Any) -> None:
    status, answer = await th.post_batch(body)
    assert status == 400
    assert_exceptions(answer)
    assert (await th.stats())["rejected_400"] == 1


async def test_optional_project_and_properties_are_accepted(th: Simulator) -> None:
    body = batch("doc-1") | {"projectId": 0, "properties": [{"name": "merge.pdf", "value": "1"}]}
    assert (await th.post_batch(body))[0] == 200


# --- jobs -------------------------------------------------------------------


async def test_a_job_goes_pending_running_completed(th: Simulator) -> None:
    await th.configure(processing_s_per_document=0.3)
    status, body = await th.submit("doc-1", "doc-2")
    assert status == 200, body
    job_id = body["jobId"]

    seen, job = await th.wait_final(job_id)
    assert seen[0] == "PENDING"
    assert "RUNNING" in seen
    assert seen[-1] == "COMPLETED"
    order = ["PENDING", "RUNNING", "COMPLETED"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)

    assert job["jobId"] == job_id
    assert job["batchName"] == "0b6f3c1e-batch"
    assert [t["correlationReference"] for t in job["transactions"]] == ["doc-1", "doc-2"]
    for tx in job["transactions"]:
        assert set(tx) == {"correlationReference", "status", "envelopes"} | {
            "exceptions",
            "jobMessages",
        }
        assert tx["status"] == "COMPLETED"
        assert (tx["exceptions"], tx["jobMessages"]) == ([], [])
        (envelope,) = tx["envelopes"]
        ref = tx["correlationReference"]
        assert envelope == {
            "primaryChannel": {
                "channelType": 1,
                "channelName": "HTML",
                "documentName": f"{ref}.html",
                "mimeType": "text/html",
                "partLocation": f"th://jobs/{job_id}/{ref}.html",
            }
        }
    messages = job["jobMessages"]
    for message in messages:
        assert_message(message, "I")


async def test_envelopes_are_empty_until_completed(th: Simulator) -> None:
    await th.configure(processing_s_per_document=2.0)
    _, body = await th.submit("doc-1")
    status, job = await th.call("GET", f"{API}/{body['jobId']}")
    assert status == 200
    assert job["status"] == "PENDING"
    (tx,) = job["transactions"]
    assert (tx["status"], tx["envelopes"], tx["exceptions"]) == ("PENDING", [], [])


@pytest.mark.parametrize(
    ("channel", "channel_type", "name", "mime_type", "extension"),
    [
        ("print", 2, "PRINT", "application/pdf", "pdf"),
        ("email", 1, "HTML", "text/html", "html"),
        ("sms", 3, "SMS", "text/plain", "txt"),
        ("archive", 2, "PRINT", "application/pdf", "pdf"),
        ("fax", 2, "PRINT", "application/pdf", "pdf"),
        (None, 2, "PRINT", "application/pdf", "pdf"),
    ],
)
async def test_channels_map_to_channel_types(
    th: Simulator,
    channel: str | None,
    channel_type: int,
    name: str,
    mime_type: str,
    extension: str,
) -> None:
    tx = transaction("doc-1", channel or "")
    if channel is None:
        del tx["channel"]
    _, body = await th.post_batch(batch_of([tx]))
    _, job = await th.wait_final(body["jobId"])
    (envelope,) = job["transactions"][0]["envelopes"]
    primary = envelope["primaryChannel"]
    assert (primary["channelType"], primary["channelName"]) == (channel_type, name)
    assert (primary["mimeType"], primary["documentName"]) == (mime_type, f"doc-1.{extension}")


async def test_failure_ratio_one_fails_every_transaction(th: Simulator) -> None:
    await th.configure(failure_ratio=1.0)
    _, body = await th.submit("doc-1", "doc-2")
    _, job = await th.wait_final(body["jobId"])
    assert job["status"] == "FAILED"
    for tx in job["transactions"]:
        assert tx["status"] == "FAILED"
        assert tx["envelopes"] == []
        assert_exceptions(tx)
        (message,) = tx["jobMessages"]
        assert_message(message, "E")
    assert_message(job["jobMessages"][-1], "E")
    # Read again, a failure is the same exception (same id).
    _, again = await th.call("GET", f"{API}/{body['jobId']}")
    assert again["transactions"] == job["transactions"]


async def test_a_partly_failed_job_completes_with_a_warning(th: Simulator) -> None:
    await th.configure(failure_ratio=0.5)
    _, body = await th.submit(*(f"doc-{i}" for i in range(20)))
    _, job = await th.wait_final(body["jobId"])
    assert {tx["status"] for tx in job["transactions"]} == FINAL
    assert job["status"] == "COMPLETED"
    assert_message(job["jobMessages"][-1], "W")
    assert not [m for m in job["jobMessages"] if m["msgType"] == "E"]


async def test_failures_are_deterministic_per_reference(th: Simulator) -> None:
    await th.configure(failure_ratio=0.5)
    references = [f"doc-{i}" for i in range(20)]
    outcomes = []
    for _ in range(2):
        _, body = await th.submit(*references)
        _, job = await th.wait_final(body["jobId"])
        outcomes.append([tx["status"] for tx in job["transactions"]])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == FINAL


async def test_find_by_reference(th: Simulator) -> None:
    _, first = await th.submit("doc-1", "doc-2")
    _, second = await th.submit("doc-2")
    found = await th.find("doc-2")
    assert [j["jobId"] for j in found] == [first["jobId"], second["jobId"]]
    assert all(type(j["jobId"]) is int for j in found)
    assert all(j["batchName"] == "0b6f3c1e-batch" for j in found)
    assert all(j["status"] in {"PENDING", "RUNNING", "COMPLETED"} for j in found)
    assert await th.find("doc-9") == []
    for params in ({}, {"reference": "  "}):
        status, body = await th.call("GET", API, params=params)
        assert status == 400
        assert_exceptions(body)


async def test_correlation_field_knob(th: Simulator) -> None:
    await th.configure(correlation_field="policyRef")
    # The default field no longer serves.
    status, body = await th.submit("doc-1")
    assert status == 400
    assert "policyRef" in assert_exceptions(body)[0]["msg"]
    tx = {"policyRef": "P-77", "channel": "print", "data": {"correlationReference": "no"}}
    status, body = await th.post_batch(batch_of([tx]))
    assert status == 200, body
    _, job = await th.wait_final(body["jobId"])
    (written,) = job["transactions"]
    assert written["policyRef"] == "P-77"
    assert "correlationReference" not in written
    assert [j["jobId"] for j in await th.find("P-77")] == [body["jobId"]]
    assert await th.find("no") == []
    async with th.session.post(f"{th.url}/_sim/config", json={"correlation_field": ""}) as r:
        assert r.status == 400


async def test_duplicates_are_counted_per_reference(th: Simulator) -> None:
    await th.submit("doc-1", "doc-2")
    await th.submit("doc-1")
    assert (await th.generate(document(transaction("doc-1"))))[0] == 200
    assert (await th.generate(document(transaction("doc-3"))))[0] == 200
    await th.submit("doc-3")
    stats = await th.stats()
    assert stats["duplicate_submissions"] == 3
    assert stats["duplicates"] == {"doc-1": 2, "doc-3": 1}
    assert stats["jobs"] == 3
    assert stats["transactions"] == 4
    assert stats["calls"] == {
        "token": 1,
        "submitBatch": 3,
        "jobStatus": 0,
        "findByReference": 0,
        "generateDocument": 2,
    }


async def test_reset_clears_jobs_and_stats(th: Simulator) -> None:
    _, body = await th.submit("doc-1")
    await th.configure(reset=True, failure_ratio=1.0)
    stats = await th.stats()
    assert stats["jobs"] == stats["transactions"] == stats["duplicate_submissions"] == 0
    assert sum(stats["calls"].values()) == 0
    assert (await th.call("GET", f"{API}/{body['jobId']}"))[0] == 404
    # The token survives a reset, the knobs sent with it apply, and ids go on rising.
    _, again = await th.submit("doc-1")
    assert again["jobId"] > body["jobId"]
    _, job = await th.wait_final(again["jobId"])
    assert job["status"] == "FAILED"
    assert (await th.stats())["duplicate_submissions"] == 0


# --- business failures and refusals -------------------------------------------


async def test_business_failure_is_a_200_without_a_job(th: Simulator) -> None:
    await th.configure(business_failure={"count": 2})
    status, body = await th.submit("doc-1")
    assert status == 200
    assert "jobId" not in body
    assert_exceptions(body)
    assert body["jobMessages"] == []
    await th.configure(business_failure={"count": 1, "form": "jobMessages"})
    status, body = await th.submit("doc-1")
    assert status == 200
    assert "jobId" not in body
    assert body["exceptions"] == []
    (message,) = body["jobMessages"]
    assert_message(message, "E")
    assert (await th.submit("doc-1"))[0] == 200
    stats = await th.stats()
    assert (stats["jobs"], stats["duplicate_submissions"]) == (1, 0)
    assert await th.find("doc-1") != []


async def test_reject_marker_refuses_the_whole_batch(th: Simulator) -> None:
    await th.configure(reject_marker="NO-TEMPLATE-FOR-THIS", business_failure={"count": 1})
    bad = transaction("doc-2", data={"note": "NO-TEMPLATE-FOR-THIS"})
    status, body = await th.post_batch(batch_of([transaction("doc-1"), bad]))
    assert status == 400
    (exc,) = assert_exceptions(body)
    assert exc["msg"] == "transaction data invalid for the template"
    assert "doc-2" not in json.dumps(body)
    assert "jobId" not in body
    assert await th.find("doc-1") == []
    stats = await th.stats()
    assert (stats["jobs"], stats["rejected_400"], stats["duplicate_submissions"]) == (0, 1, 0)
    # The refused call used up no business failure, and clean batches are served.
    status, body = await th.submit("doc-1")
    assert (status, "jobId" in body) == (200, False)
    assert (await th.submit("doc-1"))[0] == 200
    # generateDocument does not look for the marker.
    assert (await th.generate(document(bad)))[0] == 200


async def test_body_over_10_mb_is_413(th: Simulator) -> None:
    oversized = b"x" * (sim.MAX_BODY_BYTES + 1)
    headers = {"Content-Type": "application/json"}
    for path in ("submitBatch", "generateDocument?includeDocumentData=false"):
        body = io.BytesIO(oversized)
        async with th.request("POST", f"{API}/{path}", data=body, headers=headers) as r:
            assert r.status == 413, path
            assert_exceptions(decode(await r.text()))
    # Exactly at the cap is read (and then refused only for being malformed).
    body = io.BytesIO(oversized[:-1])
    async with th.request("POST", f"{API}/submitBatch", data=body, headers=headers) as r:
        assert r.status == 400
    stats = await th.stats()
    assert (stats["rejected_413"], stats["rejected_400"]) == (2, 1)


async def test_max_request_bytes_knob(th: Simulator) -> None:
    await th.configure(max_request_bytes=5_000_000)
    # 4.5 MB of transaction data is 6 MB of Base64.
    big = json.dumps(batch_of([transaction("doc-1", data={"blob": "x" * 4_500_000})])).encode()
    big_document = json.dumps(document(transaction("doc-2", data={"x": "y" * 4_500_000})))

    async def post(path: str, body: bytes) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        return await th.call("POST", f"{API}/{path}", data=io.BytesIO(body), headers=headers)

    assert len(big) > 6_000_000
    status, body = await post("submitBatch", big)
    assert status == 413
    assert_exceptions(body)
    status, body = await post("generateDocument?includeDocumentData=true", big_document.encode())
    assert status == 413
    assert_exceptions(body)
    assert await th.find("doc-1") == []
    stats = await th.stats()
    assert (stats["rejected_413"], stats["jobs"], stats["duplicate_submissions"]) == (2, 0, 0)
    await th.configure(max_request_bytes=7_000_000)
    assert (await post("submitBatch", big))[0] == 200


# --- generateDocument ----------------------------------------------------------


async def test_generate_document_with_a_part_location(th: Simulator) -> None:
    status, body = await th.generate(document(transaction("doc-7", "print")))
    assert status == 200, body
    assert set(body) == {"exceptions", "envelopes", "jobMessages", "numberTransactions"}
    assert (body["exceptions"], body["numberTransactions"]) == ([], 1)
    (envelope,) = body["envelopes"]
    primary = envelope["primaryChannel"]
    assert (primary["channelType"], primary["channelName"]) == (2, "PRINT")
    assert (primary["documentName"], primary["mimeType"]) == ("doc-7.pdf", "application/pdf")
    assert primary["partLocation"].endswith("/doc-7.pdf")
    assert "data" not in primary
    assert all(m["msgType"] != "E" for m in body["jobMessages"])
    # No job: nothing to find by reference, no job counted.
    assert await th.find("doc-7") == []
    assert (await th.stats())["jobs"] == 0


async def test_generate_document_with_the_data(th: Simulator) -> None:
    status, body = await th.generate(document(transaction("doc-7", "print")), include="true")
    assert status == 200, body
    (envelope,) = body["envelopes"]
    primary = envelope["primaryChannel"]
    assert "partLocation" not in primary
    assert base64.b64decode(primary["data"], validate=True).startswith(b"%PDF")


@pytest.mark.parametrize("include", [None, "", "yes", "1", "TRUE"])
async def test_generate_document_needs_include_document_data(
    th: Simulator, include: str | None
) -> None:
    status, body = await th.generate(document(transaction("doc-7")), include=include)
    assert status == 400
    assert_exceptions(body)
    assert (await th.stats())["duplicate_submissions"] == 0


async def test_generate_document_takes_strings_of_digits(th: Simulator) -> None:
    body = document(
        transaction("doc-7"),
        batchConfigResId=str(BATCH_CONFIG),
        transactionRange="1",
        projectId=0,
        properties=[{"name": "merge.pdf", "value": "true"}],
    )
    assert (await th.generate(body))[0] == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"transactionRange": "x"},
        {"transactionRange": 0},
        {"transactionRange": 1.0},
        {"batchConfigResId": "abc"},
        {"batchConfigResId": False},
        {"transactionDataType": "text/csv"},
        {"transactionData": "not base64!!"},
        {"transactionData": b64([transaction("doc-7")])},  # a list, not one object
        {"unexpected": True},
    ],
)
async def test_generate_document_malformed_is_400(th: Simulator, fields: dict[str, Any]) -> None:
    status, body = await th.generate(document(transaction("doc-7"), **fields))
    assert status == 400
    assert_exceptions(body)


async def test_generate_document_needs_data_and_batch_config(th: Simulator) -> None:
    for missing in ("transactionData", "batchConfigResId"):
        body = {k: v for k, v in document(transaction("doc-7")).items() if k != missing}
        status, answer = await th.generate(body)
        assert status == 400, missing
        assert_exceptions(answer)


async def test_generate_document_knows_only_known_batch_configs(th: Simulator) -> None:
    await th.configure(batch_config_ids=[1])
    assert (await th.generate(document(transaction("doc-7"))))[0] == 400
    assert (await th.generate(document(transaction("doc-7"), batchConfigResId=1)))[0] == 200


async def test_generate_document_xml_is_opaque(th: Simulator) -> None:
    xml = b"<tx><correlationReference>doc-1</correlationReference></tx>"
    body = {"batchConfigResId": BATCH_CONFIG, "transactionData": b64(xml)}  # xml by default
    for _ in range(2):
        status, answer = await th.generate(body)
        assert status == 200, answer
        assert "correlationReference" not in answer
        assert answer["envelopes"]
    await th.submit("doc-1")
    assert (await th.stats())["duplicate_submissions"] == 0


async def test_generate_document_without_a_reference(th: Simulator) -> None:
    tx = {"channel": "sms", "data": {}}
    for _ in range(2):
        status, body = await th.generate(document(tx))
        assert status == 200, body
        (envelope,) = body["envelopes"]
        assert envelope["primaryChannel"]["channelType"] == 3
    assert (await th.stats())["duplicate_submissions"] == 0


async def test_generate_document_failure_is_a_200_with_exceptions(th: Simulator) -> None:
    await th.configure(failure_ratio=1.0)
    status, body = await th.generate(document(transaction("doc-7")))
    assert status == 200
    assert "jobId" not in body
    assert_exceptions(body)
    assert body["envelopes"] == []
    assert any(m["msgType"] == "E" for m in body["jobMessages"])


async def test_generate_document_answers_after_processing(th: Simulator) -> None:
    await th.configure(processing_s_per_document=0.3)
    began = time.monotonic()
    assert (await th.generate(document(transaction("doc-7"))))[0] == 200
    assert time.monotonic() - began >= 0.3


# --- faults -----------------------------------------------------------------


async def test_injected_statuses_with_retry_after(th: Simulator) -> None:
    await th.configure(
        inject=[
            {"status": 500, "count": 1, "endpoint": "submitBatch"},
            {"status": 429, "count": 1, "endpoint": "jobStatus", "retry_after": 7},
            {"status": 503, "count": 2, "endpoint": None, "retry_after": 120},
        ]
    )
    async with th.request("POST", f"{API}/submitBatch", json=batch("doc-1")) as r:
        assert r.status == 500
        assert "Retry-After" not in r.headers
        assert_exceptions(decode(await r.text()))
    async with th.request("GET", f"{API}/1") as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
    for path in (f"{API}?reference=doc-1", f"{API}/1"):
        async with th.request("GET", path) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "120"
    # All used up: calls are served again, and no job came of the faulted submission.
    assert await th.find("doc-1") == []
    assert (await th.configure())["inject"] == []
    assert (await th.submit("doc-1"))[0] == 200


async def test_hang_outlasts_the_client_and_ends_on_shutdown() -> None:
    running = await start()
    try:
        await running.login()
        await running.configure(hang={"count": 1, "endpoint": "findByReference"})
        with pytest.raises(TimeoutError):
            await running.call("GET", f"{API}?reference=doc-1", timeout_s=0.3)
        assert (await running.call("GET", f"{API}?reference=doc-1"))[0] == 200
        assert (await running.stats())["calls"]["findByReference"] == 2
    finally:
        began = time.monotonic()
        await running.stop()
    assert time.monotonic() - began < 3


async def test_reset_ends_a_hang_with_503(th: Simulator) -> None:
    await th.configure(hang={"count": 1})
    hung = asyncio.ensure_future(th.call("GET", f"{API}/1", timeout_s=10))
    await asyncio.sleep(0.2)
    assert not hung.done()
    await th.configure(reset=True)
    status, body = await asyncio.wait_for(hung, 2)
    assert status == 503
    assert_exceptions(body)


async def test_accept_then_hang_creates_the_job() -> None:
    running = await start(sim.SimConfig(processing_s_per_document=0.02))
    try:
        await running.login()
        await running.configure(accept_then_hang={"count": 1})
        with pytest.raises(TimeoutError):
            await running.submit("doc-1", timeout_s=0.3)
        (job,) = await running.find("doc-1")
        _, final = await running.wait_final(job["jobId"])
        assert final["status"] == "COMPLETED"
        stats = await running.stats()
        assert (stats["calls"]["submitBatch"], stats["jobs"]) == (1, 1)
    finally:
        began = time.monotonic()
        await running.stop()
    assert time.monotonic() - began < 3


async def test_rate_limit_answers_429_and_caps_the_peak(th: Simulator) -> None:
    await th.configure(rate_limit_per_s=5)

    async def one() -> tuple[int, str | None]:
        async with th.request("GET", f"{API}?reference=doc-1") as r:
            if r.status == 429:
                assert_exceptions(decode(await r.text()))
            return r.status, r.headers.get("Retry-After")

    answers = await asyncio.gather(*(one() for _ in range(20)))
    rejected = [a for a in answers if a[0] == 429]
    assert rejected
    assert all(retry_after == "1" for _, retry_after in rejected)
    assert {status for status, _ in answers} == {200, 429}
    stats = await th.stats()
    assert stats["rejected_429"] == len(rejected)
    assert stats["calls"]["findByReference"] == 20
    assert stats["peak_rate_per_s"] in range(1, 6)  # never above the limit of 5
    # Over a second later there is room again.
    await asyncio.sleep(1.05)
    assert (await one())[0] == 200


async def test_rate_limit_without_retry_after(th: Simulator) -> None:
    await th.configure(rate_limit_per_s=1, rate_limit_retry_after=False)
    await asyncio.sleep(1.05)  # the login's call leaves the window
    statuses = []
    for _ in range(3):
        async with th.request("GET", f"{API}?reference=doc-1") as r:
            statuses.append(r.status)
            assert "Retry-After" not in r.headers
    assert statuses.count(429) == 2


async def test_peak_rate_counts_the_token_call(th: Simulator) -> None:
    await th.configure(reset=True)
    await th.login()
    await th.call("GET", f"{API}?reference=doc-1")
    assert (await th.stats())["peak_rate_per_s"] == 2


async def test_latency_is_added(th: Simulator) -> None:
    await th.configure(latency_s=0.3)
    began = time.monotonic()
    assert (await th.call("GET", f"{API}?reference=doc-1"))[0] == 200
    assert time.monotonic() - began >= 0.3


# --- chaos ------------------------------------------------------------------


async def test_chaos_500_spares_the_token_endpoint(th: Simulator) -> None:
    await th.configure(chaos={"error_500": 1.0})
    for method, path, kwargs in (
        ("GET", API, {"params": {"reference": "doc-1"}}),
        ("GET", f"{API}/1", {}),
        ("POST", f"{API}/submitBatch", {"json": batch("doc-1")}),
        ("POST", f"{API}/generateDocument?includeDocumentData=true", {"json": document({})}),
    ):
        status, body = await th.call(method, path, **kwargs)
        assert status == 500, path
        assert_exceptions(body)
    assert (await th.post_token(GRANT, CLIENT))[0] == 200
    stats = await th.stats()
    assert stats["chaos"] == {"error_500": 4, "error_503": 0, "hang": 0, "unauthorized": 0}
    assert stats["jobs"] == 0


async def test_chaos_503_has_no_retry_after(th: Simulator) -> None:
    await th.configure(chaos={"error_503": 1.0})
    async with th.request("GET", f"{API}?reference=doc-1") as r:
        assert r.status == 503
        assert "Retry-After" not in r.headers
        assert_exceptions(decode(await r.text()))
    assert (await th.stats())["chaos"]["error_503"] == 1


async def test_chaos_unauthorized_refuses_a_valid_token(th: Simulator) -> None:
    await th.configure(chaos={"unauthorized": 1.0})
    async with th.request("GET", f"{API}?reference=doc-1") as r:
        assert r.status == 401
        assert decode(await r.text())["error"] == "invalid_token"
        assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    await th.configure(chaos=None)
    assert (await th.call("GET", f"{API}?reference=doc-1"))[0] == 200  # the same token
    assert (await th.stats())["chaos"]["unauthorized"] == 1


async def test_chaos_hang_creates_no_job(th: Simulator) -> None:
    await th.configure(chaos={"hang": 1.0})
    with pytest.raises(TimeoutError):
        await th.submit("doc-1", timeout_s=0.3)
    hung = asyncio.ensure_future(th.call("GET", f"{API}/1", timeout_s=10))
    await asyncio.sleep(0.2)
    assert not hung.done()
    await th.configure(chaos=None)
    assert await th.find("doc-1") == []
    stats = await th.stats()
    assert (stats["jobs"], stats["chaos"]["hang"]) == (0, 2)
    await th.configure(reset=True)
    assert (await asyncio.wait_for(hung, 2))[0] == 503


async def test_chaos_is_repeatable_with_a_seed(th: Simulator) -> None:
    chaos = {"error_500": 0.3, "error_503": 0.3, "seed": 7}

    async def run() -> list[int]:
        await th.configure(chaos=chaos)
        return [(await th.call("GET", API, params={"reference": "d"}))[0] for _ in range(40)]

    first = await run()
    assert set(first) == {200, 500, 503}
    assert await run() == first
    stats = await th.stats()
    assert stats["chaos"]["error_500"] == 2 * first.count(500)
    assert stats["chaos"]["error_503"] == 2 * first.count(503)


async def test_chaos_comes_after_the_rate_limit(th: Simulator) -> None:
    await th.configure(rate_limit_per_s=2, chaos={"error_500": 1.0})
    await asyncio.sleep(1.05)  # the login's call leaves the window
    statuses = [(await th.call("GET", API, params={"reference": "d"}))[0] for _ in range(5)]
    assert sorted(statuses) == [429, 429, 429, 500, 500]
    assert (await th.stats())["chaos"]["error_500"] == 2


@pytest.mark.parametrize(
    "chaos",
    [
        {"error_500": 0.6, "hang": 0.5},
        {"unauthorized": 1.5},
        {"error_503": -0.1},
        {"error_500": 0.1, "typo": 0.1},
    ],
)
async def test_invalid_chaos_is_refused(th: Simulator, chaos: dict[str, Any]) -> None:
    async with th.session.post(f"{th.url}/_sim/config", json={"chaos": chaos}) as r:
        assert r.status == 400
    assert (await th.configure())["chaos"] is None


# --- the while(1); prefix and the knobs ---------------------------------------


async def test_json_prefix_is_on_by_default(th: Simulator) -> None:
    async with th.session.post(f"{th.url}{TOKEN}", data=GRANT, headers={}) as r:
        assert r.status == 401
        assert (await r.text()).startswith(PREFIX + "{")
    async with th.session.post(
        f"{th.url}{TOKEN}", data=GRANT, headers={"Authorization": basic(*CLIENT)}
    ) as r:
        text = await r.text()
    assert text.startswith(PREFIX)
    assert json.loads(text.removeprefix(PREFIX))["token_type"] == "bearer"
    for method, path, kwargs in (
        ("GET", f"{API}/1", {}),
        ("GET", API, {"params": {"reference": "doc-1"}}),
        ("POST", f"{API}/submitBatch", {"json": batch("doc-1")}),
    ):
        async with th.request(method, path, **kwargs) as r:
            assert (await r.text()).startswith(PREFIX + "{"), path
    async with th.session.get(f"{th.url}/_sim/stats") as r:
        assert (await r.text()).startswith("{")
    await th.configure(json_prefix=False)
    async with th.request("GET", f"{API}/1") as r:
        assert (await r.text()).startswith("{")


async def test_default_knobs(th: Simulator) -> None:
    knobs = await th.configure()
    assert knobs["json_prefix"] is True
    assert knobs["rate_limit_retry_after"] is True
    assert knobs["client_auth"] == "either"
    assert knobs["correlation_field"] == "correlationReference"
    assert knobs["max_request_bytes"] == 10_000_000
    assert (knobs["reject_marker"], knobs["chaos"], knobs["batch_config_ids"]) == (None,) * 3


async def test_unknown_knob_is_refused(th: Simulator) -> None:
    for knobs in ({"latency": 1}, {"failure_ratio": 2}, {"client_auth": "both"}):
        async with th.session.post(f"{th.url}/_sim/config", json=knobs) as r:
            assert r.status == 400, knobs


async def test_stats_fields(th: Simulator) -> None:
    stats = await th.stats()
    assert set(stats) == {
        "calls",
        "peak_rate_per_s",
        "duplicate_submissions",
        "duplicates",
        "jobs",
        "transactions",
        "rejected_429",
        "rejected_413",
        "rejected_400",
        "chaos",
    }


# --- the state file ---------------------------------------------------------


def state_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_jobs_survive_a_restart_on_the_same_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "th" / "jobs.jsonl"
    config = sim.SimConfig(processing_s_per_document=1.0)
    first = await start(config, state_file)
    try:
        await first.login()
        status, body = await first.submit("doc-1", "doc-2")
        assert status == 200, body
        job_id = body["jobId"]
        # Written before the answer: a kill -9 now would keep it.
        (line,) = state_lines(state_file)
        assert line["kind"] == "job"
        assert line["job_id"] == job_id
        assert line["batch_name"] == "0b6f3c1e-batch"
        assert line["batch_config_res_id"] == BATCH_CONFIG
        assert line["correlation_field"] == "correlationReference"
        assert abs(line["submitted_at"] - time.time()) < 5  # wall clock, not monotonic
        assert [t["reference"] for t in line["transactions"]] == ["doc-1", "doc-2"]
        old_token = first.token
    finally:
        await first.stop()

    second = await start(config, state_file)
    try:
        second.token = old_token  # tokens are not kept: the client just gets a new one
        assert (await second.call("GET", f"{API}/{job_id}"))[0] == 401
        await second.login()
        status, job = await second.call("GET", f"{API}/{job_id}")
        assert status == 200, job
        assert job["status"] in {"PENDING", "RUNNING"}  # still on the clock it started on
        assert job["batchName"] == "0b6f3c1e-batch"
        assert [j["jobId"] for j in await second.find("doc-2")] == [job_id]
        _seen, final = await second.wait_final(job_id)
        assert final["status"] == "COMPLETED"
        assert [t["status"] for t in final["transactions"]] == ["COMPLETED", "COMPLETED"]
        assert [t["correlationReference"] for t in final["transactions"]] == ["doc-1", "doc-2"]
        stats = await second.stats()
        assert (stats["jobs"], stats["transactions"], stats["duplicate_submissions"]) == (1, 2, 0)
        assert stats["calls"]["submitBatch"] == 0  # call counters start again
        # New ids stay above the ones taken back.
        _, body = await second.submit("doc-3")
        assert body["jobId"] > job_id
    finally:
        await second.stop()


async def test_job_ids_stay_unique_across_a_reset_and_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "jobs.jsonl"
    first = await start(state_file=state_file)
    try:
        await first.login()
        ids = [(await first.submit(f"doc-{i}"))[1]["jobId"] for i in range(3)]
        await first.configure(reset=True)  # the file is emptied
    finally:
        await first.stop()
    assert ids == sorted(set(ids))
    second = await start(state_file=state_file)
    try:
        await second.login()
        _, body = await second.submit("doc-9")
        assert body["jobId"] > ids[-1]
    finally:
        await second.stop()


async def test_a_duplicate_across_a_restart_is_counted(tmp_path: Path) -> None:
    state_file = tmp_path / "jobs.jsonl"
    config = sim.SimConfig(processing_s_per_document=0.02)
    first = await start(config, state_file)
    try:
        await first.login()
        await first.configure(accept_then_hang={"count": 1})
        with pytest.raises(TimeoutError):  # accepted, but the answer never came
            await first.submit("doc-1", timeout_s=0.3)
        assert (await first.generate(document(transaction("doc-2"))))[0] == 200
    finally:
        await first.stop()
    assert [line["kind"] for line in state_lines(state_file)] == ["job", "document"]

    second = await start(config, state_file)
    try:
        await second.login()
        stats = await second.stats()
        assert (stats["jobs"], stats["transactions"], stats["duplicate_submissions"]) == (1, 1, 0)
        assert await second.find("doc-2") == []
        _, body = await second.submit("doc-1")
        await second.submit("doc-2")
        stats = await second.stats()
        assert stats["duplicate_submissions"] == 2
        assert stats["duplicates"] == {"doc-1": 1, "doc-2": 1}
        assert (stats["jobs"], stats["transactions"]) == (3, 3)
        found = await second.find("doc-1")
        assert len(found) == 2
        assert found[1]["jobId"] == body["jobId"]
    finally:
        await second.stop()


async def test_a_torn_last_line_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_file = tmp_path / "jobs.jsonl"
    first = await start(state_file=state_file)
    try:
        await first.login()
        _, body = await first.submit("doc-1")
    finally:
        await first.stop()
    torn_id = body["jobId"] + 1000
    with state_file.open("ab") as f:  # killed halfway through writing a job
        f.write(b'{"kind": "job", "job_id": %d, "batch_name": "b", "batchConf' % torn_id)

    with caplog.at_level(logging.WARNING):
        second = await start(state_file=state_file)
    try:
        assert "torn" in caplog.text
        await second.login()
        assert (await second.call("GET", f"{API}/{body['jobId']}"))[0] == 200
        assert (await second.call("GET", f"{API}/{torn_id}"))[0] == 404
        assert (await second.submit("doc-2"))[0] == 200
    finally:
        await second.stop()
    # The torn tail was cut off, so the job written after it is a line of its own.
    assert [line["transactions"][0]["reference"] for line in state_lines(state_file)] == [
        "doc-1",
        "doc-2",
    ]
    third = await start(state_file=state_file)
    try:
        assert (await third.stats())["jobs"] == 2
    finally:
        await third.stop()


async def test_reset_truncates_the_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "jobs.jsonl"
    first = await start(state_file=state_file)
    try:
        await first.login()
        _, old = await first.submit("doc-1")
        await first.configure(reset=True)
        assert state_file.read_bytes() == b""
        _, new = await first.submit("doc-2")
        assert [line["job_id"] for line in state_lines(state_file)] == [new["jobId"]]
    finally:
        await first.stop()
    second = await start(state_file=state_file)
    try:
        await second.login()
        assert (await second.call("GET", f"{API}/{old['jobId']}"))[0] == 404
        assert (await second.call("GET", f"{API}/{new['jobId']}"))[0] == 200
        stats = await second.stats()
        assert (stats["jobs"], stats["duplicate_submissions"]) == (1, 0)
    finally:
        await second.stop()
