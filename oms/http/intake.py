"""The intake API under /v1: submit, batch, read, list, cancel."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
import zlib
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import msgspec
from aiohttp import web

from oms import config, domain, exceptions, metrics
from oms.http import auth, problems
from oms.http.routes import QueryParam, RouteSpec
from oms.intake import service as intake_service
from oms.intake.service import IntakeService
from oms.store import documents

T = TypeVar("T")

INTAKE = web.AppKey("intake", IntakeService)
DB = web.AppKey("db", asyncpg.Pool)
SETTINGS = web.AppKey("settings", config.Settings)

_request_decoder = msgspec.json.Decoder(domain.DocumentRequest)
_batch_decoder = msgspec.json.Decoder(domain.BatchRequest)
_cursor_decoder = msgspec.json.Decoder(documents.Cursor)
_encoder = msgspec.json.Encoder()
# A bare token or an sf-string ("..."): 1 to 255 visible ASCII characters, no quotes.
_IDEMPOTENCY_KEY = re.compile(r'^(?:"([\x21\x23-\x7e]{1,255})"|([\x21\x23-\x7e]{1,255}))$')
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def json_response(
    value: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(value), content_type="application/json", headers=headers
    )


def trace_id(request: web.Request) -> str:
    """The W3C trace id from ``traceparent`` when the caller sent one, else a new one."""
    match = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    return match.group(1) if match else uuid.uuid4().hex


async def read_json_body(request: web.Request, limit: int) -> bytes:
    """The body, decoded from its Content-Encoding, at most ``limit`` bytes decoded."""
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise exceptions.UnsupportedMediaType()
    decoder = _content_decoder(request)
    if request.content_length is not None and request.content_length > limit:
        raise exceptions.PayloadTooLarge(f"the body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            if decoder is not None:
                # At most what is left plus one byte: a small bomb cannot get past the limit.
                chunk = decoder.decompress(chunk, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise exceptions.PayloadTooLarge(f"the body may be at most {limit} bytes")
            chunks.append(chunk)
        if decoder is not None and not decoder.eof:
            raise zlib.error("the compressed stream is incomplete")
    except zlib.error as exc:
        raise exceptions.MalformedBody(
            f"the body does not decode as Content-Encoding {_encodings(request)}: {exc}"
        ) from exc
    return b"".join(chunks)


def _encodings(request: web.Request) -> str:
    return request.headers.get("Content-Encoding", "identity")


def _content_decoder(request: web.Request) -> zlib._Decompress | None:
    """The decoder for the body's Content-Encoding (RFC 9110 §8.4.1), or None for
    identity; any other coding, or several, is 415 before anything is read."""
    codings = [c.strip().lower() for c in _encodings(request).split(",") if c.strip()]
    if not codings or codings == ["identity"]:
        return None
    if codings in (["gzip"], ["x-gzip"]):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if codings == ["deflate"]:
        return zlib.decompressobj(zlib.MAX_WBITS)  # the zlib format, as RFC 9110 says
    raise exceptions.UnsupportedMediaType(
        f"Content-Encoding {_encodings(request)!r} is not supported: send identity, gzip or deflate"
    )


def _decode(decoder: msgspec.json.Decoder[T], body: bytes | msgspec.Raw) -> T:
    try:
        return decoder.decode(body)
    except RecursionError as exc:  # msgspec's answer to absurdly deep nesting
        raise msgspec.DecodeError("JSON is nested too deeply") from exc


def decode_error(exc: msgspec.DecodeError) -> problems.Problem:
    """A msgspec error as a problem: 422 naming the field, or 400 for broken JSON."""
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        detail, _, where = message.partition(" - at `")
        where = where.rstrip("`")
        unknown = re.search(r"unknown field `([^`]*)`", detail)
        if unknown:
            where = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
        missing = re.search(r"missing required field `([^`]*)`", detail)
        if missing:
            where = f"{where}.{missing.group(1)}" if where else missing.group(1)
        return problems.build(
            problems.INVALID,
            message,
            errors=[problems.FieldError(problems.pointer(where or "$"), detail)],
        )
    return problems.build(problems.MALFORMED, message)


def _idempotency_key(request: web.Request) -> str | None:
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return None
    match = _IDEMPOTENCY_KEY.match(header.strip())
    if not match:
        raise exceptions.InvalidHeader("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return match.group(1) or match.group(2)


def _document_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["document_id"])
    except ValueError as exc:
        raise exceptions.DocumentNotFound() from exc


def _rejected(problem: problems.Problem) -> None:
    metrics.DOCUMENTS_REJECTED.labels(problem.type.rsplit(":", 1)[-1]).inc()


# --- handlers --------------------------------------------------------------------------------


async def create_document(request: web.Request) -> web.Response:
    principal = request[auth.PRINCIPAL]
    settings = request.app[SETTINGS].intake
    key = _idempotency_key(request)
    body = await read_json_body(request, settings.max_body_bytes)
    try:
        document_request = _decode(_request_decoder, body)
    except msgspec.DecodeError as exc:
        problem = decode_error(exc)
        _rejected(problem)
        return problems.response(problem)
    outcome = await request.app[INTAKE].submit(
        principal.source_system, document_request, body, trace_id(request), key
    )
    if isinstance(outcome, intake_service.Replay):
        accepted = msgspec.json.decode(outcome.body, type=domain.Accepted)
        return web.Response(
            status=outcome.status,
            body=outcome.body,
            content_type="application/json",
            headers={"Location": accepted.links.self, "Idempotent-Replayed": "true"},
        )
    return json_response(outcome, 202, {"Location": outcome.links.self})


async def create_batch(request: web.Request) -> web.Response:
    principal = request[auth.PRINCIPAL]
    settings = request.app[SETTINGS].intake
    if "Idempotency-Key" in request.headers:
        raise exceptions.InvalidHeader(
            "Idempotency-Key is not supported on batches: each item's client_reference "
            "already makes a retried batch safe"
        )
    body = await read_json_body(request, settings.max_batch_body_bytes)
    try:
        batch = _decode(_batch_decoder, body)
    except msgspec.DecodeError as exc:
        return problems.response(decode_error(exc))
    if not batch.documents:
        raise exceptions.InvalidRequest("documents", "must hold at least one item")
    if len(batch.documents) > settings.max_batch_items:
        raise exceptions.InvalidRequest(
            "documents",
            f"holds {len(batch.documents)} items; at most {settings.max_batch_items} are accepted",
            code="too_many",
        )
    decoded: list[domain.DocumentRequest | problems.Problem] = []
    for raw in batch.documents:
        try:
            decoded.append(_decode(_request_decoder, raw))
        except msgspec.DecodeError as exc:
            decoded.append(decode_error(exc))
    valid = [d for d in decoded if isinstance(d, domain.DocumentRequest)]
    stored = iter(
        await request.app[INTAKE].submit_many(principal.source_system, valid, trace_id(request))
    )
    results: list[domain.BatchItemResult] = []
    for index, item in enumerate(decoded):
        outcome = next(stored) if isinstance(item, domain.DocumentRequest) else item
        if isinstance(outcome, domain.Accepted):
            results.append(domain.BatchItemResult(index, 202, document=outcome))
            continue
        problem = (
            outcome if isinstance(outcome, problems.Problem) else problems.from_exception(outcome)
        )
        _rejected(problem)
        results.append(
            domain.BatchItemResult(index, problem.status, problem=msgspec.to_builtins(problem))
        )
    accepted = sum(1 for r in results if r.document is not None)
    return json_response(domain.BatchResult(accepted, len(results) - accepted, results))


async def get_document(request: web.Request) -> web.Response:
    principal = request[auth.PRINCIPAL]
    document_id = _document_id(request)
    async with request.app[DB].acquire() as conn:
        document = await documents.get(conn, document_id, principal.source_system)
    if document is None:
        raise exceptions.DocumentNotFound()
    return json_response(msgspec.structs.replace(document, links=intake_service.links(document.id)))


def encode_cursor(cursor: documents.Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> documents.Cursor:
    try:
        cursor = _cursor_decoder.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return msgspec.structs.replace(cursor, created_at=_in_utc(cursor.created_at))
    except (binascii.Error, ValueError, OverflowError, msgspec.DecodeError) as exc:
        raise exceptions.InvalidQuery("cursor is not one this API issued") from exc


def query_text(request: web.Request, name: str) -> str | None:
    """A query parameter as text PostgreSQL can hold (no NUL character), or None."""
    value = request.query.get(name)
    if value is not None and "\x00" in value:
        raise exceptions.InvalidQuery(f"{name} must not contain a NUL character")
    return value


def _query_time(request: web.Request, name: str) -> datetime | None:
    value = query_text(request, name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return _in_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    except (ValueError, OverflowError) as exc:
        raise exceptions.InvalidQuery(
            f"{name} must be an ISO 8601 date-time between years 1 and 9999 in UTC"
        ) from exc


def _in_utc(moment: datetime) -> datetime:
    """The same instant in UTC; OverflowError past year 1 or 9999 (e.g. 9999-12-31T23:59-23:59),
    which PostgreSQL's driver would otherwise meet as a 500."""
    return moment.astimezone(UTC)


