"""The public shapes the Thunderhead simulator answers in (docs/thunderhead.md, "Shapes").

Exceptions, job messages and envelopes are built here only, so every answer of the
simulator, error or not, carries them the one way the vendor's swagger describes.
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import itertools
import time
from typing import Any, Literal
from urllib.parse import quote

import msgspec


class Problem(enum.Enum):
    """What went wrong, as ``(classId, className)`` of a business exception."""

    INVALID_REQUEST = (1001, "InvalidRequestException")
    UNKNOWN_BATCH_CONFIG = (1002, "UnknownTemplateSelectorException")
    INVALID_TRANSACTION_DATA = (1003, "InvalidTransactionDataException")
    REQUEST_TOO_LARGE = (1004, "RequestTooLargeException")
    NOT_FOUND = (1005, "NotFoundException")
    INVALID_TOKEN = (1006, "InvalidTokenException")
    RATE_LIMITED = (1007, "TooManyRequestsException")
    SERVER_ERROR = (1008, "InternalServerException")
    UNAVAILABLE = (1009, "ServiceUnavailableException")
    INJECTED = (1010, "SimulatedFaultException")
    BATCH_REJECTED = (2001, "BatchRejectedException")
    COMPOSITION_FAILED = (2002, "CompositionException")


class BusinessException(msgspec.Struct, frozen=True):
    classId: int
    id: int
    className: str
    msg: str


class JobMessage(msgspec.Struct, frozen=True):
    msgType: Literal["I", "W", "E"]
    msgText: str
    msgDate: str
    """ISO-8601, UTC."""


class Channel(msgspec.Struct, frozen=True, omit_defaults=True):
    channelType: int
    channelName: str
    documentName: str
    mimeType: str
    partLocation: str | None = None
    data: str | None = None
    """Base64 of the document, only when the caller asked for ``includeDocumentData``."""


class Envelope(msgspec.Struct, frozen=True):
    primaryChannel: Channel


class ChannelType(enum.IntEnum):
    HTML = 1
    PRINT = 2
    SMS = 3
    TEXT = 4
    TML = 5
    XML = 6
    WORDML = 7
    XSLFO = 8


_CHANNEL_TYPES = {
    "print": ChannelType.PRINT,
    "email": ChannelType.HTML,
    "sms": ChannelType.SMS,
    "archive": ChannelType.PRINT,  # an archived copy is the printable PDF
}
_FORMATS = {  # (mimeType, file extension, fake content)
    ChannelType.HTML: ("text/html", "html", b"<html><body>simulated {}</body></html>"),
    ChannelType.SMS: ("text/plain", "txt", b"simulated {}"),
    ChannelType.PRINT: ("application/pdf", "pdf", b"%PDF-1.4\n% simulated {}\n%%EOF\n"),
}

_exception_ids = itertools.count(1)
# Fixed once, so a date derived from the same monotonic time reads the same every time.
_WALL_MINUS_MONOTONIC = time.time() - time.monotonic()


def exception(problem: Problem, msg: str, exception_id: int | None = None) -> BusinessException:
    """A business exception; ``exception_id`` keeps it the same on every read of a job."""
    class_id, class_name = problem.value
    if exception_id is None:
        exception_id = next(_exception_ids)
    return BusinessException(classId=class_id, id=exception_id, className=class_name, msg=msg)


def exceptions(problem: Problem, msg: str) -> dict[str, Any]:
    """The body of an error answer of the job API."""
    return {"exceptions": [exception(problem, msg)]}


def stable_id(*parts: object) -> int:
    """A 48-bit id that is the same whenever it is derived from the same parts."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:6], "big")


def message(msg_type: Literal["I", "W", "E"], text: str, at: float) -> JobMessage:
    """A job message dated ``at``, a ``time.monotonic()`` time."""
    wall = at + _WALL_MINUS_MONOTONIC
    date = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    iso = date.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return JobMessage(msgType=msg_type, msgText=text, msgDate=iso)


def channel_type(channel: str) -> ChannelType:
    """The channel type of OMS's transaction ``channel``; PRINT when it is unknown."""
    return _CHANNEL_TYPES.get(channel, ChannelType.PRINT)


def envelope(stem: str, channel: str, *, location: str, with_data: bool = False) -> Envelope:
    """One envelope of one document named after ``stem``: where to fetch it, or the data.

    ``location`` is the part location's prefix; the document's name completes it.
    """
    kind = channel_type(channel)
    mime_type, extension, content = _FORMATS[kind]
    name = f"{stem}.{extension}"
    data = None
    if with_data:
        data = base64.b64encode(content.replace(b"{}", stem.encode())).decode()
    return Envelope(
        Channel(
            channelType=int(kind),
            channelName=kind.name,
            documentName=name,
            mimeType=mime_type,
            partLocation=None if with_data else f"{location}/{quote(name, safe='')}",
            data=data,
        )
    )
