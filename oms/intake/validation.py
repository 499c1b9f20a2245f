"""Checks beyond the schema: channel needs, data size, and Reference Data.

Each failure names the field, so the source system knows what to fix.
"""

from __future__ import annotations

import msgspec

from oms import domain, exceptions
from oms.refdata import RefDataClient

_NUL = b"\\u0000"


def check_shape(request: domain.DocumentRequest, max_data_bytes: int) -> None:
    """What msgspec's types cannot say: per-channel recipient needs and the data's size."""
    data = bytes(request.data).lstrip()
    if not data.startswith(b"{"):
        raise exceptions.InvalidRequest("data", "must be a JSON object")
    if len(data) > max_data_bytes:
        raise exceptions.InvalidRequest(
            "data", f"is {len(data)} bytes; at most {max_data_bytes} are accepted", code="too_large"
        )
    # PostgreSQL's jsonb cannot hold U+0000; say so rather than fail the write.
    if _NUL in data:
        raise exceptions.InvalidRequest("data", "must not contain \\u0000 (NUL)")
    recipient = request.recipient
    if _NUL in msgspec.json.encode(recipient):
        raise exceptions.InvalidRequest("recipient", "must not contain \\u0000 (NUL)")
    needs = {
        domain.Channel.PRINT: ("recipient.address", recipient.address),
        domain.Channel.EMAIL: ("recipient.email", recipient.email),
        domain.Channel.SMS: ("recipient.phone", recipient.phone),
    }.get(request.channel)
    if needs is not None and needs[1] is None:
        raise exceptions.InvalidRequest(
            needs[0], f"is required for channel {request.channel.value}", code="required"
        )


async def check_references(refdata: RefDataClient, request: domain.DocumentRequest) -> None:
    """Document type, brand, and a template for channel and language, all active."""
    types = {t.code: t for t in await refdata.document_types()}
    doc_type = types.get(request.document_type)
    if doc_type is None:
        raise _unknown("document_type", f"unknown document type {request.document_type!r}")
    if not doc_type.active:
        raise _inactive("document_type", f"document type {request.document_type!r} is not active")

    brand = await refdata.brand(request.brand)
    if brand is None:
        raise _unknown("brand", f"unknown brand {request.brand!r}")
    if not brand.active:
        raise _inactive("brand", f"brand {request.brand!r} is not active")

    templates = [t for t in await refdata.templates(request.document_type) if t.active]
    for_channel = [t for t in templates if t.channel == request.channel.value]
    if not for_channel:
        raise _unknown(
            "channel",
            f"document type {request.document_type!r} has no active template "
            f"for channel {request.channel.value!r}",
        )
    for_language = [t for t in for_channel if t.language == request.language]
    if not for_language:
        raise _unknown(
            "language",
            f"document type {request.document_type!r} has no active {request.channel.value} "
            f"template in language {request.language!r}",
        )
    if not any(t.brand == request.brand for t in for_language):
        raise _unknown(
            "brand",
            f"document type {request.document_type!r} has no active {request.channel.value} "
            f"template in {request.language!r} for brand {request.brand!r}",
        )


def _unknown(field: str, reason: str) -> exceptions.UnknownReference:
    return exceptions.UnknownReference(field, reason, code="unknown")


def _inactive(field: str, reason: str) -> exceptions.UnknownReference:
    return exceptions.UnknownReference(field, reason, code="inactive")
