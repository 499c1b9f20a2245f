"""The Thunderhead simulator over real HTTP on 127.0.0.1, as docs/thunderhead.md says.

Plain aiohttp calls only: nothing from OMS's own Thunderhead client, so the two
are checked against the contract separately.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from oms.sim import thunderhead as sim

API = "/one/oauth2/api/v12/job"
BATCH_CONFIG = "BC-policy-renewal-email-001"
CLIENT = ("oms", "oms-simulator-secret")
FINAL = {"COMPLETED", "FAILED"}


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

    async def get_token(
        self, client: tuple[str, str] = CLIENT, **form: str
    ) -> tuple[int, dict[str, Any]]:
        data = {"grant_type": "client_credentials", "client_id": client[0]}
        data |= {"client_secret": client[1], **form}
        async with self.session.post(
            f"{self.url}/one/oauth2Server/token",
            data=data,
            headers={"Authorization": basic(*client)},
        ) as r:
            return r.status, await r.json()

    async def login(self) -> None:
        status, body = await self.get_token()
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
            return r.status, await r.json()

    async def submit(self, *references: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        return await self.call(
            "POST", f"{API}/submitBatch", json=batch(*references), timeout_s=timeout_s
        )

    async def wait_final(self, job_id: str, deadline_s: float = 5.0) -> tuple[list[str], Any]:
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
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def transaction(reference: str) -> dict[str, Any]:
    return {
        "correlationReference": reference,
        "templateId": "TPL-renewal",
        "templateVersion": 3,
        "channel": "email",
        "language": "en",
        "brand": {"code": "acme"},
        "recipient": {"email": "a@example.com"},
        "data": {"policy": "P-1"},
    }


def batch(*references: str, batch_config: str = BATCH_CONFIG) -> dict[str, Any]:
    data = json.dumps([transaction(ref) for ref in references]).encode()
    return {
        "batchConfigResId": batch_config,
        "batchName": "0b6f3c1e-batch",
        "transactionDataType": "application/json",
        "transactionData": base64.b64encode(data).decode(),
    }


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


async def test_token_is_issued_for_the_right_client(th: Simulator) -> None:
    status, body = await th.get_token()
    assert status == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"]


async def test_password_grant_is_accepted(th: Simulator) -> None:
    status, body = await th.get_token(grant_type="password", username="u", password="p")
    assert status == 200, body


async def test_wrong_credentials_are_invalid_client(th: Simulator) -> None:
    status, body = await th.get_token(client=("oms", "wrong"))
    assert (status, body) == (401, {"error": "invalid_client"})


async def test_basic_header_must_match_too(th: Simulator) -> None:
    async with th.session.post(
        f"{th.url}/one/oauth2Server/token",
        data={"grant_type": "client_credentials", "client_id": "oms"}
        | {"client_secret": "oms-simulator-secret"},
        headers={"Authorization": basic("oms", "wrong")},
    ) as r:
        assert r.status == 401


async def test_calls_need_a_valid_token(th: Simulator) -> None:
    th.token = "not-a-token"
    async with th.request("GET", f"{API}?reference=doc-1") as r:
        assert r.status == 401
        assert await r.json() == {"error": "invalid_token"}
        assert "invalid_token" in r.headers["WWW-Authenticate"]


async def test_tokens_expire() -> None:
    running = await start(sim.SimConfig(token_ttl_s=0.2))
    try:
        status, body = await running.get_token()
        assert body["expires_in"] == 0.2
        running.token = body["access_token"]
        assert (await running.call("GET", f"{API}?reference=doc-1"))[0] == 200
        await asyncio.sleep(0.3)
        status, body = await running.call("GET", f"{API}?reference=doc-1")
        assert (status, body) == (401, {"error": "invalid_token"})
    finally:
        await running.stop()


# --- jobs -------------------------------------------------------------------


async def test_a_job_goes_pending_running_completed(th: Simulator) -> None:
    await th.configure(processing_s_per_document=0.3)
    status, body = await th.submit("doc-1", "doc-2")
    assert status == 200, body
    job_id = body["jobId"]
    assert job_id.startswith("J-")

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
        assert tx["status"] == "COMPLETED"
        assert tx["exceptions"] == []
        (envelope,) = tx["envelopes"]
        ref = tx["correlationReference"]
        assert envelope == {
            "channel": "email",
            "documentName": f"{ref}.pdf",
            "mimeType": "application/pdf",
            "partLocation": f"th://jobs/{job_id}/{ref}.pdf",
        }
    assert all(m["type"] != "E" for m in job["jobMessages"])


async def test_failure_ratio_one_fails_every_transaction(th: Simulator) -> None:
    await th.configure(failure_ratio=1.0)
    _, body = await th.submit("doc-1", "doc-2")
    _, job = await th.wait_final(body["jobId"])
    assert job["status"] == "FAILED"
    for tx in job["transactions"]:
        assert tx["status"] == "FAILED"
        assert tx["envelopes"] == []
        assert tx["exceptions"]
        assert tx["exceptions"][0]["code"]
    assert any(m["type"] == "E" for m in job["jobMessages"])


async def test_failures_are_deterministic_per_reference(th: Simulator) -> None:
    await th.configure(failure_ratio=0.5)
    references = [f"doc-{i}" for i in range(20)]
    outcomes = []
    for _ in range(2):
        _, body = await th.submit(*references)
        _, job = await th.wait_final(body["jobId"])
        outcomes.append([tx["status"] for tx in job["transactions"]])
    assert outcomes[0] == outcomes[1]
    assert {"COMPLETED", "FAILED"} == set(outcomes[0])


async def test_unknown_job_is_404(th: Simulator) -> None:
    status, body = await th.call("GET", f"{API}/J-nope")
    assert status == 404
    assert body["exceptions"]


async def test_find_by_reference(th: Simulator) -> None:
    _, first = await th.submit("doc-1", "doc-2")
    _, second = await th.submit("doc-2")
    status, body = await th.call("GET", API, params={"reference": "doc-2"})
    assert status == 200
    assert [j["jobId"] for j in body["jobs"]] == [first["jobId"], second["jobId"]]
    assert all(j["batchName"] == "0b6f3c1e-batch" for j in body["jobs"])
    assert all(j["status"] in {"PENDING", "RUNNING", "COMPLETED"} for j in body["jobs"])
    assert await th.call("GET", API, params={"reference": "doc-9"}) == (200, {"jobs": []})


async def test_duplicates_are_counted_per_reference(th: Simulator) -> None:
    await th.submit("doc-1", "doc-2")
    await th.submit("doc-1")
    status, _ = await th.call("POST", f"{API}/generateDocument", json=transaction("doc-1"))
    assert status == 200
    stats = await th.stats()
    assert stats["duplicate_submissions"] == 2
    assert stats["duplicates"] == {"doc-1": 2}
    assert stats["jobs"] == 3
    assert stats["transactions"] == 4
    assert stats["calls"] == {
        "token": 1,
        "submitBatch": 2,
        "jobStatus": 0,
        "findByReference": 0,
        "generateDocument": 1,
    }


async def test_reset_clears_jobs_and_stats(th: Simulator) -> None:
    _, body = await th.submit("doc-1")
    await th.configure(reset=True, failure_ratio=1.0)
    stats = await th.stats()
    assert stats["jobs"] == stats["transactions"] == stats["duplicate_submissions"] == 0
    assert sum(stats["calls"].values()) == 0
    assert (await th.call("GET", f"{API}/{body['jobId']}"))[0] == 404
    # The token survives a reset, and the knobs sent with it apply.
    _, body = await th.submit("doc-1")
    _, job = await th.wait_final(body["jobId"])
    assert job["status"] == "FAILED"


async def test_generate_document(th: Simulator) -> None:
    status, body = await th.call("POST", f"{API}/generateDocument", json=transaction("doc-7"))
    assert status == 200
    assert body["correlationReference"] == "doc-7"
    assert body["status"] == "COMPLETED"
    (envelope,) = body["envelopes"]
    assert envelope["partLocation"] == f"th://jobs/{body['jobId']}/doc-7.pdf"
    # It is a job too, so reconciliation finds it.
    _, found = await th.call("GET", API, params={"reference": "doc-7"})
    assert found["jobs"] == [{"jobId": body["jobId"], "batchName": "", "status": "COMPLETED"}]


async def test_generate_document_failure_is_a_200_with_exceptions(th: Simulator) -> None:
    await th.configure(failure_ratio=1.0)
    status, body = await th.call("POST", f"{API}/generateDocument", json=transaction("doc-7"))
    assert status == 200
    assert body["status"] == "FAILED"
    assert body["exceptions"]
    assert body["envelopes"] == []


# --- malformed requests ----------------------------------------------------


@pytest.mark.parametrize("batch_config", ["BC-", "", "  ", "policy-renewal"])
async def test_unknown_batch_config_is_400(th: Simulator, batch_config: str) -> None:
    status, body = await th.call(
        "POST", f"{API}/submitBatch", json=batch("doc-1", batch_config=batch_config)
    )
    assert status == 400
    assert body["exceptions"][0]["code"] == "UNKNOWN_BATCH_CONFIG"


async def test_batch_configs_can_be_listed(th: Simulator) -> None:
    await th.configure(batch_config_ids=["BC-only-this"])
    assert (await th.submit("doc-1"))[0] == 400
    status, _ = await th.call(
        "POST", f"{API}/submitBatch", json=batch("doc-1", batch_config="BC-only-this")
    )
    assert status == 200


@pytest.mark.parametrize(
    ("transaction_data", "why"),
    [
        ("not base64!!", "not Base64"),
        (base64.b64encode(b"{not json").decode(), "not JSON"),
        (base64.b64encode(b'{"correlationReference": "x"}').decode(), "not a list"),
        (base64.b64encode(b"[]").decode(), "empty"),
        (base64.b64encode(b'[{"channel": "email"}]').decode(), "no reference"),
        (base64.b64encode(b'[{"correlationReference": " "}]').decode(), "blank reference"),
    ],
)
async def test_bad_transaction_data_is_400(th: Simulator, transaction_data: str, why: str) -> None:
    body = batch("doc-1") | {"transactionData": transaction_data}
    status, answer = await th.call("POST", f"{API}/submitBatch", json=body)
    assert status == 400, why
    assert answer["exceptions"][0]["code"] == "INVALID_TRANSACTION_DATA", why
    assert (await th.stats())["jobs"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"batchName": "b", "transactionDataType": "application/json", "transactionData": ""},
        batch("doc-1") | {"transactionDataType": "application/xml"},
        batch("doc-1") | {"unexpected": 1},
        ["not", "an", "object"],
    ],
)
async def test_malformed_submission_is_400(th: Simulator, body: Any) -> None:
    status, answer = await th.call("POST", f"{API}/submitBatch", json=body)
    assert status == 400
    assert answer["exceptions"]


async def test_body_over_10_mb_is_413(th: Simulator) -> None:
    oversized = b"x" * (sim.MAX_BODY_BYTES + 1)
    headers = {"Content-Type": "application/json"}
    for path in ("submitBatch", "generateDocument"):
        body = io.BytesIO(oversized)
        async with th.request("POST", f"{API}/{path}", data=body, headers=headers) as r:
            assert r.status == 413, path
            assert (await r.json())["exceptions"]
    # Exactly at the cap is read (and then refused only for being malformed).
    body = io.BytesIO(oversized[:-1])
    async with th.request("POST", f"{API}/submitBatch", data=body, headers=headers) as r:
        assert r.status == 400


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
    async with th.request("GET", f"{API}/J-any") as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
    for path in (f"{API}?reference=doc-1", f"{API}/J-any"):
        async with th.request("GET", path) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "120"
    # All used up: calls are served again, and no job came of the faulted submission.
    assert (await th.call("GET", f"{API}?reference=doc-1")) == (200, {"jobs": []})
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
    hung = asyncio.ensure_future(th.call("GET", f"{API}/J-any", timeout_s=10))
    await asyncio.sleep(0.2)
    assert not hung.done()
    await th.configure(reset=True)
    status, body = await asyncio.wait_for(hung, 2)
    assert status == 503
    assert body["exceptions"]


async def test_accept_then_hang_creates_the_job() -> None:
    running = await start(sim.SimConfig(processing_s_per_document=0.02))
    try:
        await running.login()
        await running.configure(accept_then_hang={"count": 1})
        with pytest.raises(TimeoutError):
            await running.submit("doc-1", timeout_s=0.3)
        status, found = await running.call("GET", API, params={"reference": "doc-1"})
        assert status == 200
        (job,) = found["jobs"]
        _, final = await running.wait_final(job["jobId"])
        assert final["status"] == "COMPLETED"
        stats = await running.stats()
        assert (stats["calls"]["submitBatch"], stats["jobs"]) == (1, 1)
    finally:
        began = time.monotonic()
        await running.stop()
    assert time.monotonic() - began < 3


async def test_business_failure_is_a_200_without_a_job(th: Simulator) -> None:
    await th.configure(business_failure={"count": 2})
    status, body = await th.submit("doc-1")
    assert status == 200
    assert "jobId" not in body
    assert body["exceptions"][0]["code"]
    await th.configure(business_failure={"count": 1, "form": "jobMessages"})
    status, body = await th.submit("doc-1")
    assert status == 200
    assert "jobId" not in body
    assert body["jobMessages"][0]["type"] == "E"
    assert (await th.submit("doc-1"))[0] == 200
    stats = await th.stats()
    assert (stats["jobs"], stats["duplicate_submissions"]) == (1, 0)


async def test_rate_limit_answers_429_and_caps_the_peak(th: Simulator) -> None:
    await th.configure(rate_limit_per_s=5)

    async def one() -> tuple[int, str | None]:
        async with th.request("GET", f"{API}?reference=doc-1") as r:
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


async def test_json_prefix(th: Simulator) -> None:
    await th.configure(json_prefix=True)
    async with th.session.post(
        f"{th.url}/one/oauth2Server/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT[0]}
        | {"client_secret": CLIENT[1]},
        headers={"Authorization": basic(*CLIENT)},
    ) as r:
        text = await r.text()
    assert text.startswith("while(1);")
    assert json.loads(text.removeprefix("while(1);"))["token_type"] == "bearer"
    async with th.request("GET", f"{API}/J-nope") as r:
        assert r.status == 404
        assert (await r.text()).startswith("while(1);{")


async def test_unknown_knob_is_refused(th: Simulator) -> None:
    async with th.session.post(f"{th.url}/_sim/config", json={"latency": 1}) as r:
        assert r.status == 400
    async with th.session.post(f"{th.url}/_sim/config", json={"failure_ratio": 2}) as r:
        assert r.status == 400


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
        assert line["job_id"] == job_id
        assert line["batch_name"] == "0b6f3c1e-batch"
        assert line["batch_config_res_id"] == BATCH_CONFIG
        assert abs(line["submitted_at"] - time.time()) < 5  # wall clock, not monotonic
        assert [t["correlationReference"] for t in line["transactions"]] == ["doc-1", "doc-2"]
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
        _, found = await second.call("GET", API, params={"reference": "doc-2"})
        assert [j["jobId"] for j in found["jobs"]] == [job_id]
        _seen, final = await second.wait_final(job_id)
        assert final["status"] == "COMPLETED"
        assert [t["status"] for t in final["transactions"]] == ["COMPLETED", "COMPLETED"]
        stats = await second.stats()
        assert (stats["jobs"], stats["transactions"], stats["duplicate_submissions"]) == (1, 2, 0)
        assert stats["calls"]["submitBatch"] == 0  # call counters start again
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
        status, _ = await first.call("POST", f"{API}/generateDocument", json=transaction("doc-2"))
        assert status == 200
    finally:
        await first.stop()

    second = await start(config, state_file)
    try:
        await second.login()
        stats = await second.stats()
        assert (stats["jobs"], stats["transactions"], stats["duplicate_submissions"]) == (2, 2, 0)
        _, found = await second.call("GET", API, params={"reference": "doc-2"})
        assert [j["batchName"] for j in found["jobs"]] == [""]
        _, body = await second.submit("doc-1")
        stats = await second.stats()
        assert stats["duplicate_submissions"] == 1
        assert stats["duplicates"] == {"doc-1": 1}
        assert (stats["jobs"], stats["transactions"]) == (3, 3)
        _, found = await second.call("GET", API, params={"reference": "doc-1"})
        assert len(found["jobs"]) == 2
        assert found["jobs"][1]["jobId"] == body["jobId"]
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
    with state_file.open("ab") as f:  # killed halfway through writing a job
        f.write(b'{"job_id": "J-torn", "batch_name": "b", "batchConf')

    with caplog.at_level(logging.WARNING):
        second = await start(state_file=state_file)
    try:
        assert "torn" in caplog.text
        await second.login()
        assert (await second.call("GET", f"{API}/{body['jobId']}"))[0] == 200
        assert (await second.call("GET", f"{API}/J-torn"))[0] == 404
        assert (await second.submit("doc-2"))[0] == 200
    finally:
        await second.stop()
    # The torn tail was cut off, so the job written after it is a line of its own.
    assert [
        line["transactions"][0]["correlationReference"] for line in state_lines(state_file)
    ] == [
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
