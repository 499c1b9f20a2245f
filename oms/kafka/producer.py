"""The Kafka producer OMS publishes with, and what a failed send means.

A failed send is either about Kafka (unreachable, no leader, timed out: the
same record will go through later, so it is retried without charging it) or
about the record itself (too large, a topic Kafka refuses: retrying cannot
help for long, so it is charged an attempt and ends in the error table).
"""

from __future__ import annotations

import logging

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from oms import config

logger = logging.getLogger(__name__)

# aiokafka's default, kept explicit: the embedded Tansu accepts far larger
# records (20 MB went through), a stock Kafka broker refuses above ~1 MB.
MAX_REQUEST_BYTES = 1_048_576
MAX_BATCH_BYTES = 262_144

UNAVAILABLE = "unavailable"
TOO_LARGE = "too_large"
TOPIC_REFUSED = "topic_refused"
REJECTED = "rejected"

_RECORD_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (kafka_errors.MessageSizeTooLargeError, TOO_LARGE),
    (kafka_errors.RecordTooLargeError, TOO_LARGE),
    (kafka_errors.RecordListTooLargeError, TOO_LARGE),
    (kafka_errors.InvalidTopicError, TOPIC_REFUSED),
    (kafka_errors.TopicAuthorizationFailedError, TOPIC_REFUSED),
    (kafka_errors.PolicyViolationError, REJECTED),
    (kafka_errors.CorruptRecordException, REJECTED),
    (kafka_errors.InvalidTimestampError, REJECTED),
    (kafka_errors.UnsupportedForMessageFormatError, REJECTED),
)


def bootstrap_servers(kafka: config.KafkaSettings) -> str:
    """The configured cluster, else the embedded broker's configured address."""
    return kafka.bootstrap_servers or f"{kafka.embedded_host}:{kafka.embedded_port}"


def create(kafka: config.KafkaSettings, *, embedded: bool) -> AIOKafkaProducer:
    """A producer with ``acks=all``; idempotent unless the broker is the embedded Tansu.

    (Tansu answers InitProducerId with an error, so idempotence is forced off there.)
    Not started: the caller starts it and owns its closing.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(kafka),
        client_id=kafka.client_id,
        acks="all",
        enable_idempotence=kafka.enable_idempotence and not embedded,
        request_timeout_ms=int(kafka.request_timeout_s * 1000),
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=MAX_BATCH_BYTES,
    )


def record_error_kind(exc: BaseException) -> str | None:
    """The kind of a failure specific to the record, or None when Kafka is the problem."""
    for error_type, kind in _RECORD_ERRORS:
        if isinstance(exc, error_type):
            return kind
    return None


async def close(producer: AIOKafkaProducer, deadline_s: float) -> None:
    """Stop a producer within ``deadline_s``, even when cancelled; errors only logged."""
    with anyio.move_on_after(deadline_s, shield=True):
        try:
            await producer.stop()
        except kafka_errors.KafkaError as exc:
            logger.debug("Kafka producer closed with an error", extra={"error": repr(exc)})


def describe(error: BaseException) -> str:
    """An error as one line for logs and the outbox row: its type, and its text if any."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
