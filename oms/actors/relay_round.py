"""One round of the outbox relay: which rows went out, which failed and why.

Per document, order holds: once a row fails, the later rows of its key are not
sent (or, if already in flight, not marked published), so they go again after it.
"""

from __future__ import annotations

import math

from oms.kafka import cloudevents
from oms.store import outbox


class Round:
    """What happened to one batch: delivered rows, rows that failed, Kafka's failure."""

    def __init__(self) -> None:
        self.delivered: list[outbox.OutboxRow] = []
        self.failed: list[tuple[outbox.OutboxRow, str, str]] = []  # row, kind, error
        self.kafka_error: str | None = None
        self._first_failed: dict[str, int] = {}  # message key -> id of its first failed row

    def blocked(self, row: outbox.OutboxRow) -> bool:
        return row.id > self._first_failed.get(row.message_key, math.inf)

    def fail(self, row: outbox.OutboxRow, kind: str | None, error: str) -> None:
        """A row did not go out: charge it (``kind``) or not (Kafka's fault: ``None``)."""
        key = row.message_key
        self._first_failed[key] = min(self._first_failed.get(key, row.id), row.id)
        if kind is not None:
            self.failed.append((row, kind, error))
        elif self.kafka_error is None:
            self.kafka_error = error

    def failed_by_error(self) -> dict[tuple[str, str], list[outbox.OutboxRow]]:
        """Charged rows grouped by (kind, error): one statement charges each group."""
        groups: dict[tuple[str, str], list[outbox.OutboxRow]] = {}
        for row, kind, error in self.failed:
            groups.setdefault((kind, error), []).append(row)
        return groups

    def publishable(self) -> list[outbox.OutboxRow]:
        """Delivered rows not preceded by a failed row of their key."""
        return [row for row in self.delivered if not self.blocked(row)]


def cloud_event(row: outbox.OutboxRow) -> cloudevents.CloudEvent:
    """The neutral record the CloudEvents binding sends, made from an outbox row."""
    return cloudevents.CloudEvent(
        id=row.event_id,
        type=row.event_type,
        subject=row.subject,
        time=row.created_at,
        data=row.payload,
        trace_id=row.trace_id,
        topic=row.topic,
        key=row.message_key,
    )
