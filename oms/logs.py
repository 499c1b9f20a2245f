"""JSON-lines logs with ECS field names; extras ride along under ``labels``-style keys.

Callers pass context through ``extra=`` (``document_id``, ``trace_id``, ``route``…);
request data and recipient details are never passed, so never logged.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiokafka logs an ERROR per reconnect attempt while Kafka is down; the relay
    # reports the outage itself (once per failure, plus readiness and metrics).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
