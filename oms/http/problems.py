"""RFC 9457 problem details: every error OMS answers, mapped in one place.

Each problem type has a stable URN, a title and a status. ``from_exception``
maps OMS's exceptions; the middleware in ``oms.http.app`` makes sure nothing
else ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from oms import exceptions

CONTENT_TYPE = "application/problem+json"


class ProblemType(msgspec.Struct, frozen=True):
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return f"urn:oms:problem:{self.slug}"


def _t(slug: str, status: int, title: str) -> ProblemType:
    return ProblemType(slug, status, title)


MALFORMED = _t("malformed-request", 400, "The request body is not valid JSON")
BAD_HEADER = _t("invalid-header", 400, "A request header is invalid")
BAD_QUERY = _t("invalid-query", 400, "A query parameter is invalid")
UNAUTHORIZED = _t("unauthorized", 401, "A valid API key is required")
FORBIDDEN = _t("forbidden", 403, "This API key may not do that")
NOT_FOUND = _t("not-found", 404, "No such resource")
METHOD_NOT_ALLOWED = _t("method-not-allowed", 405, "Method not allowed on this resource")
DUPLICATE_REFERENCE = _t(
    "duplicate-client-reference", 409, "A request with this client_reference already exists"
)
IDEMPOTENCY_IN_FLIGHT = _t(
    "idempotency-key-in-flight", 409, "A request with this Idempotency-Key is still in progress"
)
CANCEL_REJECTED = _t("cancel-rejected", 409, "The document can no longer be cancelled")
TOO_LARGE = _t("payload-too-large", 413, "The request body is too large")
UNSUPPORTED_MEDIA = _t("unsupported-media-type", 415, "The request body must be application/json")
INVALID = _t("validation-error", 422, "The request is invalid")
UNKNOWN_REFERENCE = _t(
    "unknown-reference", 422, "The request names reference data that is unknown or inactive"
)
IDEMPOTENCY_REUSED = _t(
    "idempotency-key-reused", 422, "The Idempotency-Key was used with a different request body"
)
INTERNAL = _t("internal-error", 500, "OMS failed unexpectedly")
DATABASE_UNAVAILABLE = _t("database-unavailable", 503, "The database is unavailable")
REFDATA_UNAVAILABLE = _t(
    "reference-data-unavailable", 503, "Reference Data is unavailable and nothing is cached"
)
OVERLOADED = _t("overloaded", 503, "OMS is at capacity")

ALL: tuple[ProblemType, ...] = tuple(
    v for v in tuple(globals().values()) if isinstance(v, ProblemType)
)


class FieldError(msgspec.Struct, frozen=True):
    """Which field is wrong (a JSON Pointer into the request body) and why."""

    pointer: str
    detail: str
    code: str = "invalid"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem; extension members are optional fields."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
    document_id: str | None = None
    current_status: str | None = None
    retry_after: int | None = None


_encoder = msgspec.json.Encoder()


def pointer(field: str) -> str:
    """``recipient.email`` → ``/recipient/email``; ``$.documents[3]`` → ``/documents/3``."""
    cleaned = field.removeprefix("$").lstrip(".")
    parts = [p for p in cleaned.replace("[", ".").replace("]", "").split(".") if p]
    return "".join(f"/{p}" for p in parts)  # "" is the whole document (RFC 6901)


def build(
    problem_type: ProblemType,
    detail: str | None = None,
    *,
    instance: str | None = None,
    **extensions: Any,
) -> Problem:
    return Problem(
        type=problem_type.uri,
        title=problem_type.title,
        status=problem_type.status,
        detail=detail,
        instance=instance,
        **extensions,
    )


def response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = dict(headers or {})
    if problem.retry_after is not None:
        all_headers["Retry-After"] = str(problem.retry_after)
    return web.Response(
        status=problem.status,
        body=_encoder.encode(problem),
        content_type=CONTENT_TYPE,
        headers=all_headers,
    )


# Errors whose problem says no more than the error's own message.
_PLAIN: dict[type[exceptions.OmsError], ProblemType] = {
    exceptions.Unauthorized: UNAUTHORIZED,
    exceptions.Forbidden: FORBIDDEN,
    exceptions.PayloadTooLarge: TOO_LARGE,
    exceptions.UnsupportedMediaType: UNSUPPORTED_MEDIA,
    exceptions.MalformedBody: MALFORMED,
    exceptions.InvalidHeader: BAD_HEADER,
    exceptions.InvalidQuery: BAD_QUERY,
    exceptions.DocumentNotFound: NOT_FOUND,
    exceptions.IdempotencyKeyReused: IDEMPOTENCY_REUSED,
}


def from_exception(exc: exceptions.OmsError) -> Problem:
    """The problem a client sees for an OMS error (None of the internals leak)."""
    plain = next((_PLAIN[t] for t in type(exc).__mro__ if t in _PLAIN), None)
    if plain is not None:
        return build(plain, str(exc))
    match exc:
        case exceptions.UnknownReference():
            return build(
                UNKNOWN_REFERENCE,
                exc.reason,
                errors=[FieldError(pointer(exc.field), exc.reason, exc.code)],
            )
        case exceptions.InvalidRequest():
            return build(
                INVALID, str(exc), errors=[FieldError(pointer(exc.field), exc.reason, exc.code)]
            )
        case exceptions.DuplicateClientReference():
            return build(DUPLICATE_REFERENCE, str(exc), document_id=str(exc.document_id))
        case exceptions.IdempotencyKeyInFlight():
            return build(IDEMPOTENCY_IN_FLIGHT, str(exc), retry_after=1)
        case exceptions.CancelRejected():
            return build(CANCEL_REJECTED, str(exc), current_status=exc.status)
        case exceptions.ReferenceDataUnavailable():
            return build(REFDATA_UNAVAILABLE, str(exc), retry_after=30)
        case exceptions.DatabaseError():
            return build(DATABASE_UNAVAILABLE, "the database is unavailable", retry_after=5)
        case exceptions.Overloaded():
            return build(OVERLOADED, str(exc), retry_after=exc.retry_after_s)
        case _:
            return build(INTERNAL)
