"""Thunderhead's wire format (docs/thunderhead.md), as OMS writes and reads it.

Python names are snake_case, the wire is camelCase (``rename="camel"``). Unknown
fields are ignored (msgspec's default) and statuses are plain strings, so a newer
Thunderhead that adds a field or a status does not make an answer undecodable.
Messages keep only the fields present (``omit_defaults``), so what OMS stores and
shows of them is what Thunderhead said, under Thunderhead's names.
"""

from __future__ import annotations

from typing import Any

import msgspec

CHANNEL_TYPES = {
    1: "HTML",
    2: "PRINT",
    3: "SMS",
    4: "TEXT",
    5: "TML",
    6: "XML",
    7: "WORDML",
    8: "XSLFO",
}
"""``channelType`` codes of the public swagger's channel object."""


class Transaction(msgspec.Struct, frozen=True, kw_only=True):
    """One document to compose; ``correlation_reference`` is OMS's document id.

    Written by the client as a JSON object in the tenant's data model, the reference
    under ``thunderhead.correlation_field``.
    """

    correlation_reference: str
    template_id: str
    template_version: int
    channel: str
    language: str
    brand: dict[str, Any]
    recipient: dict[str, Any]
    data: msgspec.Raw
    """An already-encoded JSON object, embedded as is (never decoded again)."""


class Channel(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One produced part (the swagger's primaryChannel / enclosureChannels item)."""

    channel_type: int | str | None = None
    channel_name: str = ""
    document_name: str = ""
    mime_type: str = ""
    part_location: str = ""
    data: str = ""
    """Base64 of the part, only when asked for with ``includeDocumentData=true``."""

    @property
    def type_name(self) -> str:
        """``PRINT``, ``HTML``… from the numeric code; the name or code if unknown."""
        if isinstance(self.channel_type, int):
            return CHANNEL_TYPES.get(self.channel_type, str(self.channel_type))
        return self.channel_name or (self.channel_type or "")


class Envelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    primary_channel: Channel | None = None
    enclosure_channels: tuple[Channel, ...] = ()
    master_channel: Channel | None = None  # the older releases' name [docs: S4, S5]
    slave_channels: tuple[Channel, ...] = ()

    def channels(self) -> list[Channel]:
        """Every part, the primary one first."""
        primary = self.primary_channel or self.master_channel
        rest = self.enclosure_channels or self.slave_channels
        return ([primary] if primary is not None else []) + list(rest)


class JobException(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """A business exception: ``{classId, id, className, msg}``."""

    class_id: int | str | None = None
    id: int | str | None = None
    class_name: str = ""
    msg: str = ""


class JobMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """``{msgType, msgText, msgDate}``; ``msgType`` is ``I``, ``W`` or ``E`` (an error)."""

    msg_type: str = ""
    msg_text: str = ""
    msg_date: str = ""


class TransactionStatus(msgspec.Struct, frozen=True, kw_only=True):
    correlation_reference: str
    status: str
    """``PENDING``, ``RUNNING``, ``COMPLETED`` or ``FAILED`` today."""
    envelopes: tuple[Envelope, ...] = ()
    exceptions: tuple[JobException, ...] = ()
    job_messages: tuple[JobMessage, ...] = ()


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: str
    """``PENDING``, ``RUNNING``, ``COMPLETED`` or ``FAILED`` today."""
    batch_name: str = ""
    transactions: tuple[TransactionStatus, ...] = ()
    job_messages: tuple[JobMessage, ...] = ()


class JobRef(msgspec.Struct, frozen=True, kw_only=True):
    """A job holding a transaction with the reference asked for (reconciliation)."""

    job_id: str
    batch_name: str = ""
    status: str = ""


class GeneratedDocument(msgspec.Struct, frozen=True, kw_only=True):
    """What generateDocument answered: no job id and no correlation field (public shape)."""

    envelopes: tuple[Envelope, ...] = ()
    job_messages: tuple[JobMessage, ...] = ()
    number_transactions: int = 0


def messages(*groups: tuple[JobException, ...] | tuple[JobMessage, ...]) -> list[dict[str, Any]]:
    """Exceptions and job messages as plain dicts under Thunderhead's own names."""
    return [msgspec.to_builtins(m) for group in groups for m in group]
