"""Every error OMS raises on purpose.

One base class, a docstring per class that doubles as its default message, and
structured fields where a caller needs more than text. The HTTP layer maps these
to RFC 9457 problem types in one place (``oms.http.problems``).
"""

from __future__ import annotations


class OmsError(Exception):
    """OMS failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(OmsError):
    """The configuration is invalid."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"configuration key {key!r}: {reason}")


class ComponentDied(OmsError):
    """A component whose policy is to stop OMS ended while OMS was running."""

    def __init__(self, names: str) -> None:
        self.names = names
        super().__init__(f"component(s) died: {names}; OMS stopped")


class DatabaseError(OmsError):
    """The database could not be reached or did not answer in time."""


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL could not be started or stopped."""


class MigrationError(DatabaseError):
    """The database schema could not be brought up to date."""


class ReferenceDataUnavailable(OmsError):
    """Reference Data is unreachable and nothing usable is cached."""


class ReferenceDataError(OmsError):
    """Reference Data answered with something OMS cannot use."""


class Overloaded(OmsError):
    """OMS is at capacity; the caller should retry later."""

    def __init__(self, message: str | None = None, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class InvalidRequest(OmsError):
    """The request is invalid."""

    def __init__(self, field: str, reason: str, *, code: str = "invalid") -> None:
        self.field = field
        self.reason = reason
        self.code = code
        super().__init__(f"{field}: {reason}" if field else reason)


class UnstorableRequest(InvalidRequest):
    """PostgreSQL refused a value (a number out of range, a character it cannot hold)."""


class UnknownReference(InvalidRequest):
    """A field names reference data that does not exist or is not active."""


class DocumentNotFound(OmsError):
    """No such document for this source system."""


class DuplicateClientReference(OmsError):
    """This source system already sent a request with this client_reference."""

    def __init__(self, client_reference: str, document_id: object) -> None:
        self.client_reference = client_reference
        self.document_id = document_id
        super().__init__(
            f"client_reference {client_reference!r} was already used for document {document_id}"
        )


class IdempotencyKeyReused(OmsError):
    """The Idempotency-Key was already used with a different request body."""


class IdempotencyKeyInFlight(OmsError):
    """A request with this Idempotency-Key is still being processed."""


class CancelRejected(OmsError):
    """The document can no longer be cancelled: Thunderhead has it, or it is final."""

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(f"a document in status {status} cannot be cancelled")


class Unauthorized(OmsError):
    """A valid API key is required."""


class Forbidden(OmsError):
    """This API key may not use this endpoint."""


class PayloadTooLarge(OmsError):
    """The request body is larger than this endpoint accepts."""


class MalformedBody(OmsError):
    """The request body could not be read as sent (its Content-Encoding does not decode)."""


class UnsupportedMediaType(OmsError):
    """The request body must be application/json."""


class InvalidHeader(OmsError):
    """A request header is invalid."""


class InvalidQuery(OmsError):
    """A query parameter is invalid."""


class ThunderheadError(OmsError):
    """Thunderhead did not do what was asked."""


class ThunderheadTransient(ThunderheadError):
    """Thunderhead is unavailable for now (timeout, connection error, 5xx, 429, 503).

    ``retry_after_s`` is how long Thunderhead asked OMS to wait (Retry-After, or the
    documented default for the status); the caller adds its own backoff and jitter.
    ``attempt`` is True only when Thunderhead answered the send with a transient
    failure (a 5xx other than 503): that uses up one of a document's attempts.
    Everything else (429/503 pauses, token trouble, no connection) is a wait.
    """

    def __init__(self, reason: str, retry_after_s: float, *, attempt: bool = False) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.attempt = attempt
        super().__init__(f"{reason} (retry after {retry_after_s:g} s)")


class ThunderheadOutcomeUnknown(ThunderheadTransient):
    """The request may have reached Thunderhead: reconcile by reference before re-sending."""


class ThunderheadRejected(ThunderheadError):
    """Thunderhead refused the request for good (4xx, or a business failure in a 200)."""

    def __init__(self, reason: str, messages: list[dict[str, object]], status: int) -> None:
        self.reason = reason
        self.messages = messages
        self.status = status
        super().__init__(reason)


class KafkaUnavailable(OmsError):
    """Kafka could not be reached or refused an administrative request."""


class EmbeddedBrokerError(KafkaUnavailable):
    """The embedded Kafka broker could not be started or stopped."""
