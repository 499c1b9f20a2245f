"""CloudEvents 1.0 over Kafka, binary content mode (the spec's Kafka protocol binding).

Attributes travel as ``ce_*`` headers, the data is the record value as JSON with
``content-type: application/json``, and the record key is the document id, so
every event of one document lands on one partition, in order. A W3C
``traceparent`` header carries the request's trace id when there is one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class CloudEvent(NamedTuple):
    """One event to send: its CloudEvents attributes, its data, where it goes."""

    id: uuid.UUID
    type: str
    subject: str
    time: datetime
    data: bytes  # JSON
    trace_id: str | None
    topic: str
    key: str  # the partitioning key: the document id


class KafkaRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def to_record(event: CloudEvent, source: str) -> KafkaRecord:
    """The Kafka record announcing ``event``, ``source`` being OMS's ``ce_source``."""
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", str(event.id).encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", _rfc3339(event.time).encode()),
        ("ce_subject", event.subject.encode()),
        ("content-type", CONTENT_TYPE),
    ]
    traceparent = _traceparent(event)
    if traceparent is not None:
        headers.append(("traceparent", traceparent.encode()))
    return KafkaRecord(event.topic, event.key.encode(), event.data, headers)


def attributes(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """The CloudEvents attributes of a received record, without the ``ce_`` prefix."""
    return {name[3:]: value.decode() for name, value in headers if name.startswith("ce_")}


def _rfc3339(time: datetime) -> str:
    return time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _traceparent(event: CloudEvent) -> str | None:
    """``00-<trace id>-<span id>-01``; the span id is derived from the event id."""
    trace_id = (event.trace_id or "").lower()
    if not _TRACE_ID.match(trace_id) or trace_id == "0" * 32:
        return None
    span_id = event.id.hex[-16:]  # the random tail of a UUIDv7
    if span_id == "0" * 16:
        span_id = "0" * 15 + "1"
    return f"00-{trace_id}-{span_id}-01"
