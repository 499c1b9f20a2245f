"""The Thunderhead wire contract (docs/thunderhead.md), case by case, per target.

Each case goes through OMS's real ThunderheadClient unless it checks a property of
the wire itself, which goes through aiohttp (``raw``). Cases that need a simulator
knob or its stats, or that could lock a real tenant's client out, skip against a
real tenant (``target.simulator()``).
"""

from __future__ import annotations

import base64
import binascii

import msgspec
import pytest

from oms import exceptions
from oms.thunderhead import Envelope, ThunderheadClient
from oms.thunderhead.types import Channel
from tests.contract import targets
from tests.contract.targets import Raw, Target, new_batch_name, new_reference, transaction


def primary_channel(envelope: Envelope) -> Channel:
    """The envelope's ``primaryChannel`` (not the older releases' ``masterChannel``)."""
    channel = envelope.primary_channel
    assert channel is not None, f"an envelope without primaryChannel: {envelope!r}"
    return channel


def assert_channel(channel: Channel) -> None:
    """The swagger's Channel: named and typed (an int64 code)."""
    assert channel.document_name, channel
    assert channel.mime_type, channel
    assert type(channel.channel_type) is int, channel


async def submit(
    target: Target, client: ThunderheadClient, count: int
) -> tuple[str, str, list[str]]:
    """Submit ``count`` transactions as one batch: (job id, batch name, references)."""
    references = [new_reference() for _ in range(count)]
    batch_name = new_batch_name()
    job_id = await client.submit_batch(
        target.batch_config_res_id, batch_name, [transaction(r) for r in references]
    )
    return job_id, batch_name, references


# --- 1, 2: token --------------------------------------------------------------


async def test_client_gets_a_token_with_the_configured_client_auth(target: Target) -> None:
    async with target.client() as client:
        assert await client.ping()
        assert client.credentials_error is None


async def test_token_answer_is_a_bearer_token(target: Target, raw: Raw) -> None:
    answer = await raw.token_answer(*targets.token_request(target.settings))
    assert answer.status == 200, answer.text
    body = answer.json()
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert body["token_type"].lower() == "bearer"  # case-insensitive, RFC 6749 §7.1
    if "expires_in" in body:  # optional, RFC 6749 §5.1
        assert body["expires_in"] > 0


@pytest.mark.parametrize("client_auth", ["basic", "form"])
async def test_simulator_accepts_only_the_client_auth_it_is_told(
    target: Target, client_auth: str
) -> None:
    await target.configure(client_auth=client_auth)
    other = "form" if client_auth == "basic" else "basic"
    async with target.client(client_auth=client_auth) as client:
        assert await client.ping()
    async with target.client(client_auth=other) as client:
        assert not await client.ping()
        assert "invalid_client" in (client.credentials_error or "")


async def test_two_client_auth_methods_at_once_are_invalid_request(
    target: Target, raw: Raw
) -> None:
    target.simulator()
    form, _ = targets.token_request(target.settings, "form")
    _, headers = targets.token_request(target.settings, "basic")
    answer = await raw.token_answer(form, headers)
    assert answer.status == 400, answer.text
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize("client_auth", ["basic", "form"])
async def test_wrong_credentials_are_invalid_client(
    target: Target, raw: Raw, client_auth: str
) -> None:
    target.simulator()  # wrong secrets against a real tenant risk a lockout
    await target.configure(client_auth="either")
    wrong = msgspec.structs.replace(target.settings, client_secret="not-the-secret")
    answer = await raw.token_answer(*targets.token_request(wrong, client_auth))
    assert answer.status == 401, answer.text
    assert answer.json()["error"] == "invalid_client"
    if client_auth == "basic":
        assert answer.headers["WWW-Authenticate"].lower().startswith("basic")
    async with target.client(client_secret="not-the-secret", client_auth=client_auth) as client:
        assert not await client.ping()
        assert "invalid_client" in (client.credentials_error or "")


# --- 3, 4, 5: submitBatch, job status, find by reference ------------------------


