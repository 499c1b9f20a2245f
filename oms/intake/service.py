"""The intake use case: from a decoded request to a stored document or a replay.

Web-free: the HTTP layer decodes, authenticates and maps the outcome to a response.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec

from oms import config, domain, exceptions, metrics
from oms.actors.handoff import RequestedHandoff
from oms.intake import validation
from oms.intake.writer import DocumentWriter
from oms.refdata import RefDataClient
from oms.store import documents, idempotency, journal

logger = logging.getLogger(__name__)


class Replay(msgspec.Struct, frozen=True):
    """The stored first answer to a request with the same Idempotency-Key and body."""

    status: int
    body: bytes


_encode = msgspec.json.encode


def document_path(document_id: uuid.UUID) -> str:
    return f"/v1/documents/{document_id}"


def links(document_id: uuid.UUID) -> domain.Links:
    path = document_path(document_id)
    return domain.Links(self=path, cancel=f"{path}/cancel")


class IntakeService:
    def __init__(
        self,
        db: asyncpg.Pool,
        writer: DocumentWriter,
        refdata: RefDataClient,
        settings: config.IntakeSettings,
        topics: journal.Topics,
        requested: RequestedHandoff,
    ) -> None:
        self.topics = topics
        self._requested = requested
        self._db = db
        self._writer = writer
        self._refdata = refdata
        self._settings = settings
        # Keys whose first request is still being handled in this process.
        self._in_flight: set[tuple[str, str]] = set()

    async def submit(
        self,
        source_system: str,
        request: domain.DocumentRequest,
        raw_body: bytes,
        trace_id: str,
        idempotency_key: str | None = None,
    ) -> domain.Accepted | Replay:
        if idempotency_key is None:
            return await self._submit(source_system, request, trace_id, None)
        scope = (source_system, idempotency_key)
        if scope in self._in_flight:
            raise exceptions.IdempotencyKeyInFlight()
        self._in_flight.add(scope)
        try:
            fingerprint = hashlib.sha256(raw_body).digest()
            earlier = await self._earlier_answer(source_system, idempotency_key)
            if earlier is not None:
                return _replay_or_reject(earlier, fingerprint)
            return await self._submit(
                source_system, request, trace_id, (idempotency_key, fingerprint)
            )
        finally:
            self._in_flight.discard(scope)

    async def submit_many(
        self, source_system: str, requests: Sequence[domain.DocumentRequest], trace_id: str
    ) -> list[domain.Accepted | exceptions.OmsError]:
        """Validate and store each item on its own; one bad item never fails the others.

        Valid items go to the writer together, so they share transactions.
        """
        results: list[domain.Accepted | exceptions.OmsError | None] = [None] * len(requests)
        pending: list[tuple[int, documents.NewDocument]] = []
        for index, request in enumerate(requests):
            try:
                validation.check_shape(request, self._settings.max_data_bytes)
                await validation.check_references(self._refdata, request)
            except exceptions.InvalidRequest as exc:
                results[index] = exc
                continue
            pending.append((index, self._new_document(source_system, request, trace_id, None)))

        async def store(index: int, item: documents.NewDocument) -> None:
            try:
                outcome: documents.InsertOutcome | exceptions.OmsError
                outcome = await self._write(item)
            except exceptions.OmsError as exc:
                outcome = exc
            except Exception:
                # Logged here; the item answers internal-error, its neighbours stand.
                logger.exception("storing a batch item failed", extra={"document_id": item.id})
                outcome = exceptions.OmsError()
            results[index] = self._accepted_or_error(item, outcome)

        async with anyio.create_task_group() as tg:
            for index, item in pending:
                tg.start_soon(store, index, item)
        return [r for r in results if r is not None]

    async def _submit(
        self,
        source_system: str,
        request: domain.DocumentRequest,
        trace_id: str,
        key_and_digest: tuple[str, bytes] | None,
    ) -> domain.Accepted | Replay:
        validation.check_shape(request, self._settings.max_data_bytes)
        await validation.check_references(self._refdata, request)
        item = self._new_document(source_system, request, trace_id, key_and_digest)
        outcome = await self._write(item)
        if isinstance(outcome, documents.IdempotencyHit):
            # Another process took the key between our read and our write.
            assert key_and_digest is not None
            return _replay_or_reject(outcome.record, key_and_digest[1])
        result = self._accepted_or_error(item, outcome)
        if isinstance(result, exceptions.OmsError):
            raise result
        return result

    async def _write(self, item: documents.NewDocument) -> documents.InsertOutcome:
        """Store the request only if processing has room for it, then hand it over.

        The slot is reserved first: when processing is full the caller gets 503
        and nothing is stored half-way. In scheduled mode the handoff holds
        nothing (processing scans the database), so nothing is refused.
        """
        reservation = self._requested.reserve()
        try:
            outcome = await self._writer.write(item)
        except BaseException:
            reservation.release()
            raise
        if isinstance(outcome, documents.Inserted):
            reservation.put(outcome.requested)
        else:
            reservation.release()
        return outcome

    def _new_document(
        self,
        source_system: str,
        request: domain.DocumentRequest,
        trace_id: str,
        key_and_digest: tuple[str, bytes] | None,
    ) -> documents.NewDocument:
        document_id = domain.uuid7()
        now = datetime.now(UTC)
        record = None
        if key_and_digest is not None:
            key, fingerprint = key_and_digest
            answer = _accepted(document_id, request, now)
            record = idempotency.IdempotencyRecord(
                key=key,
                request_sha256=fingerprint,
                response_status=202,
                response_body=_encode(answer),
                expires_at=now + timedelta(seconds=self._settings.idempotency_ttl_s),
            )
        return documents.NewDocument(
            id=document_id,
            source_system=source_system,
            request=request,
            trace_id=trace_id,
            created_at=now,
            idempotency=record,
        )

    def _accepted_or_error(
        self,
        item: documents.NewDocument,
        outcome: documents.InsertOutcome | exceptions.OmsError,
    ) -> domain.Accepted | exceptions.OmsError:
        match outcome:
            case documents.Inserted():
                metrics.DOCUMENTS_ACCEPTED.labels(item.request.priority.value).inc()
                return _accepted(item.id, item.request, item.created_at)
            case documents.DuplicateReference(existing_id=existing):
                return exceptions.DuplicateClientReference(item.request.client_reference, existing)
            case documents.IdempotencyHit():
                # Batch items carry no key; a single request handles hits itself.
                raise AssertionError("idempotency hit without a key")
            case exceptions.OmsError():
                return outcome

    async def _earlier_answer(
        self, source_system: str, key: str
    ) -> idempotency.IdempotencyRecord | None:
        # A connection failure here is answered 503 by the HTTP layer, like any other.
        async with self._db.acquire() as conn:
            return await idempotency.find(conn, source_system, key, datetime.now(UTC))


def _accepted(
    document_id: uuid.UUID, request: domain.DocumentRequest, created_at: datetime
) -> domain.Accepted:
    return domain.Accepted(
        id=document_id,
        status=domain.Status.RECEIVED,
        client_reference=request.client_reference,
        created_at=created_at,
        links=links(document_id),
    )


def _replay_or_reject(record: idempotency.IdempotencyRecord, fingerprint: bytes) -> Replay:
    if record.request_sha256 != fingerprint:
        raise exceptions.IdempotencyKeyReused()
    return Replay(record.response_status, record.response_body)
