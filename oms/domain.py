"""Domain types: what crosses OMS's boundaries, as msgspec Structs.

This module imports nothing of OMS, so every layer can depend on it.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class Status(enum.StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    SUBMITTED = "SUBMITTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Priority(enum.StrEnum):
    URGENT = "urgent"
    NORMAL = "normal"
    BULK = "bulk"

    @property
    def rank(self) -> int:
        """Stored as a small integer so ``ORDER BY priority`` puts urgent first."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _PRIORITY_BY_RANK[rank]


_PRIORITY_RANK = {Priority.URGENT: 0, Priority.NORMAL: 1, Priority.BULK: 2}
_PRIORITY_BY_RANK = {rank: p for p, rank in _PRIORITY_RANK.items()}


class Channel(enum.StrEnum):
    PRINT = "print"
    EMAIL = "email"
    SMS = "sms"
    ARCHIVE = "archive"


Code = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
ClientReference = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Language = Annotated[str, Meta(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]
Email = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Phone = Annotated[str, Meta(pattern=r"^\+?[0-9 ]{6,20}$")]
Line = Annotated[str, Meta(min_length=1, max_length=200)]


class Address(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    lines: Annotated[list[Line], Meta(min_length=1, max_length=6)]
    postcode: Annotated[str, Meta(max_length=20)] | None = None
    city: Annotated[str, Meta(max_length=100)] | None = None
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$")]


class Recipient(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Line
    address: Address | None = None
    email: Email | None = None
    phone: Phone | None = None


class DocumentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /v1/documents``.

    ``data`` is kept as raw JSON: OMS never looks inside the template's data, so
    it is size-checked and stored as it came, never decoded.
    """

    client_reference: ClientReference
    document_type: Code
    channel: Channel
    language: Language
    brand: Code
    priority: Priority = Priority.NORMAL
    recipient: Recipient
    data: Annotated[
        msgspec.Raw,
        Meta(
            description=(
                "The template's data: a JSON object, size-capped (intake.max_data_bytes). "
                "PostgreSQL stores it as jsonb, so no string in it may hold \\u0000 "
                "and numbers must fit jsonb's numeric: such data is refused with 422."
            ),
            extra_json_schema={"type": "object"},
        ),
    ] = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


class BatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/documents/batch``. Items are decoded one by one."""

    documents: list[
        Annotated[
            msgspec.Raw,
            Meta(extra_json_schema={"$ref": "#/components/schemas/DocumentRequest"}),
        ]
    ]


class Links(msgspec.Struct, frozen=True):
    self: str
    cancel: str


class Accepted(msgspec.Struct, frozen=True):
    """The answer to an accepted document request."""

    id: uuid.UUID
    status: Status
    client_reference: str
    created_at: datetime
    links: Links


class TimelineEntry(msgspec.Struct, frozen=True):
    at: datetime
    actor: str
    from_status: Status | None
    to_status: Status
    detail: dict[str, Any] | None = None


class DocumentError(msgspec.Struct, frozen=True):
    reason: str
    detail: str | None = None
    messages: list[dict[str, Any]] = []


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A document request as its source system sees it."""

    id: uuid.UUID
    client_reference: str
    status: Status
    priority: Priority
    document_type: str
    channel: Channel
    language: str
    brand: str
    attempts: int
    next_attempt_at: datetime | None
    thunderhead_job_id: str | None
    result: dict[str, Any] | None
    last_error: DocumentError | None
    created_at: datetime
    updated_at: datetime
    links: Links | None = None  # set by the HTTP layer, which knows the paths
    timeline: list[TimelineEntry] | None = None


class DocumentPage(msgspec.Struct, frozen=True):
    items: list[Document]
    next_cursor: str | None


class BatchItemResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item's outcome in a batch: ``status`` is the HTTP status it would have had."""

    index: int
    status: int
    document: Accepted | None = None
    problem: dict[str, Any] | None = None


class BatchResult(msgspec.Struct, frozen=True):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


class DocumentRequested(msgspec.Struct, frozen=True, tag="oms.document.requested"):
    """Event: a document request was stored and awaits processing."""

    document_id: uuid.UUID
    source_system: str
    client_reference: str
    priority: Priority
    document_type: str
    channel: Channel
    trace_id: str

    @property
    def priority_rank(self) -> int:
        return self.priority.rank

    @property
    def fairness_key(self) -> str:
        return self.source_system


class DocumentSubmitted(msgspec.Struct, frozen=True, tag="oms.document.submitted"):
    """Event: Thunderhead accepted the document in a batch job; monitoring polls it."""

    document_id: uuid.UUID
    source_system: str
    client_reference: str
    priority: Priority
    job_id: str
    batch_id: uuid.UUID
    trace_id: str

    @property
    def priority_rank(self) -> int:
        return self.priority.rank

    @property
    def fairness_key(self) -> str:
        return self.source_system


class Output(msgspec.Struct, frozen=True):
    """One produced part of a document, as Thunderhead reported it."""

    channel: str
    document_name: str
    mime_type: str
    part_location: str


class DocumentCompleted(msgspec.Struct, frozen=True, tag="oms.document.completed"):
    """Event (Event Hub): Thunderhead produced the document."""

    document_id: uuid.UUID
    source_system: str
    client_reference: str
    status: Literal["COMPLETED"]
    job_id: str
    outputs: list[Output]


class DocumentFailed(msgspec.Struct, frozen=True, tag="oms.document.failed"):
    """Event (Event Hub): the document will not be produced."""

    document_id: uuid.UUID
    source_system: str
    client_reference: str
    status: Literal["FAILED"]
    reason: str
    detail: str | None = None
    messages: list[dict[str, Any]] = []


class DocumentCancelled(msgspec.Struct, frozen=True, tag="oms.document.cancelled"):
    """Event: a document request was cancelled before Thunderhead had it."""

    document_id: uuid.UUID
    source_system: str
    client_reference: str
    status: Literal["CANCELLED"]
    cancelled_by: str


Event = (
    DocumentRequested | DocumentSubmitted | DocumentCompleted | DocumentFailed | DocumentCancelled
)
"""Everything OMS announces: each event names itself by its tag (its CloudEvents ``type``)."""


def event_type(event: Event | type[Event]) -> str:
    """``oms.document.requested`` and so on: the event Struct's tag, said nowhere else."""
    cls = event if isinstance(event, type) else type(event)
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): millisecond time prefix, then randomness."""
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # variant
    return uuid.UUID(int=value)