async def test_submitted_batch_becomes_final_with_its_references(target: Target, raw: Raw) -> None:
    async with target.client() as client:
        job_id, batch_name, references = await submit(target, client, 2)
        assert job_id.isascii()
        assert job_id.isdigit()
        job = await targets.wait_final(target, client, job_id)

    assert job.job_id == job_id
    assert job.batch_name == batch_name
    assert sorted(t.correlation_reference for t in job.transactions) == sorted(references)
    assert all(t.status in targets.FINAL for t in job.transactions), job
    completed = [t for t in job.transactions if t.status == "COMPLETED"]
    if target.is_simulator:
        assert job.status == "COMPLETED", job
        assert len(completed) == 2
    if job.status == "COMPLETED":
        assert completed, job
    else:
        assert not completed, job
        assert any(m.msg_type == "E" for m in job.job_messages), job
    for tx in completed:
        assert tx.envelopes, tx
        for envelope in tx.envelopes:
            channel = primary_channel(envelope)
            assert_channel(channel)
            assert channel.part_location, channel  # no data asked for: where to fetch it
    for tx in job.transactions:
        if tx.status == "FAILED":
            assert tx.exceptions or any(m.msg_type == "E" for m in tx.job_messages), tx

    # The wire: a numeric jobId, and each transaction's reference under the field.
    answer = await raw.api("GET", f"/{job_id}")
    assert answer.status == 200, answer.text
    body = answer.json()
    assert type(body["jobId"]) is int
    assert str(body["jobId"]) == job_id
    field = target.settings.correlation_field
    assert sorted(t[field] for t in body["transactions"]) == sorted(references)


async def test_find_by_reference_finds_the_batch(target: Target) -> None:
    async with target.client() as client:
        job_id, batch_name, references = await submit(target, client, 2)
        found = await client.find_by_reference(references[1])
        unknown = await client.find_by_reference(new_reference())
    mine = [job for job in found if job.batch_name == batch_name]
    assert [job.job_id for job in mine] == [job_id]
    assert mine[0].status, mine
    assert unknown == []


@pytest.mark.parametrize("params", [{}, {"reference": "  "}], ids=["missing", "blank"])
async def test_find_by_reference_needs_a_reference(
    target: Target, raw: Raw, params: dict[str, str]
) -> None:
    answer = await raw.api("GET", params=params)
    assert answer.status == 400, answer.text


async def test_unknown_job_is_rejected_404(target: Target) -> None:
    # Below the simulator's first id (milliseconds since the epoch); not a tenant's.
    async with target.client() as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await client.job_status("999999999999")
    assert caught.value.status == 404
    assert caught.value.messages, "a 404 of the job API carries exceptions"


# --- 6: generateDocument ------------------------------------------------------


@pytest.mark.parametrize("include", [False, True], ids=["reference", "data"])
async def test_generate_document_through_the_client(target: Target, include: bool) -> None:
    async with target.client() as client:
        document = await client.generate_document(
            target.batch_config_res_id,
            transaction(new_reference()),
            include_document_data=include,
        )
    assert document.envelopes
    for envelope in document.envelopes:
        channel = primary_channel(envelope)
        assert_channel(channel)
        if include:
            assert base64.b64decode(channel.data, validate=True)
        else:
            assert channel.part_location, channel
            assert not channel.data, channel


@pytest.mark.parametrize("include", ["false", "true"])
async def test_generate_document_wire(target: Target, raw: Raw, include: str) -> None:
    reference = new_reference()
    request = {
        "batchConfigResId": target.batch_config_res_id,
        "transactionData": targets.b64_json(targets.wire_transaction(target, reference)),
        "transactionDataType": "application/json",
        "transactionRange": 1,
    }
    answer = await raw.api(
        "POST", "/generateDocument", params={"includeDocumentData": include}, json=request
    )
    assert answer.status == 200, answer.text
    body = answer.json()
    assert "jobId" not in body
    assert target.settings.correlation_field not in body
    assert not body.get("exceptions"), body
    assert body["envelopes"], body
    for envelope in body["envelopes"]:
        channel = envelope["primaryChannel"]
        if include == "true":
            try:
                assert base64.b64decode(channel["data"], validate=True)
            except binascii.Error:
                pytest.fail(f"primaryChannel.data is not Base64: {channel['data']!r}")
        else:
            assert not channel.get("data"), channel
            assert channel["partLocation"], channel


