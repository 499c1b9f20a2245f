"""Thunderhead's wire format (docs/thunderhead.md), as OMS writes and reads it.

Python names are snake_case, the wire is camelCase (``rename="camel"``). Unknown
fields are ignored (msgspec's default) and statuses are plain strings, so a newer
Thunderhead that adds a field or a status does not make an answer undecodable.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Transaction(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One document to compose; ``correlation_reference`` is OMS's document id."""

    correlation_reference: str
    template_id: str
    template_version: int
    channel: str
    language: str
    brand: dict[str, Any]
    recipient: dict[str, Any]
    data: msgspec.Raw
    """An already-encoded JSON object, embedded as is (never decoded again)."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    channel: str = ""
    document_name: str = ""
    mime_type: str = ""
    part_location: str = ""


class JobException(msgspec.Struct, frozen=True, kw_only=True):
    code: str = ""
    message: str = ""


class JobMessage(msgspec.Struct, frozen=True, kw_only=True):
    type: str = ""
    """``I``, ``W`` or ``E`` (an error)."""
    text: str = ""


class TransactionStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    correlation_reference: str
    status: str
    """``PENDING``, ``RUNNING``, ``COMPLETED`` or ``FAILED`` today."""
    envelopes: tuple[Envelope, ...] = ()
    exceptions: tuple[JobException, ...] = ()


class JobStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    job_id: str
    status: str
    """``PENDING``, ``RUNNING``, ``COMPLETED`` or ``FAILED`` today."""
    batch_name: str = ""
    transactions: tuple[TransactionStatus, ...] = ()
    job_messages: tuple[JobMessage, ...] = ()


class JobRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A job holding a transaction with the reference asked for (reconciliation)."""

    job_id: str
    batch_name: str = ""
    status: str = ""


class GeneratedDocument(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    correlation_reference: str
    status: str
    envelopes: tuple[Envelope, ...] = ()
    job_id: str = ""
    """The one-transaction job Thunderhead recorded it as, if it says."""
