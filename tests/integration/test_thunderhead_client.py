"""ThunderheadClient over real loopback HTTP, against a small fake Thunderhead.

The fake is this module's own fixture (the real simulator is ``oms.sim.thunderhead``,
written separately): it speaks docs/thunderhead.md (numeric job ids, business
exceptions ``{classId, id, className, msg}``, job messages ``{msgType, msgText,
msgDate}``, envelopes of channels, ONE client authentication method per token
request), counts calls, records when each request arrived and how many were in
flight, and can be told per test how to answer the next calls of an endpoint (a
status, a hang, a dropped connection…).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote_plus

import anyio
import msgspec
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from oms import exceptions
from oms.config import ThunderheadSettings
from oms.net import free_port
from oms.thunderhead import (
    Envelope,
    JobException,
    JobMessage,
    JobRef,
    ThunderheadClient,
    Transaction,
)

CLIENT_ID = "oms"
SECRET = "test-secret"
API = "/one/oauth2/api/v12/job"
TOKEN = "/one/oauth2Server/token"
BATCH_CONFIG = 1335501440
FIRST_JOB = 48213
MSG_DATE = "2024-05-01T10:00:00Z"

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def exception(msg: str, class_id: int = 1002, ident: int = 900_001) -> dict[str, Any]:
    """A business exception as the swagger shapes it."""
    return {"classId": class_id, "id": ident, "className": "TestException", "msg": msg}


def message(kind: str, text: str) -> dict[str, Any]:
    """A job message as the swagger shapes it."""
    return {"msgType": kind, "msgText": text, "msgDate": MSG_DATE}


def basic_header(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: each part form-urlencoded, then Base64 of "id:secret"."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def auth_methods(form: dict[str, str], authorization: str) -> set[str]:
    """The client authentication methods one token request used."""
    used = set()
    if authorization.startswith("Basic "):
        used.add("basic")
    if "client_id" in form or "client_secret" in form:
        used.add("form")
    return used


class FakeThunderhead:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.delay_s = 0.0
        self.prefix = False
        self.close_connections = False
        # The token endpoint: which method it accepts ("basic", "form" or "either";
        # two at once is always 400 invalid_request), the credentials, the lifetime
        # it announces (None: no expires_in, as in every public sample).
        self.client_auth = "either"
        self.client_id = CLIENT_ID
        self.secret = SECRET
        self.expires_in: int | None = 3600
        self.accept_tokens = True
        self.issued = 0
        self.valid: set[str] = set()
        self.bearers: list[str] = []
        self.token_requests: list[tuple[dict[str, str], str]] = []
        # The API: the tenant's correlation field, numeric (the contract) or string ids.
        self.correlation_field = "correlationReference"
        self.numeric_ids = True
        self.batches: list[dict[str, Any]] = []
        self.generated: list[tuple[dict[str, str], dict[str, Any]]] = []  # (query, body)
        self.scripts: dict[str, list[Behaviour]] = collections.defaultdict(list)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def script(self, endpoint: str, *behaviours: Behaviour) -> None:
        """The next calls of ``endpoint`` answer with these, in order, then as usual."""
        self.scripts[endpoint].extend(behaviours)

    def revoke(self) -> None:
        self.valid.clear()

    def job_id(self, n: int) -> int | str:
        """The wire jobId of the n-th batch (from 1)."""
        return FIRST_JOB + n - 1 if self.numeric_ids else f"J-{n}"

    def answer(self, body: object, status: int = 200, **headers: str) -> web.Response:
        raw = json.dumps(body).encode()
        if self.prefix:
            raw = b"while(1);" + raw
        return web.Response(
            body=raw, status=status, headers=headers, content_type="application/json"
        )

    def refuse(self, status: int, msg: str, class_id: int = 1001) -> web.Response:
        return self.answer({"exceptions": [exception(msg, class_id)]}, status)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(TOKEN, self._token, name="token")
        app.router.add_post(f"{API}/submitBatch", self._submit, name="submitBatch")
        app.router.add_post(f"{API}/generateDocument", self._generate, name="generateDocument")
        app.router.add_get(API, self._find, name="findByReference")
        app.router.add_get(API + "/{job_id}", self._status, name="jobStatus")
        # handler_cancellation: a hanging handler ends when the client gives up.
        self.runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        endpoint = request.match_info.route.name or "?"
        self.calls[endpoint] += 1
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            script = self.scripts[endpoint]
            if script:
                response = await script.pop(0)(request)
            elif endpoint != "token" and not self._authorised(request):
                response = self.answer(
                    {"error": "invalid_token"},
                    401,
                    **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            else:
                response = await handler(request)
            if self.close_connections:
                response.force_close()
            return response
        finally:
            self.in_flight -= 1

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        self.bearers.append(token)
        return scheme == "Bearer" and self.accept_tokens and token in self.valid

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        authorization = request.headers.get("Authorization", "")
        self.token_requests.append((form, authorization))
        used = auth_methods(form, authorization)
        if len(used) > 1:  # RFC 6749 2.3.1: never two methods in one request
            return self.answer({"error": "invalid_request"}, 400)
        if self.client_auth != "either" and used != {self.client_auth}:
            return self.answer({"error": "invalid_client"}, 401)
        if used == {"basic"}:
            if authorization != basic_header(self.client_id, self.secret):
                return self.answer(
                    {"error": "invalid_client"}, 401, **{"WWW-Authenticate": "Basic"}
                )
        elif (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.secret):
            return self.answer({"error": "invalid_client"}, 401)
        grant = form.get("grant_type")
        if grant == "password":
            if not (form.get("username") and form.get("password")):
                return self.answer({"error": "invalid_grant"}, 400)
        elif grant != "client_credentials":
            return self.answer({"error": "unsupported_grant_type"}, 400)
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid.add(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return self.answer(body)

    async def _submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        config = body.get("batchConfigResId")
        if not isinstance(config, int) or isinstance(config, bool) or config <= 0:
            return self.refuse(400, "batchConfigResId must be a Template Selector id", 1002)
        transactions = json.loads(base64.b64decode(body["transactionData"]))
        for t in transactions:
            if not isinstance(t.get(self.correlation_field), str):
                return self.refuse(400, f"a transaction has no {self.correlation_field}", 1003)
        body["transactions"] = transactions
        self.batches.append(body)
        return self.answer({"jobId": self.job_id(len(self.batches)), "futureField": True})

    async def _status(self, request: web.Request) -> web.Response:
        raw = request.match_info["job_id"]
        known = [(n, b) for n, b in enumerate(self.batches, 1) if str(self.job_id(n)) == raw]
        job_id: int | str = int(raw) if raw.isdigit() else raw
        field = self.correlation_field
        if known:
            [(_, batch)] = known
            transactions = [
                {
                    field: t[field],
                    "status": "COMPLETED",
                    "envelopes": [{"primaryChannel": _channel(t[field])}],
                }
                for t in batch["transactions"]
            ]
            return self.answer(
                {
                    "jobId": job_id,
                    "batchName": batch["batchName"],
                    "status": "COMPLETED",
                    "transactions": transactions,
                    "jobMessages": [message("I", "done")],
                }
            )
        return self.answer(
            {
                "jobId": job_id,
                "batchName": "batch-1",
                "status": "COMPLETED",
                "priority": "new in v13",
                "transactions": [
                    {
                        field: "doc-1",
                        "status": "COMPLETED",
                        "envelopes": [
                            {
                                "primaryChannel": {
                                    "channelType": 1,
                                    "channelName": "Email",
                                    "documentName": "renewal.html",
                                    "mimeType": "text/html",
                                    "partLocation": "parts/1",
                                    "startPage": 1,
                                    "properties": [{"name": "x", "value": "y"}],
                                },
                                "enclosureChannels": [
                                    {
                                        "channelType": 2,
                                        "channelName": "Print",
                                        "documentName": "renewal.pdf",
                                        "mimeType": "application/pdf",
                                        "partLocation": "parts/2",
                                    }
                                ],
                            }
                        ],
                        "jobMessages": [message("W", "font substituted")],
                    },
                    {
                        field: "doc-2",
                        "status": "FAILED",
                        "exceptions": [exception("missing field premium", 2002, 77)],
                        "jobMessages": [message("E", "composition failed")],
                    },
                ],
                "jobMessages": [message("W", "1 of 2 transactions failed")],
            }
        )

    async def _find(self, request: web.Request) -> web.Response:
        reference = request.query.get("reference", "").strip()
        if not reference:
            return self.refuse(400, "reference is required")
        jobs = [
            {"jobId": self.job_id(n), "batchName": b["batchName"], "status": "RUNNING", "x": 1}
            for n, b in enumerate(self.batches, start=1)
            if any(t[self.correlation_field] == reference for t in b["transactions"])
        ]
        return self.answer({"jobs": jobs})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.generated.append((dict(request.query), body))
        config = body.get("batchConfigResId")
        if not isinstance(config, int) or "transactionData" not in body:
            return self.refuse(400, "batchConfigResId and transactionData are required")
        transaction = json.loads(base64.b64decode(body["transactionData"]))
        channel = _channel(transaction.get(self.correlation_field, "?"))
        if request.query.get("includeDocumentData", "true") == "true":
            channel["data"] = base64.b64encode(b"%PDF-1.7 fake").decode()
        return self.answer(
            {
                "exceptions": [],
                "envelopes": [{"primaryChannel": channel}],
                "jobMessages": [message("I", "generated")],
                "numberTransactions": 1,
                "previewKey": "pk-1",
            }
        )


def _channel(reference: str) -> dict[str, Any]:
    return {
        "channelType": 2,
        "channelName": "Print",
        "documentName": f"{reference}.pdf",
        "mimeType": "application/pdf",
        "partLocation": f"parts/{reference}",
    }


def status(fake: FakeThunderhead, code: int, body: object = None, **headers: str) -> Behaviour:
    async def behaviour(_request: web.Request) -> web.StreamResponse:
        return fake.answer({} if body is None else body, code, **headers)

    return behaviour


async def hang(_request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3_600)  # cancelled when the client hangs up
    raise AssertionError("unreachable")


async def accept_then_drop(request: web.Request) -> web.StreamResponse:
    await request.read()
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(3_600)
    raise AssertionError("unreachable")


@pytest.fixture
async def fake() -> AsyncIterator[FakeThunderhead]:
    server = FakeThunderhead()
    await server.start()
    yield server
    await server.stop()


def settings(url: str, **overrides: Any) -> ThunderheadSettings:
    values: dict[str, Any] = {
        "base_url": url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "timeout_s": 2.0,
        "submit_timeout_s": 2.0,
        "rate_limit_per_s": 1_000.0,
        "rate_limit_burst": 1_000,
        "max_concurrency": 50,
        "wait_429_s": 60.0,
        "wait_500_s": 5.0,
        "wait_503_s": 120.0,
    }
    return ThunderheadSettings(**(values | overrides))


@asynccontextmanager
async def client_for(url: str, **overrides: Any) -> AsyncIterator[ThunderheadClient]:
    clock = overrides.pop("clock", time.monotonic)
    async with ThunderheadClient(settings(url, **overrides), clock=clock) as client:
        yield client


def transaction(reference: str = "doc-1", data: bytes = b'{"premium": 12.5}') -> Transaction:
    return Transaction(
        correlation_reference=reference,
        template_id="TPL-renewal-email",
        template_version=3,
        channel="email",
        language="en",
        brand={"code": "acme", "name": "Acme"},
        recipient={"email": "jane@example.org", "name": "Jane"},
        data=msgspec.Raw(data),
    )


def calls(endpoint: str, outcome: str) -> float:
    labels = {"endpoint": endpoint, "outcome": outcome}
    return REGISTRY.get_sample_value("oms_thunderhead_calls_total", labels) or 0.0


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# --- the happy path, on the wire ---------------------------------------------------


async def test_submit_batch_speaks_the_contract(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        job_id = await client.submit_batch(
            BATCH_CONFIG,
            "batch-7",
            [transaction("doc-1"), transaction("doc-2", b'{"nested": {"a": [1, 2]}}')],
        )
    assert job_id == str(FIRST_JOB)  # a number on the wire, text in OMS
    [(form, authorization)] = fake.token_requests
    assert form == {"grant_type": "client_credentials"}  # Basic only (the default)
    assert authorization == basic_header(CLIENT_ID, SECRET)
    assert fake.bearers == ["tok-1"]
    [batch] = fake.batches
    assert batch["batchConfigResId"] == BATCH_CONFIG
    assert type(batch["batchConfigResId"]) is int
    assert batch["batchName"] == "batch-7"
    assert batch["transactionDataType"] == "application/json"
    assert "projectId" not in batch  # 0: not sent, production mode
    first, second = batch["transactions"]
    assert first == {
        "correlationReference": "doc-1",
        "templateId": "TPL-renewal-email",
        "templateVersion": 3,
        "channel": "email",
        "language": "en",
        "brand": {"code": "acme", "name": "Acme"},
        "recipient": {"email": "jane@example.org", "name": "Jane"},
        "data": {"premium": 12.5},
    }
    assert second["data"] == {"nested": {"a": [1, 2]}}


@pytest.mark.parametrize(("numeric", "expected"), [(True, str(FIRST_JOB)), (False, "J-1")])
async def test_numeric_and_string_job_ids_are_kept_as_text(
    fake: FakeThunderhead, numeric: bool, expected: str
) -> None:
    fake.numeric_ids = numeric
    async with client_for(fake.url) as client:
        job_id = await client.submit_batch(BATCH_CONFIG, "batch-1", [transaction("doc-1")])
        job = await client.job_status(job_id)
        jobs = await client.find_by_reference("doc-1")
    assert job_id == expected
    assert job.job_id == expected
    assert jobs == [JobRef(job_id=expected, batch_name="batch-1", status="RUNNING")]


async def test_project_id_is_sent_when_set(fake: FakeThunderhead) -> None:
    async with client_for(fake.url, project_id=42) as client:
        await client.submit_batch(BATCH_CONFIG, "batch-1", [transaction()])
        await client.generate_document(BATCH_CONFIG, transaction())
    [batch] = fake.batches
    [(_, generated)] = fake.generated
    assert batch["projectId"] == 42
    assert generated["projectId"] == 42


async def test_password_grant_sends_username_and_password(fake: FakeThunderhead) -> None:
    overrides = {"grant_type": "password", "username": "svc-oms", "password": "pw"}
    async with client_for(fake.url, **overrides) as client:
        assert await client.ping()
    [(form, _)] = fake.token_requests
    assert form["grant_type"] == "password"
    assert (form["username"], form["password"]) == ("svc-oms", "pw")


@pytest.mark.parametrize("server_accepts", ["either", "basic"])
async def test_client_auth_basic_sends_only_the_header(
    fake: FakeThunderhead, server_accepts: str
) -> None:
    fake.client_auth = server_accepts
    async with client_for(fake.url, client_auth="basic") as client:
        assert await client.ping()
    [(form, authorization)] = fake.token_requests
    assert auth_methods(form, authorization) == {"basic"}
    assert "client_id" not in form
    assert "client_secret" not in form
    assert authorization == basic_header(CLIENT_ID, SECRET)


@pytest.mark.parametrize("server_accepts", ["either", "form"])
async def test_client_auth_form_sends_only_the_form_fields(
    fake: FakeThunderhead, server_accepts: str
) -> None:
    fake.client_auth = server_accepts
    async with client_for(fake.url, client_auth="form") as client:
        assert await client.ping()
    [(form, authorization)] = fake.token_requests
    assert auth_methods(form, authorization) == {"form"}
    assert authorization == ""
    assert form == {"grant_type": "client_credentials", "client_id": "oms", "client_secret": SECRET}


@pytest.mark.parametrize(("client_auth", "server_accepts"), [("basic", "form"), ("form", "basic")])
async def test_the_wrong_client_auth_is_refused_as_credentials(
    fake: FakeThunderhead, client_auth: str, server_accepts: str
) -> None:
    fake.client_auth = server_accepts
    async with client_for(fake.url, client_auth=client_auth) as client:
        assert not await client.ping()
        assert client.credentials_error is not None
        assert "invalid_client" in client.credentials_error
    [(form, authorization)] = fake.token_requests
    assert auth_methods(form, authorization) == {client_auth}


async def test_basic_credentials_are_form_urlencoded_before_base64(fake: FakeThunderhead) -> None:
    fake.client_id, fake.secret = "oms:eu", "s&c=r t+é"
    async with client_for(fake.url, client_id="oms:eu", client_secret="s&c=r t+é") as client:
        assert await client.ping()
    [(_, authorization)] = fake.token_requests
    decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode()
    assert decoded == "oms%3Aeu:s%26c%3Dr+t%2B%C3%A9"


async def test_the_correlation_field_is_the_configured_one(fake: FakeThunderhead) -> None:
    fake.correlation_field = "policyDocRef"
    async with client_for(fake.url, correlation_field="policyDocRef") as client:
        job_id = await client.submit_batch(
            BATCH_CONFIG, "batch-1", [transaction("doc-1"), transaction("doc-2")]
        )
        job = await client.job_status(job_id)
        canned = await client.job_status("999")  # the fake's canned answer, same field
        jobs = await client.find_by_reference("doc-2")
        await client.generate_document(BATCH_CONFIG, transaction("doc-9"))
    [batch] = fake.batches
    for t, reference in zip(batch["transactions"], ["doc-1", "doc-2"], strict=True):
        assert t["policyDocRef"] == reference
        assert "correlationReference" not in t
    assert [t.correlation_reference for t in job.transactions] == ["doc-1", "doc-2"]
    assert [t.correlation_reference for t in canned.transactions] == ["doc-1", "doc-2"]
    assert [j.job_id for j in jobs] == [job_id]
    [(_, generated)] = fake.generated
    sent = json.loads(base64.b64decode(generated["transactionData"]))
    assert sent["policyDocRef"] == "doc-9"
    assert "correlationReference" not in sent


async def test_a_tenant_expecting_another_correlation_field_refuses(
    fake: FakeThunderhead,
) -> None:
    fake.correlation_field = "policyDocRef"
    async with client_for(fake.url) as client:  # the default correlationReference
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(BATCH_CONFIG, "batch-1", [transaction()])
    assert caught.value.status == 400
    assert fake.batches == []


async def test_job_status_decodes_the_shapes_and_ignores_new_fields(
    fake: FakeThunderhead,
) -> None:
    async with client_for(fake.url) as client:
        job = await client.job_status("48213")
    assert (job.job_id, job.batch_name, job.status) == ("48213", "batch-1", "COMPLETED")
    done, failed = job.transactions
    assert (done.correlation_reference, done.status) == ("doc-1", "COMPLETED")
    [envelope] = done.envelopes
    primary, enclosure = envelope.channels()
    assert (primary.channel_type, primary.type_name) == (1, "HTML")
    assert primary.channel_name == "Email"
    assert primary.document_name == "renewal.html"
    assert primary.mime_type == "text/html"
    assert primary.part_location == "parts/1"
    assert primary.data == ""  # not asked for
    assert (enclosure.type_name, enclosure.document_name) == ("PRINT", "renewal.pdf")
    assert done.job_messages == (
        JobMessage(msg_type="W", msg_text="font substituted", msg_date=MSG_DATE),
    )
    assert (failed.correlation_reference, failed.status, failed.envelopes) == (
        "doc-2",
        "FAILED",
        (),
    )
    assert failed.exceptions == (
        JobException(class_id=2002, id=77, class_name="TestException", msg="missing field premium"),
    )
    assert [m.msg_type for m in failed.job_messages] == ["E"]
    assert job.job_messages[0].msg_text == "1 of 2 transactions failed"


async def test_find_by_reference_lists_every_job_in_submission_order(
    fake: FakeThunderhead,
) -> None:
    async with client_for(fake.url) as client:
        await client.submit_batch(BATCH_CONFIG, "batch-a", [transaction("doc-1")])
        await client.submit_batch(BATCH_CONFIG, "batch-b", [transaction("doc-2")])
        await client.submit_batch(BATCH_CONFIG, "batch-c", [transaction("doc-1")])
        jobs = await client.find_by_reference("doc-1")
        none = await client.find_by_reference("doc-unknown")
    assert jobs == [
        JobRef(job_id=str(FIRST_JOB), batch_name="batch-a", status="RUNNING"),
        JobRef(job_id=str(FIRST_JOB + 2), batch_name="batch-c", status="RUNNING"),
    ]
    assert none == []


async def test_generate_document_speaks_the_public_shape(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        document = await client.generate_document(BATCH_CONFIG, transaction("doc-9"))
        with_data = await client.generate_document(
            BATCH_CONFIG,
            transaction("doc-9"),
            include_document_data=True,
            properties={"merge.pdf": "true"},
        )
    (query, body), (query_data, body_data) = fake.generated
    assert query == {"includeDocumentData": "false"}
    assert query_data == {"includeDocumentData": "true"}
    assert body["batchConfigResId"] == BATCH_CONFIG
    assert (body["transactionDataType"], body["transactionRange"]) == ("application/json", 1)
    assert body["properties"] == []
    assert body_data["properties"] == [{"name": "merge.pdf", "value": "true"}]
    sent = json.loads(base64.b64decode(body["transactionData"]))
    assert sent["correlationReference"] == "doc-9"  # one object, not an array
    assert document.number_transactions == 1
    assert document.job_messages == (
        JobMessage(msg_type="I", msg_text="generated", msg_date=MSG_DATE),
    )
    [channel] = document.envelopes[0].channels()
    assert (channel.type_name, channel.document_name) == ("PRINT", "doc-9.pdf")
    assert channel.part_location == "parts/doc-9"
    assert channel.data == ""
    [channel_data] = with_data.envelopes[0].channels()
    assert base64.b64decode(channel_data.data) == b"%PDF-1.7 fake"


async def test_the_older_channel_names_are_read(fake: FakeThunderhead) -> None:
    old = {
        "envelopes": [
            {
                "masterChannel": {"channelType": 2, "documentName": "a.pdf"},
                "slaveChannels": [{"channelType": 1, "documentName": "a.html"}],
            }
        ],
        "numberTransactions": 1,
    }
    fake.script("generateDocument", status(fake, 200, old))
    async with client_for(fake.url) as client:
        document = await client.generate_document(BATCH_CONFIG, transaction())
    [envelope] = document.envelopes
    assert isinstance(envelope, Envelope)
    assert [(c.type_name, c.document_name) for c in envelope.channels()] == [
        ("PRINT", "a.pdf"),
        ("HTML", "a.html"),
    ]


async def test_job_id_is_one_path_segment(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        job = await client.job_status("J-1/../x")
    assert job.job_id == "J-1/../x"
    assert fake.calls["jobStatus"] == 1


async def test_while1_prefix_is_stripped_everywhere(fake: FakeThunderhead) -> None:
    fake.prefix = True
    async with client_for(fake.url) as client:
        assert await client.submit_batch(BATCH_CONFIG, "batch-1", [transaction()]) == "48213"
        assert (await client.job_status("48213")).status == "COMPLETED"
        assert len(await client.find_by_reference("doc-1")) == 1
        generated = await client.generate_document(BATCH_CONFIG, transaction())
        assert generated.number_transactions == 1
        fake.script("submitBatch", status(fake, 400, {"exceptions": [exception("X")]}))
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(BATCH_CONFIG, "batch-2", [transaction()])
    assert caught.value.messages == [exception("X")]


# --- the token ----------------------------------------------------------------------


async def test_one_token_fetch_serves_many_concurrent_calls(fake: FakeThunderhead) -> None:
    fake.delay_s = 0.05  # keep the token fetch in flight while the others arrive
    async with client_for(fake.url) as client, anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(client.job_status, f"J-{n}")
    assert fake.calls["token"] == 1
    assert fake.calls["jobStatus"] == 30


async def test_token_is_refreshed_before_it_expires(fake: FakeThunderhead) -> None:
    clock = Clock()
    fake.expires_in = 120
    async with client_for(fake.url, clock=clock, token_refresh_margin_s=60.0) as client:
        await client.job_status("J-1")
        clock.now += 59
        await client.job_status("J-1")
        assert fake.calls["token"] == 1
        clock.now += 2  # 61 s: inside the margin, still valid on the server
        await client.job_status("J-1")
    assert fake.calls["token"] == 2
    assert fake.bearers == ["tok-1", "tok-1", "tok-2"]


async def test_a_token_without_expires_in_is_kept_for_1800_s(fake: FakeThunderhead) -> None:
    clock = Clock()
    fake.expires_in = None  # absent from every public sample
    async with client_for(fake.url, clock=clock, token_refresh_margin_s=60.0) as client:
        await client.job_status("J-1")
        clock.now += 1_739
        await client.job_status("J-1")
        assert fake.calls["token"] == 1
        clock.now += 2  # 1741 s: inside the margin of 1800 s
        await client.job_status("J-1")
    assert fake.calls["token"] == 2
    assert fake.bearers == ["tok-1", "tok-1", "tok-2"]


async def test_a_short_lived_token_is_kept_for_half_its_life(fake: FakeThunderhead) -> None:
    clock = Clock()
    fake.expires_in = 30  # shorter than the margin
    async with client_for(fake.url, clock=clock, token_refresh_margin_s=60.0) as client:
        await client.job_status("J-1")
        clock.now += 14
        await client.job_status("J-1")
        assert fake.calls["token"] == 1
        clock.now += 2
        await client.job_status("J-1")
    assert fake.calls["token"] == 2


async def test_a_failed_refresh_keeps_using_a_token_not_yet_expired(
    fake: FakeThunderhead,
) -> None:
    clock = Clock()
    fake.expires_in = 120
    async with client_for(fake.url, clock=clock, token_refresh_margin_s=60.0) as client:
        await client.job_status("J-1")
        clock.now += 61
        fake.script("token", status(fake, 500))
        await client.job_status("J-1")  # refresh failed; tok-1 has 59 s left
        clock.now += 60
        fake.script("token", status(fake, 500))
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")  # tok-1 has expired
    assert fake.bearers == ["tok-1", "tok-1"]
    assert not caught.value.attempt  # token trouble never uses a document's attempt


async def test_a_401_forces_one_refresh_and_one_retry_for_all_callers(
    fake: FakeThunderhead,
) -> None:
    async with client_for(fake.url) as client:
        await client.job_status("J-0")
        fake.revoke()  # Thunderhead forgot tok-1
        refreshes = calls("jobStatus", "unauthorized")
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(client.job_status, f"J-{n}")
    assert fake.calls["token"] == 2  # one refresh shared by ten callers
    assert fake.calls["jobStatus"] == 1 + 10 + 10
    assert fake.bearers[-10:] == ["tok-2"] * 10
    assert calls("jobStatus", "unauthorized") - refreshes == 10


async def test_a_second_401_is_transient_not_rejected(fake: FakeThunderhead) -> None:
    """A fresh token refused is OMS's or Thunderhead's problem, never the document's."""
    fake.accept_tokens = False
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch(BATCH_CONFIG, "batch-1", [transaction()])
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
    assert not caught.value.attempt
    assert "401" in caught.value.reason
    assert caught.value.retry_after_s == 5.0
    assert fake.calls["token"] == 2
    assert fake.calls["submitBatch"] == 2