# --- 7, 8, 9: business failure, while(1);, 413 ----------------------------------


@pytest.mark.parametrize(("form", "key"), [("exceptions", "msg"), ("jobMessages", "msgText")])
async def test_business_failure_in_a_200_is_rejected(target: Target, form: str, key: str) -> None:
    await target.configure(business_failure={"count": 1, "form": form})
    async with target.client() as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await submit(target, client, 2)
    rejected = caught.value
    assert rejected.status == 200
    texts = [str(m[key]) for m in rejected.messages if key in m]
    assert any("simulated business failure" in text for text in texts), rejected.messages
    assert "simulated business failure" in rejected.reason
    assert (await target.stats())["jobs"] == 0


@pytest.mark.parametrize("prefix", [True, False], ids=["default-prefix", "no-prefix"])
async def test_json_prefix_on_the_wire_and_decoded(target: Target, raw: Raw, prefix: bool) -> None:
    if not prefix:
        await target.configure(json_prefix=False)
    else:
        target.simulator()  # the default under test is the simulator's
    token = await raw.token_answer(*targets.token_request(target.settings))
    found = await raw.api("GET", params={"reference": new_reference()})
    assert token.text.startswith(targets.JSON_PREFIX) is prefix, token.text
    assert found.text.startswith(targets.JSON_PREFIX) is prefix, found.text
    async with target.client() as client:
        job_id, batch_name, references = await submit(target, client, 1)
        job = await client.job_status(job_id)
        jobs = await client.find_by_reference(references[0])
    assert job.batch_name == batch_name
    assert [j.job_id for j in jobs] == [job_id]


async def test_request_over_the_cap_is_rejected_413(target: Target) -> None:
    await target.configure(max_request_bytes=256)
    async with target.client() as client:
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await submit(target, client, 2)
    assert caught.value.status == 413
    stats = await target.stats()
    assert stats["rejected_413"] == 1  # refused by the server, not by the client's own cap
    assert stats["jobs"] == 0


# --- 10, 11: batchConfigResId forms, the correlation field ------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["integer", "digit-string"])
async def test_submit_batch_wire(target: Target, raw: Raw, as_text: bool) -> None:
    res_id = target.batch_config_res_id
    batch_name = new_batch_name()
    reference = new_reference()
    request = {
        "batchConfigResId": str(res_id) if as_text else res_id,
        "batchName": batch_name,
        "transactionDataType": "application/json",
        "transactionData": targets.b64_json([targets.wire_transaction(target, reference)]),
    }
    answer = await raw.api("POST", "/submitBatch", json=request)
    assert answer.status == 200, answer.text
    job_id = answer.json()["jobId"]
    assert type(job_id) is int, answer.text
    async with target.client() as client:
        job = await client.job_status(str(job_id))
    assert job.batch_name == batch_name
    assert [t.correlation_reference for t in job.transactions] == [reference]


async def test_correlation_field_is_a_setting(target: Target, raw: Raw) -> None:
    field = "omsDocumentId"
    await target.configure(correlation_field=field)
    async with target.client(correlation_field=field) as client:
        job_id, batch_name, references = await submit(target, client, 2)
        job = await targets.wait_final(target, client, job_id)
        found = await client.find_by_reference(references[0])
    assert job.batch_name == batch_name
    assert sorted(t.correlation_reference for t in job.transactions) == sorted(references)
    assert [j.job_id for j in found] == [job_id]
    answer = await raw.api("GET", f"/{job_id}")
    assert answer.status == 200, answer.text
    for tx in answer.json()["transactions"]:
        assert tx[field] in references
        assert "correlationReference" not in tx


async def test_correlation_field_mismatch_is_refused(target: Target) -> None:
    await target.configure(correlation_field="omsDocumentId")
    async with target.client() as client:  # still the default correlationReference
        with pytest.raises(exceptions.ThunderheadRejected) as caught:
            await submit(target, client, 1)
    assert caught.value.status == 400
    assert (await target.stats())["jobs"] == 0
