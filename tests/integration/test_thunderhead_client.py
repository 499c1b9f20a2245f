"""ThunderheadClient over real loopback HTTP, against a small fake Thunderhead.

The fake is this module's own fixture (the real simulator is ``oms.sim.thunderhead``,
written separately): it speaks docs/thunderhead.md, counts calls, records when each
request arrived and how many were in flight, and can be told per test how to answer
the next calls of an endpoint (a status, a hang, a dropped connection…).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from oms import exceptions
from oms.config import ThunderheadSettings
from oms.thunderhead import JobRef, ThunderheadClient, Transaction

CLIENT_ID = "oms"
SECRET = "test-secret"
API = "/one/oauth2/api/v12/job"
TOKEN = "/one/oauth2Server/token"

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeThunderhead:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.delay_s = 0.0
        self.prefix = False
        self.close_connections = False
        self.expires_in = 3600
        self.accept_tokens = True
        self.issued = 0
        self.valid: set[str] = set()
        self.bearers: list[str] = []
        self.token_requests: list[tuple[dict[str, str], str]] = []
        self.batches: list[dict[str, Any]] = []
        self.scripts: dict[str, list[Behaviour]] = collections.defaultdict(list)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def script(self, endpoint: str, *behaviours: Behaviour) -> None:
        """The next calls of ``endpoint`` answer with these, in order, then as usual."""
        self.scripts[endpoint].extend(behaviours)

    def revoke(self) -> None:
        self.valid.clear()

    def answer(self, body: object, status: int = 200, **headers: str) -> web.Response:
        raw = json.dumps(body).encode()
        if self.prefix:
            raw = b"while(1);" + raw
        return web.Response(
            body=raw, status=status, headers=headers, content_type="application/json"
        )

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
                response = self.answer({"error": "invalid_token"}, 401)
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
        self.token_requests.append((form, request.headers.get("Authorization", "")))
        basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
        if request.headers.get("Authorization") != basic or form.get("client_secret") != SECRET:
            return self.answer({"error": "invalid_client"}, 401)
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid.add(token)
        return self.answer(
            {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
        )

    async def _submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["transactions"] = json.loads(base64.b64decode(body["transactionData"]))
        self.batches.append(body)
        return self.answer({"jobId": f"J-{len(self.batches)}", "futureField": True})

    async def _status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        return self.answer(
            {
                "jobId": job_id,
                "batchName": "batch-1",
                "status": "COMPLETED",
                "priority": "new in v13",
                "transactions": [
                    {
                        "correlationReference": "doc-1",
                        "status": "COMPLETED",
                        "envelopes": [
                            {
                                "channel": "email",
                                "documentName": "renewal.pdf",
                                "mimeType": "application/pdf",
                                "partLocation": "parts/1",
                                "sizeBytes": 1234,
                            }
                        ],
                    },
                    {
                        "correlationReference": "doc-2",
                        "status": "FAILED",
                        "exceptions": [{"code": "TPL-7", "message": "missing field"}],
                    },
                ],
                "jobMessages": [{"type": "I", "text": "done"}],
            }
        )

    async def _find(self, request: web.Request) -> web.Response:
        reference = request.query["reference"]
        jobs = [
            {"jobId": f"J-{n}", "batchName": b["batchName"], "status": "RUNNING", "x": 1}
            for n, b in enumerate(self.batches, start=1)
            if any(t["correlationReference"] == reference for t in b["transactions"])
        ]
        return self.answer({"jobs": jobs})

    async def _generate(self, request: web.Request) -> web.Response:
        transaction = await request.json()
        return self.answer(
            {
                "correlationReference": transaction["correlationReference"],
                "status": "COMPLETED",
                "jobId": "J-99",
                "envelopes": [{"channel": "email", "documentName": "now.pdf"}],
            }
        )


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# --- the happy path, on the wire ---------------------------------------------------


async def test_submit_batch_speaks_the_contract(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        job_id = await client.submit_batch(
            "BC-policy-renewal-email-001",
            "batch-7",
            [transaction("doc-1"), transaction("doc-2", b'{"nested": {"a": [1, 2]}}')],
        )
    assert job_id == "J-1"
    [(form, authorization)] = fake.token_requests
    assert form == {"grant_type": "client_credentials", "client_id": "oms", "client_secret": SECRET}
    assert authorization == "Basic " + base64.b64encode(b"oms:" + SECRET.encode()).decode()
    assert fake.bearers == ["tok-1"]
    [batch] = fake.batches
    assert batch["batchConfigResId"] == "BC-policy-renewal-email-001"
    assert batch["batchName"] == "batch-7"
    assert batch["transactionDataType"] == "application/json"
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


async def test_password_grant_sends_username_and_password(fake: FakeThunderhead) -> None:
    overrides = {"grant_type": "password", "username": "svc-oms", "password": "pw"}
    async with client_for(fake.url, **overrides) as client:
        assert await client.ping()
    [(form, _)] = fake.token_requests
    assert form["grant_type"] == "password"
    assert (form["username"], form["password"]) == ("svc-oms", "pw")


async def test_status_find_and_generate_decode_and_ignore_new_fields(
    fake: FakeThunderhead,
) -> None:
    async with client_for(fake.url) as client:
        await client.submit_batch("BC-1", "batch-1", [transaction("doc-1")])
        job = await client.job_status("J-1")
        jobs = await client.find_by_reference("doc-1")
        none = await client.find_by_reference("doc-unknown")
        document = await client.generate_document(transaction("doc-9"))
    assert (job.job_id, job.batch_name, job.status) == ("J-1", "batch-1", "COMPLETED")
    done, failed = job.transactions
    assert done.envelopes[0].document_name == "renewal.pdf"
    assert done.envelopes[0].part_location == "parts/1"
    assert failed.status == "FAILED"
    assert failed.exceptions[0].code == "TPL-7"
    assert job.job_messages[0].type == "I"
    assert jobs == [JobRef(job_id="J-1", batch_name="batch-1", status="RUNNING")]
    assert none == []
    assert (document.correlation_reference, document.status) == ("doc-9", "COMPLETED")
    assert document.envelopes[0].document_name == "now.pdf"
    assert document.job_id == "J-99"


async def test_job_id_is_one_path_segment(fake: FakeThunderhead) -> None:
    async with client_for(fake.url) as client:
        job = await client.job_status("J-1/../x")
    assert job.job_id == "J-1/../x"
    assert fake.calls["jobStatus"] == 1


async def test_while1_prefix_is_stripped_everywhere(fake: FakeThunderhead) -> None:
    fake.prefix = True
    async with client_for(fake.url) as client:
        assert await client.submit_batch("BC-1", "batch-1", [transaction()]) == "J-1"
        assert (await client.job_status("J-1")).status == "COMPLETED"
        assert len(await client.find_by_reference("doc-1")) == 1
        assert (await client.generate_document(transaction())).status == "COMPLETED"
        fake.script("submitBatch", status(fake, 400, {"exceptions": [{"code": "X"}]}))
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch("BC-1", "batch-2", [transaction()])
    assert caught.value.messages == [{"code": "X", "message": ""}]


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
        with pytest.raises(exceptions.ThunderheadTransient):
            await client.job_status("J-1")  # tok-1 has expired
    assert fake.bearers == ["tok-1", "tok-1"]


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
            await client.submit_batch("BC-1", "batch-1", [transaction()])
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
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
    assert fake.calls["jobStatus"] == 0


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
            tg.start_soon(call, lambda: client.submit_batch("BC-1", "b", [transaction()]))
            tg.start_soon(call, lambda: client.generate_document(transaction()))
    assert len(errors) == 4
    for error in errors:
        assert 29 < error.retry_after_s <= 30
        assert not isinstance(error, exceptions.ThunderheadOutcomeUnknown)  # nothing was sent
    assert sum(fake.calls.values()) == sent


async def test_a_short_pause_is_waited_out_by_later_callers(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", status(fake, 429, **{"Retry-After": "1"}))
    waits = REGISTRY.get_sample_value("oms_thunderhead_ratelimit_waits_total", {"reason": "pause"})
    async with client_for(fake.url, timeout_s=2.0) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch("BC-1", "b", [transaction()])
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
            await client.submit_batch("BC-1", "b", [transaction()])
    assert isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown) is unknown
    assert caught.value.retry_after_s == 5.0


# --- timeouts and connections -------------------------------------------------------


async def test_timeout_on_submit_is_outcome_unknown(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", hang)
    async with client_for(fake.url, submit_timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown) as caught:
            await client.submit_batch("BC-1", "b", [transaction()])
    assert 0.25 < time.monotonic() - started < 1.5
    assert caught.value.retry_after_s == 5.0


async def test_timeout_on_generate_is_outcome_unknown(fake: FakeThunderhead) -> None:
    fake.script("generateDocument", hang)
    async with client_for(fake.url, submit_timeout_s=0.3) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.generate_document(transaction())


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


async def test_connection_lost_after_sending_a_submit_is_outcome_unknown(
    fake: FakeThunderhead,
) -> None:
    fake.script("submitBatch", accept_then_drop)
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.submit_batch("BC-1", "b", [transaction()])


async def test_connection_lost_on_a_get_is_plain_transient(fake: FakeThunderhead) -> None:
    # aiohttp itself re-sends an idempotent request once when a pooled connection
    # drops (never a POST), so drop twice.
    fake.script("jobStatus", accept_then_drop, accept_then_drop)
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)


async def test_connection_refused_is_transient() -> None:
    async with client_for(f"http://127.0.0.1:{free_port()}") as client:
        assert not await client.ping()
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.job_status("J-1")
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)


async def test_connection_refused_on_submit_is_not_an_unknown_outcome(
    fake: FakeThunderhead,
) -> None:
    fake.close_connections = True  # no pooled connection outlives the server
    async with client_for(fake.url) as client:
        assert await client.ping()  # the token is cached
        await fake.stop()
        with pytest.raises(exceptions.ThunderheadTransient) as caught:
            await client.submit_batch("BC-1", "b", [transaction()])
    assert not isinstance(caught.value, exceptions.ThunderheadOutcomeUnknown)
    assert "connect" in caught.value.reason


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"exceptions": [{"code": "BATCH-1", "message": "unknown template"}]},
        {"jobMessages": [{"type": "I", "text": "read"}, {"type": "E", "text": "no config"}]},
        {
            "jobId": "",
            "exceptions": [{"code": "BATCH-2", "message": "bad data"}],
            "jobMessages": [{"type": "W", "text": "careful"}],
        },
    ],
)
async def test_business_failure_in_a_200_is_rejected_with_its_messages(
    fake: FakeThunderhead, body: dict[str, Any]
) -> None:
    fake.script("submitBatch", status(fake, 200, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch("BC-1", "b", [transaction()])
    assert caught.value.status == 200
    assert caught.value.messages == body.get("exceptions", []) + body.get("jobMessages", [])


async def test_business_failure_on_generate_is_rejected(fake: FakeThunderhead) -> None:
    fake.script(
        "generateDocument",
        status(fake, 200, {"exceptions": [{"code": "GEN-1", "message": "no template"}]}),
        status(fake, 200, {"status": "FAILED", "envelopes": []}),
    )
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.generate_document(transaction())
        assert caught.value.messages == [{"code": "GEN-1", "message": "no template"}]
        with pytest.raises(exceptions.ThunderheadRejected):
            await client.generate_document(transaction())


async def test_a_200_without_a_job_id_is_an_unknown_outcome(fake: FakeThunderhead) -> None:
    fake.script("submitBatch", status(fake, 200, {"jobMessages": [{"type": "I", "text": "?"}]}))
    fake.script("generateDocument", status(fake, 200, {"status": "COMPLETED"}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.submit_batch("BC-1", "b", [transaction()])
        with pytest.raises(exceptions.ThunderheadOutcomeUnknown):
            await client.generate_document(transaction())


async def test_an_unusable_200_on_a_get_is_transient(fake: FakeThunderhead) -> None:
    async def html(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    fake.script("jobStatus", html)
    fake.script("findByReference", status(fake, 200, {"results": []}))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadTransient):
            await client.job_status("J-1")
        with pytest.raises(exceptions.ThunderheadTransient):  # never "no jobs"
            await client.find_by_reference("doc-1")


async def test_400_is_rejected_with_the_messages(fake: FakeThunderhead) -> None:
    body = {"exceptions": [{"code": "E400", "message": "unknown batchConfigResId"}]}
    fake.script("submitBatch", status(fake, 400, body))
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch("BC-nope", "b", [transaction()])
    assert caught.value.status == 400
    assert caught.value.messages == body["exceptions"]


async def test_unknown_job_is_rejected_404(fake: FakeThunderhead) -> None:
    async def not_found(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such job")

    fake.script("jobStatus", not_found)
    async with client_for(fake.url) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.job_status("J-404")
    assert (caught.value.status, caught.value.messages) == (404, [])


async def test_an_oversize_batch_is_refused_without_sending(fake: FakeThunderhead) -> None:
    big = b'{"text": "' + b"x" * 5_000 + b'"}'
    async with client_for(fake.url, max_request_bytes=4_000) as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.submit_batch("BC-1", "b", [transaction(data=big)])
        assert caught.value.status == 413
        with pytest.raises(exceptions.ThunderheadRejected):
            await client.generate_document(transaction(data=big + b" " * 4_000))
        await client.submit_batch("BC-1", "b", [transaction()])  # small ones still go
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


def test_the_base_url_must_be_absolute() -> None:
    with pytest.raises(exceptions.ConfigError, match=r"thunderhead\.base_url"):
        ThunderheadClient(settings(""))
