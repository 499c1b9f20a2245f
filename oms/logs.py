"""JSON-lines logs with ECS field names; extras ride along under ``labels``-style keys.

Callers pass context through ``extra=`` (``document_id``, ``trace_id``, ``route``…);
request data and recipient details are never passed, so never logged.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from oms import metrics

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_ECS_NAMES = {"trace_id": "trace.id", "document_id": "oms.document_id"}
_encode = msgspec.json.Encoder().encode


class EcsJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "@timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[_ECS_NAMES.get(key, f"oms.{key}")] = value
        if record.exc_info:
            entry["error.stack_trace"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(EcsJsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiokafka logs an ERROR per reconnect attempt while Kafka is down; the relay
    # reports the outage itself (once per failure, plus readiness and metrics).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


class _Kind:
    __slots__ = ("dropped", "seen", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.seen = 1
        self.dropped = 0


class RepeatLimit(logging.Filter):
    """At most ``burst`` lines of one kind per ``window_s``; the rest are counted.

    A kind is the logger and the message template (before its arguments), so
    "request failed: %s" under an overload is one kind however the errors read.
    The first line after a window in which lines were dropped says how many
    (``oms.suppressed``), and ``oms_log_lines_suppressed_total`` counts them, so
    an outage is visible without 200,000 identical lines. Errors always pass.
    """

    def __init__(self, burst: int = 10, window_s: float = 10.0, max_kinds: int = 1_000) -> None:
        super().__init__()
        self._burst = burst
        self._window_s = window_s
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, str], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        kind = self._kinds.get(key)
        if kind is None or now - kind.since >= self._window_s:
            if kind is None and len(self._kinds) >= self._max_kinds:
                self._kinds.clear()  # bounded: forget old kinds rather than grow
            if kind is not None and kind.dropped:
                record.__dict__["suppressed"] = kind.dropped  # shown as oms.suppressed
            self._kinds[key] = _Kind(now)
            return True
        kind.seen += 1
        if kind.seen <= self._burst:
            return True
        kind.dropped += 1
        metrics.LOG_LINES_SUPPRESSED.labels(record.name).inc()
        return False