async def test_bad_credentials_are_transient_and_fail_ping(fake: FakeThunderhead) -> None:
    async with client_for(fake.url, client_secret="wrong") as client:
        assert not await client.ping()
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert "invalid_client" in caught.value.reason
    assert not caught.value.attempt
    assert fake.calls["jobStatus"] == 0


async def test_credentials_error_is_set_on_refusal_and_cleared_on_success(
    fake: FakeThunderhead,
) -> None:
    async with client_for(fake.url, client_secret="rotated") as client:
        assert client.credentials_error is None
        assert not await client.ping()
        assert client.credentials_error is not None
        assert "401" in client.credentials_error
        assert "invalid_client" in client.credentials_error
        assert gauge("oms_thunderhead_token_ok") == 0
        fake.secret = "rotated"  # the tenant catches up with the rotation
        assert await client.ping()
        assert client.credentials_error is None
        assert gauge("oms_thunderhead_token_ok") == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [({"error": "invalid_request"}, 400), ({"error": "unsupported_grant_type"}, 400)],
)
async def test_every_4xx_from_the_token_endpoint_is_a_credentials_error(
    fake: FakeThunderhead, body: dict[str, str], code: int
) -> None:
    fake.script("token", status(fake, code, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
        assert client.credentials_error is not None
        assert body["error"] in client.credentials_error
    assert body["error"] in caught.value.reason
    assert not caught.value.attempt
    assert gauge("oms_thunderhead_token_ok") == 0
    assert fake.calls["jobStatus"] == 0


@pytest.mark.parametrize(("code", "headers"), [(500, {}), (429, {"Retry-After": "1"})])
async def test_a_token_endpoint_failure_is_not_a_credentials_error(
    fake: FakeThunderhead, code: int, headers: dict[str, str]
) -> None:
    async with client_for(fake.url) as client:
        assert await client.ping()
        assert gauge("oms_thunderhead_token_ok") == 1
        fake.revoke()  # the next call needs a new token
        fake.script("token", status(fake, code, **headers))
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
        assert client.credentials_error is None
    assert not caught.value.attempt
    assert gauge("oms_thunderhead_token_ok") == 1


async def test_ping_uses_the_cached_token(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        assert await client.ping()
        assert await client.ping()
    assert fake.calls["token"] == 1


async def test_ping_gives_up_after_timeout(fake: FakeThunderhead) -> None:
    fake.script("token", hang)
    async with client_for(fake.url, timeout_s=0.3) as client:
        started = time.monotonic()
        assert not await client.ping()
    assert time.monotonic() - started < 1.5


# --- 429, 503, 5xx ------------------------------------------------------------------


async def test_429_pauses_every_caller_and_raises_its_retry_after(
    fake: FakeThunderhead,
) -> None:
    fake.script("jobStatus", status(fake, 429, **{"Retry-After": "30"}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
        assert caught.value.retry_after_s == 30
        sent = sum(fake.calls.values())
        errors: list[exceptions.ThunderheadTransient] = []

        async def call(make: Callable[[], Awaitable[object]]) -> None:
            try:
                await make()
            except exceptions.ThunderheadTransient as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, lambda: client.job_status("J-2"))
            tg.start_soon(call, lambda: client.find_by_reference("doc-1"))
            tg.start_soon(call, lambda: client.submit_batch(BATCH_CONFIG, "b", [transaction()]))
            tg.start_soon(call, lambda: client.generate_document(BATCH_CONFIG, transaction()))
    assert len(errors) == 4
    for error in errors:
        assert 29 < error.retry_after_s <= 30
        assert not isinstance(error, exceptions.ThunderheadOutcomeUnknown)  # nothing was sent
        assert not error.attempt
    assert sum(fake.calls.values()) == sent


async def test_a_short_pause_is_waited_out_by_later_callers(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", status(fake, 429, **{"Retry-After": "1"}))
    waits = REGISTRY.get_sample_value("oms_thunderhead_ratelimit_waits_total", {"reason": "pause"})
    async with client_for(fake.url, timeout_s=2.0) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
        assert caught.value.retry_after_s == 1
        started = time.monotonic()
        assert (await client.job_status("J-1")).status == "COMPLETED"
    assert time.monotonic() - started >= 0.9
    after = REGISTRY.get_sample_value("oms_thunderhead_ratelimit_waits_total", {"reason": "pause"})
    assert (after or 0) - (waits or 0) >= 1


@pytest.mark.parametrize(
    ("code", "headers", "expected"),
    [
        (429, {}, 60.0),
        (429, {"Retry-After": "7"}, 7.0),
        (503, {}, 120.0),
        (503, {"Retry-After": "3600"}, 3600.0),
        (503, {"Retry-After": "soon"}, 120.0),
    ],
)
async def test_throttling_waits(
    fake: FakeThunderhead, code: int, headers: dict[str, str], expected: float
) -> None:
    fake.script("findByReference", status(fake, code, **headers))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.find_by_reference("doc-1")
        assert caught.value.retry_after_s == expected
        with pytest.raises(exceptions.ThunderheadTransient) as paused:
            await client.job_status("J-1")
        assert paused.value.retry_after_s == pytest.approx(expected, abs=1)
    assert fake.calls["jobStatus"] == 0


async def test_retry_after_as_an_http_date(fake: FakeThunderhead) -> None:
    date = email.utils.formatdate(time.time() + 90, usegmt=True)
    fake.script("jobStatus", status(fake, 503, **{"Retry-After": date}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert 85 < caught.value.retry_after_s <= 90


async def test_a_429_lowers_the_rate_until_the_ceiling_is_forgotten(
    fake: FakeThunderhead,
) -> None:
    clock = Clock()  # the limiter's time; no real waiting happens at these rates
    overrides = {
        "clock": clock,
        "rate_limit_per_s": 100.0,
        "rate_limit_burst": 10,
        "rate_decrease_factor": 0.5,
        "rate_recovery_s": 10.0,
        "rate_ceiling_ttl_s": 300.0,
    }
    async with client_for(fake.url, **overrides) as client:
        assert client.rate_per_s == 100.0
        for n in range(3):
            await client.job_status(f"J-{n}")
        fake.script("jobStatus", status(fake, 429, **{"Retry-After": "2"}))
        with pytest.raises(exceptions.ThunderheadTransient):
            await client.job_status("J-9")
        # 5 calls (the token's included) went in the last second, the 5th refused.
        dropped = client.rate_per_s
        assert dropped <= 0.5 * 5
        assert gauge("oms_thunderhead_rate_limit_per_second") == pytest.approx(dropped)
        clock.now += 60  # recovery_s is long past: the rate climbed as far as it may
        climbed = client.rate_per_s
        assert dropped < climbed <= 0.8 * 5  # never back to the refused rate, let alone 100
        clock.now += 100
        assert client.rate_per_s == climbed  # the ceiling is still fresh
        assert (await client.job_status("J-10")).status == "COMPLETED"
        clock.now += 150  # 310 s after the 429: the ceiling is forgotten
        assert client.rate_per_s == pytest.approx(100.0)
        assert gauge("oms_thunderhead_rate_limit_per_second") == pytest.approx(100.0)


async def test_a_503_pauses_but_leaves_the_rate_alone(fake: FakeThunderhead) -> None:
    clock = Clock()
    async with client_for(fake.url, clock=clock, rate_limit_per_s=100.0) as client:
        await client.job_status("J-1")
        fake.script("jobStatus", status(fake, 503, **{"Retry-After": "30"}))
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-2")
        assert caught.value.retry_after_s == 30
        assert client.rate_per_s == 100.0
        assert gauge("oms_thunderhead_rate_limit_per_second") == 100.0
        with pytest.raises(exceptions.ThunderheadTransient) as paused:
            await client.job_status("J-3")  # paused nonetheless: not sent
        assert paused.value.retry_after_s == 30
    assert fake.calls["jobStatus"] == 2


@pytest.mark.parametrize("code", [500, 501, 502, 504])
async def test_5xx_on_a_get_is_transient_and_does_not_pause(
    fake: FakeThunderhead, code: int
) -> None:
    fake.script("jobStatus", status(fake, code))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
        assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
        assert caught.value.retry_after_s == 5.0
        assert (await client.job_status("J-1")).status == "COMPLETED"


@pytest.mark.parametrize(("code", "unknown"), [(500, False), (502, True), (504, True)])
async def test_5xx_on_submit(fake: FakeThunderhead, code: int, unknown: bool) -> None:
    """500 is Thunderhead saying it failed; 502/504 are a gateway that may have passed it on."""
    fake.script("submitBatch", status(fake, code))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
    assert isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown) is unknown
    assert caught.value.retry_after_s == 5.0


@pytest.mark.parametrize(
    ("endpoint", "code", "attempt"),
    [
        ("jobStatus", 500, True),
        ("jobStatus", 501, True),
        ("jobStatus", 502, True),
        ("jobStatus", 504, True),
        ("jobStatus", 503, False),
        ("jobStatus", 429, False),
        ("submitBatch", 500, True),
        ("submitBatch", 503, False),
        ("submitBatch", 429, False),
        # a gateway's 502/504 may have passed the submission on: reconciled, not charged
        ("submitBatch", 502, False),
        ("token", 500, False),
        ("token", 502, False),
        ("token", 503, False),
        ("token", 401, False),
    ],
)
async def test_only_a_5xx_other_than_503_is_an_attempt(
    fake: FakeThunderhead, endpoint: str, code: int, attempt: bool
) -> None:
    fake.script(endpoint, status(fake, code))
    async with client_for(fake.url) as client:
        call = (
            client.submit_batch(BATCH_CONFIG, "b", [transaction()])
            if endpoint == "submitBatch"
            else client.job_status("J-1")
        )
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await call
    assert caught.value.attempt is attempt
    assert fake.calls[endpoint] == 1


# --- timeouts and connections -------------------------------------------------------


async def test_timeout_on_submit_is_outcome_unknown(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", hang)
    async with client_for(fake.url, submit_timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
    assert 0.25 < time.monotonic() - started < 1.5
    assert caught.value.retry_after_s == 5.0
    assert not caught.value.attempt


async def test_timeout_on_generate_is_outcome_unknown(fake: FakeThunderhead) -> None:
    fake.script("generateDocument", hang)
    async with client_for(fake.url, submit_timeout_s=0.3) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.generate_document(BATCH_CONFIG, transaction())
    assert fake.calls["generateDocument"] == 1


async def test_timeouts_on_gets_are_plain_transient(fake: FakeThunderhead) -> None:
    fake.script("jobStatus", hang)
    fake.script("findByReference", hang)
    async with client_for(fake.url, timeout_s=0.3) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as status_error:
            await client.job_status("J-1")
        with pytest.raises(exceptions.ThunderheadTransient) as find_error:
            await client.find_by_reference("doc-1")
    for caught in (status_error, find_error):
        assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
        assert "no answer" in caught.value.reason
        assert not caught.value.attempt


async def test_connection_lost_after_sending_a_submit_is_outcome_unknown(
    fake: FakeThunderhead,
) -> None:
    fake.script("submitBatch", accept_then_drop)
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
    assert fake.calls["submitBatch"] == 1  # a POST is never re-sent by aiohttp


async def test_connection_lost_on_a_get_is_plain_transient(fake: FakeThunderhead) -> None:
    # aiohttp itself re-sends an idempotent request once when a pooled connection
    # drops (never a POST), so drop twice.
    fake.script("jobStatus", accept_then_drop, accept_then_drop)
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
    assert not caught.value.attempt


async def test_connection_refused_is_transient() -> None:
    async with client_for(f"http://127.0.0.1:{free_port()}") as client:
        assert not await client.ping()
        assert client.credentials_error is None  # nobody refused the credentials
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
    assert not caught.value.attempt


async def test_connection_refused_on_submit_is_not_an_unknown_outcome(
    fake: FakeThunderhead,
) -> None:
    fake.close_connections = True  # no pooled connection outlives the server
    async with client_for(fake.url) as client:
        assert await client.ping()  # the token is cached
        await fake.stop()
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
    assert "connect" in caught.value.reason
    assert not caught.value.attempt


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"exceptions": [exception("unknown template", 1002, 1)]},
        {"jobMessages": [message("I", "read"), message("E", "no config")]},
        {
            "jobId": "",
            "exceptions": [exception("bad data", 1003, 2)],
            "jobMessages": [message("W", "careful")],
        },
    ],
)
async def test_business_failure_in_a_200_is_rejected_with_its_messages(
    fake: FakeThunderhead, body: dict[str, Any]
) -> None:
    fake.script("submitBatch", status(fake, 200, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
    assert caught.value.status == 200
    assert caught.value.messages == body.get("exceptions", []) + body.get("jobMessages", [])
    failing = [m for m in caught.value.messages if m.get("msgType", "E") == "E"]
    assert failing[0].get("msg", failing[0].get("msgText")) in caught.value.reason


async def test_a_job_id_wins_over_an_error_message(fake: FakeThunderhead) -> None:
    # A job exists: refusing the answer would send its documents again. What went
    # wrong inside it comes with the job's status.
    body = {"jobId": 48213, "jobMessages": [message("W", "careful"), message("E", "bad data")]}
    fake.script("submitBatch", status(fake, 200, body))
    async with client_for(fake.url) as client:
        assert await client.submit_batch(BATCH_CONFIG, "b", [transaction()]) == "48213"


async def test_warnings_alone_are_not_a_business_failure(fake: FakeThunderhead) -> None:
    body = {"jobId": 7, "jobMessages": [message("W", "careful"), message("I", "ok")]}
    fake.script("submitBatch", status(fake, 200, body))
    async with client_for(fake.url) as client:
        assert await client.submit_batch(BATCH_CONFIG, "b", [transaction()]) == "7"


async def test_business_failure_on_generate_is_rejected(fake: FakeThunderhead) -> None:
    fake.script(
        "generateDocument",
        status(fake, 200, {"exceptions": [exception("no template", 1002, 5)]}),
        status(
            fake,
            200,
            {
                "envelopes": [{"primaryChannel": _channel("doc-1")}],
                "jobMessages": [message("E", "composition failed")],
            },
        ),
    )
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.generate_document(BATCH_CONFIG, transaction())
        assert caught.value.messages == [exception("no template", 1002, 5)]
        with pytest.raises(exceptions.ThunderheadRejected) as second:
            await client.generate_document(BATCH_CONFIG, transaction())
    assert second.value.messages == [message("E", "composition failed")]


async def test_a_200_without_a_result_is_an_unknown_outcome(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", status(fake, 200, {"jobMessages": [message("I", "?")]}))
    fake.script("generateDocument", status(fake, 200, {"numberTransactions": 1}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.generate_document(BATCH_CONFIG, transaction())
    assert (fake.calls["submitBatch"], fake.calls["generateDocument"]) == (1, 1)


async def test_an_unusable_200_on_a_get_is_transient(fake: FakeThunderhead) -> None:
    async def html(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    fake.script("jobStatus", html)
    fake.script("findByReference", status(fake, 200, {"results": []}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as status_error:
            await client.job_status("J-1")
        with pytest.raises(exceptions.ThunderheadTransient) as find_error:  # never "no jobs"
            await client.find_by_reference("doc-1")
    for caught in (status_error, find_error):
        assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)


async def test_400_is_rejected_with_the_messages(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(0, "b", [transaction()])  # not a Template Selector
        with pytest.raises(exceptions.ThunderheadRejected) as blank:
            await client.find_by_reference(" ")
    assert caught.value.status == 400
    [said] = caught.value.messages
    assert said["classId"] == 1002
    assert said["msg"] == "batchConfigResId must be a Template Selector id"
    assert said["msg"] in caught.value.reason
    assert blank.value.status == 400
    assert fake.batches == []


async def test_a_403_carries_id_and_msg(fake: FakeThunderhead) -> None:
    body = {"id": 4031, "msg": "licence does not cover this template"}
    fake.script("submitBatch", status(fake, 403, body))
    fake.script("findByReference", status(fake, 403, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction()])
        with pytest.raises(exceptions.ThunderheadRejected) as on_get:
            await client.find_by_reference("doc-1")
    for error in (caught.value, on_get.value):
        assert error.status == 403
        assert {"id": 4031, "msg": "licence does not cover this template"} in error.messages
        assert "licence does not cover this template" in error.reason
    assert fake.calls["token"] == 1  # a 403 is not a token problem


async def test_unknown_job_is_rejected_404(fake: FakeThunderhead) -> None:
    async def not_found(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such job")

    body = {"exceptions": [exception("job 1 not found", 1005, 9)]}
    fake.script("jobStatus", not_found, status(fake, 404, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.job_status("J-404")
        with pytest.raises(exceptions.ThunderheadRejected) as shaped:
            await client.job_status("1")
    assert (caught.value.status, caught.value.messages) == (404, [])
    assert (shaped.value.status, shaped.value.messages) == (404, body["exceptions"])


async def test_an_oversize_batch_is_refused_without_sending(fake: FakeThunderhead) -> None:
    big = b'{"text": "' + b"x" * 5_000 + b'"}'
    async with client_for(fake.url, max_request_bytes=4_000) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch(BATCH_CONFIG, "b", [transaction(data=big)])
        assert caught.value.status == 413
        with pytest.raises(exceptions.ThunderheadRejected):
            await client.generate_document(BATCH_CONFIG, transaction(data=big + b" " * 4_000))
        await client.submit_batch(BATCH_CONFIG, "b", [transaction()])  # small ones still go
    assert fake.calls["submitBatch"] == 1
    assert fake.calls["generateDocument"] == 0


# --- limits -------------------------------------------------------------------------


async def test_the_concurrency_limit_is_never_exceeded(fake: FakeThunderhead) -> None:
    fake.delay_s = 0.05
    async with client_for(fake.url, max_concurrency=3) as client:
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(client.job_status, f"J-{n}")
        assert await client.ping()
    assert fake.peak_in_flight == 3
    assert REGISTRY.get_sample_value("oms_thunderhead_in_flight") == 0


async def test_the_rate_limit_holds_across_50_concurrent_callers(fake: FakeThunderhead) -> None:
    rate, burst = 20.0, 5
    async with client_for(fake.url, rate_limit_per_s=rate, rate_limit_burst=burst) as client:
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(client.job_status, f"J-{n}")
    arrivals = sorted(fake.arrivals)
    assert len(arrivals) == 51  # the token call counts too
    # No 1-second window, as the server saw it, holds more than rate + burst calls.
    for i, start in enumerate(arrivals):
        assert sum(1 for t in arrivals[i:] if t < start + 1.0) <= rate + burst


async def test_calls_are_counted_by_endpoint_and_outcome(fake: FakeThunderhead) -> None:
    before = calls("jobStatus", "ok"), calls("jobStatus", "throttled"), calls("jobStatus", "paused")
    fake.script("jobStatus", status(fake, 429, **{"Retry-After": "30"}))
    async with client_for(fake.url) as client:
        for _ in range(2):
            with pytest.raises(exceptions.ThunderheadTransient):
                await client.job_status("J-1")
    after = calls("jobStatus", "ok"), calls("jobStatus", "throttled"), calls("jobStatus", "paused")
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 1, 1]


async def test_a_closed_client_refuses_calls(fake: FakeThunderhead) -> None:
    client = ThunderheadClient(settings(fake.url))
    with pytest.raises(RuntimeError, match="not open"):
        await client.job_status("J-1")
    assert fake.calls["jobStatus"] == 0


def test_the_base_url_must_be_absolute() -> None:
    with pytest.raises(exceptions.ConfigError, match=r"thunderhead\.base_url"):
        ThunderheadClient(settings(""))
