"""Requests of the Thunderhead simulator's API: read, decoded and checked, or a 4xx.

The checks follow docs/thunderhead.md: numeric ids as integers or strings of digits,
transactions carrying the correlation field, the body cap. Every refusal carries
``exceptions`` in the public shape.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from aiohttp import web

from oms.sim import _thunderhead_gate as gate
from oms.sim import _thunderhead_jobs as job_model
from oms.sim import _thunderhead_shapes as shapes
from oms.sim._thunderhead_config import SimConfig

JSON = "application/json"
XML = "application/xml"
_Problem = shapes.Problem


class _Property(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: str


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    batchConfigResId: int | str
    batchName: str
    transactionDataType: str
    transactionData: str
    projectId: Annotated[int, msgspec.Meta(ge=0)] | None = None
    properties: list[_Property] | None = None


class DocumentRequest(msgspec.Struct, forbid_unknown_fields=True):
    batchConfigResId: int | str
    transactionData: str
    transactionDataType: str = XML
    transactionRange: int | str = 1
    projectId: Annotated[int, msgspec.Meta(ge=0)] | None = None
    properties: list[_Property] | None = None


_batch_decoder = msgspec.json.Decoder(BatchRequest)
_document_decoder = msgspec.json.Decoder(DocumentRequest)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_object_decoder = msgspec.json.Decoder(dict[str, Any])


def _bad_request(problem: shapes.Problem, msg: str) -> gate.Answer:
    return gate.refuse(400, problem, msg)


async def read_body(request: web.Request, state: gate.State) -> bytes:
    """The body, or a 413 once it is over ``max_request_bytes``.

    Read to the end either way (keeping no more than the cap), so the client gets
    our 413 rather than a connection reset while it is still sending.
    """
    cap = state.config.max_request_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
    if size > cap:
        state.stats.rejected_413 += 1
        raise gate.refuse(413, _Problem.REQUEST_TOO_LARGE, f"request body over {cap} bytes")
    return b"".join(chunks)


def accept_batch(
    config: SimConfig, body: bytes
) -> tuple[BatchRequest, int, list[job_model.Transaction]]:
    """The batch, its Template Selector id and its transactions; a 400 if unusable."""
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad_request(_Problem.INVALID_REQUEST, str(exc)) from None
    res_id = _batch_config(config, batch.batchConfigResId)
    if batch.transactionDataType != JSON:
        raise _bad_request(
            _Problem.INVALID_REQUEST,
            f"unsupported transactionDataType {batch.transactionDataType!r}",
        )
    raws = _decode(_raw_list_decoder, _base64(batch.transactionData), "a JSON array")
    if not raws:
        raise _bad_request(_Problem.INVALID_TRANSACTION_DATA, "transactionData holds none")
    transactions = []
    for raw in raws:
        tx = _decode(_object_decoder, raw, "a JSON object")
        reference = _reference(tx, config.correlation_field)
        if reference is None:
            raise _bad_request(
                _Problem.INVALID_TRANSACTION_DATA,
                f"a transaction has no {config.correlation_field}",
            )
        transactions.append(job_model.Transaction(reference, _channel(tx)))
    marker = config.reject_marker
    if marker is not None and any(marker in bytes(raw).decode(errors="replace") for raw in raws):
        raise _bad_request(
            _Problem.INVALID_TRANSACTION_DATA, "transaction data invalid for the template"
        )
    return batch, res_id, transactions


class Document(msgspec.Struct, frozen=True):
    """A generateDocument call, checked."""

    include_data: bool
    data: bytes
    reference: str | None
    """The correlation value of JSON data; None for XML, which is opaque here."""
    channel: str


def accept_document(config: SimConfig, body: bytes, query: Mapping[str, str]) -> Document:
    """The generateDocument call of this body and query; a 400 if unusable."""
    include = query.get("includeDocumentData")
    if include not in ("true", "false"):
        raise _bad_request(_Problem.INVALID_REQUEST, "includeDocumentData must be true or false")
    try:
        document = _document_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad_request(_Problem.INVALID_REQUEST, str(exc)) from None
    _batch_config(config, document.batchConfigResId)
    _positive(document.transactionRange, "transactionRange")
    if document.transactionDataType not in (JSON, XML):
        raise _bad_request(
            _Problem.INVALID_REQUEST,
            f"unsupported transactionDataType {document.transactionDataType!r}",
        )
    data = _base64(document.transactionData)
    if document.transactionDataType == XML:
        return Document(include == "true", data, None, "")
    tx = _decode(_object_decoder, data, "one JSON object")
    reference = _reference(tx, config.correlation_field)
    return Document(include == "true", data, reference, _channel(tx))


def _positive(value: int | str, name: str) -> int:
    """A positive integer sent as a JSON integer or a string of digits; else a 400."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise _bad_request(_Problem.INVALID_REQUEST, f"{name} must be a positive integer")
        value = int(value)
    if value <= 0:
        raise _bad_request(_Problem.INVALID_REQUEST, f"{name} must be a positive integer")
    return value


def _batch_config(config: SimConfig, value: int | str) -> int:
    res_id = _positive(value, "batchConfigResId")
    if config.batch_config_ids is not None and res_id not in config.batch_config_ids:
        raise _bad_request(_Problem.UNKNOWN_BATCH_CONFIG, f"unknown batchConfigResId {res_id}")
    return res_id


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise _bad_request(
            _Problem.INVALID_TRANSACTION_DATA, "transactionData is not Base64"
        ) from None


def _decode(decoder: msgspec.json.Decoder[Any], data: Any, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise _bad_request(
            _Problem.INVALID_TRANSACTION_DATA, f"transactionData must hold {what}: {exc}"
        ) from None


def _reference(tx: dict[str, Any], field: str) -> str | None:
    """The transaction's correlation value, if it is a non-blank string."""
    value = tx.get(field)
    return value if isinstance(value, str) and value.strip() else None


def _channel(tx: dict[str, Any]) -> str:
    value = tx.get("channel")
    return value if isinstance(value, str) else ""