async def list_documents(request: web.Request) -> web.Response:
    principal = request[auth.PRINCIPAL]
    settings = request.app[SETTINGS].intake
    query = request.query
    try:
        status_text = query_text(request, "status")
        status = domain.Status(status_text) if status_text is not None else None
    except ValueError as exc:
        raise exceptions.InvalidQuery(
            f"status must be one of {', '.join(s.value for s in domain.Status)}"
        ) from exc
    try:
        limit = int(query.get("limit", settings.page_size_default))
    except ValueError as exc:
        raise exceptions.InvalidQuery("limit must be an integer") from exc
    if not 1 <= limit <= settings.page_size_max:
        raise exceptions.InvalidQuery(f"limit must be between 1 and {settings.page_size_max}")
    where = documents.ListFilter(
        source_system=principal.source_system,
        status=status,
        client_reference=query_text(request, "client_reference"),
        created_after=_query_time(request, "created_after"),
        created_before=_query_time(request, "created_before"),
    )
    cursor = query_text(request, "cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    async with request.app[DB].acquire() as conn:
        page, next_cursor = await documents.list_page(conn, where, after, limit)
    items = [msgspec.structs.replace(d, links=intake_service.links(d.id)) for d in page]
    return json_response(
        domain.DocumentPage(items, encode_cursor(next_cursor) if next_cursor else None)
    )


async def cancel_document(request: web.Request) -> web.Response:
    principal = request[auth.PRINCIPAL]
    document_id = _document_id(request)
    topics = request.app[INTAKE].topics
    async with request.app[DB].acquire() as conn:
        result = await documents.cancel(
            conn,
            document_id,
            principal.source_system,
            f"source:{principal.source_system}",
            topics,
            datetime.now(UTC),
        )
        if result is None:
            raise exceptions.DocumentNotFound()
        if not result.changed and result.status is not domain.Status.CANCELLED:
            raise exceptions.CancelRejected(result.status.value)
        document = await documents.get(conn, document_id, principal.source_system)
    assert document is not None
    return json_response(msgspec.structs.replace(document, links=intake_service.links(document_id)))


# --- the routes, for registration and OpenAPI --------------------------------------------------

_COMMON = (problems.UNAUTHORIZED, problems.FORBIDDEN, problems.DATABASE_UNAVAILABLE)
_BODY = (problems.MALFORMED, problems.TOO_LARGE, problems.UNSUPPORTED_MEDIA, problems.INVALID)
_STR = {"type": "string"}

ROUTES = [
    RouteSpec(
        method="POST",
        path="/v1/documents",
        handler=create_document,
        summary="Request a document",
        request_body=domain.DocumentRequest,
        responses={202: domain.Accepted},
        problems=(
            *_COMMON,
            *_BODY,
            problems.BAD_HEADER,
            problems.UNKNOWN_REFERENCE,
            problems.DUPLICATE_REFERENCE,
            problems.IDEMPOTENCY_IN_FLIGHT,
            problems.IDEMPOTENCY_REUSED,
            problems.REFDATA_UNAVAILABLE,
            problems.OVERLOADED,
        ),
        headers=(
            QueryParam(
                "Idempotency-Key",
                # Within what _IDEMPOTENCY_KEY accepts: 1 to 255 visible ASCII characters
                # but the double quote, optionally quoted as a whole (RFC 8941 string).
                {
                    "type": "string",
                    "maxLength": 255,
                    "pattern": '^(?:"[!#-~]{1,253}"|[!#-~]{1,255})$',
                },
                "Replays answer the first request's response for 24 hours (configurable).",
            ),
        ),
    ),
    RouteSpec(
        method="POST",
        path="/v1/documents/batch",
        handler=create_batch,
        summary="Request up to 1,000 documents, with one result per item",
        request_body=domain.BatchRequest,
        responses={200: domain.BatchResult},
        problems=(
            *_COMMON,
            *_BODY,
            problems.BAD_HEADER,
            problems.REFDATA_UNAVAILABLE,
            problems.OVERLOADED,
        ),
    ),
    RouteSpec(
        method="GET",
        path="/v1/documents",
        handler=list_documents,
        summary="List this source system's documents, newest first",
        responses={200: domain.DocumentPage},
        problems=(*_COMMON, problems.BAD_QUERY),
        query=(
            QueryParam("status", {"type": "string", "enum": [s.value for s in domain.Status]}),
            QueryParam("client_reference", _STR),
            QueryParam("created_after", {"type": "string", "format": "date-time"}),
            QueryParam("created_before", {"type": "string", "format": "date-time"}),
            QueryParam("cursor", _STR, "next_cursor of the previous page"),
            QueryParam("limit", {"type": "integer", "minimum": 1}),
        ),
    ),
    RouteSpec(
        method="GET",
        path="/v1/documents/{document_id}",
        handler=get_document,
        summary="A document's status, timeline, Thunderhead job and errors",
        responses={200: domain.Document},
        problems=(*_COMMON, problems.NOT_FOUND),
    ),
    RouteSpec(
        method="POST",
        path="/v1/documents/{document_id}/cancel",
        handler=cancel_document,
        summary="Cancel a document Thunderhead does not have yet",
        responses={200: domain.Document},
        problems=(*_COMMON, problems.NOT_FOUND, problems.CANCEL_REJECTED),
    ),
]
