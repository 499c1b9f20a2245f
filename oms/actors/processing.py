"""The processing stage: claim, enrich, batch, submit to Thunderhead exactly once.

An actor claims a ``document.requested`` event's document (a compare-and-set
lease), enriches it from Reference Data and hands it to the batcher. A
submitter records the batch BEFORE sending it, sends it through the shared
Thunderhead client, and settles the outcome in one transaction per batch:

- accepted → SUBMITTED, job id kept, ``document.submitted`` events written and
  handed to monitoring;
- transient (429, 5xx, refused) → a retry with backoff, or FAILED
  ``retries_exhausted`` after ``max_attempts``;
- outcome unknown (timeout after sending) → the batch is marked UNKNOWN and the
  retry first asks Thunderhead for the documents' references: a job found is
  adopted, so nothing is generated twice;
- rejected (4xx, business failure) → FAILED at once, Thunderhead's messages kept.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec

from oms import config, domain, exceptions, metrics
from oms.actors.batcher import Batcher
from oms.refdata import RefDataClient
from oms.store import processing as store
from oms.store.documents import Topics
from oms.thunderhead import ThunderheadClient, Transaction

logger = logging.getLogger(__name__)


class Enrichment(msgspec.Struct, frozen=True):
    template_id: str
    template_version: int
    batch_config_res_id: str
    brand: dict[str, object]


class Pending(msgspec.Struct, frozen=True):
    """A claimed, enriched document waiting in a batch."""

    event: domain.DocumentRequested
    document: store.Claimed
    enrichment: Enrichment
    transaction: Transaction


_encode = msgspec.json.encode


class ProcessingStage:
    def __init__(
        self,
        db: asyncpg.Pool,
        refdata: RefDataClient,
        thunderhead: ThunderheadClient,
        settings: config.ProcessingSettings,
        topics: Topics,
        owner: str,
        *,
        on_submitted: Callable[[Sequence[domain.DocumentSubmitted]], None],
        retry_later: Callable[[domain.DocumentRequested, float], None],
    ) -> None:
        self._db = db
        self._refdata = refdata
        self._thunderhead = thunderhead
        self._settings = settings
        self._topics = topics
        self._owner = owner
        self._on_submitted = on_submitted
        self._retry_later = retry_later
        self._lease = timedelta(seconds=settings.lease_s)
        self.batcher: Batcher[Pending] = Batcher(settings, self.submit)

    # --- the actor's handler ----------------------------------------------------------------

    async def handle(self, event: domain.DocumentRequested) -> None:
        # Each claim has its own token, so even this process's own duplicate or
        # late work on the document is fenced off by the compare-and-sets.
        token = f"{self._owner}/{uuid.uuid4().hex[:8]}"
        async with self._db.acquire() as conn:
            document = await store.claim(conn, event.document_id, token, self._lease, _now())
        if document is None:
            metrics.PROCESSING_OUTCOMES.labels("skipped").inc()
            return
        try:
            await self._process(event, document)
        except Exception as exc:
            # A bug or an unexpected answer: count it as an attempt (so a document
            # that always fails ends FAILED, not in a loop), then let the actor die.
            try:
                with anyio.CancelScope(shield=True):
                    await self._retry(
                        [event],
                        [document],
                        "processing_error",
                        f"{type(exc).__name__}: {exc}",
                        0.0,
                        # Thunderhead may have it: keep the batch, so the retry reconciles.
                        keep_batch=document.unresolved_batch is not None,
                    )
            except Exception:
                logger.exception("could not record the failure; the lease will expire")
            raise
        except BaseException:
            # Cancelled (shutdown): give the lease back without counting an attempt.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                async with self._db.acquire() as conn:
                    await store.release(conn, document.id, document.lease, _now())
            raise

    async def _process(self, event: domain.DocumentRequested, document: store.Claimed) -> None:
        if document.unresolved_batch is not None and await self._reconcile(event, document):
            return
        try:
            enrichment = await self._enrich(document)
        except (exceptions.ReferenceDataUnavailable, exceptions.ReferenceDataError) as exc:
            await self._retry([event], [document], "reference_data_unavailable", str(exc), 0.0)
            return
        except exceptions.UnknownReference as exc:
            await self._fail([document], "template_unavailable", exc.reason)
            return
        transaction = Transaction(
            correlation_reference=str(document.id),
            template_id=enrichment.template_id,
            template_version=enrichment.template_version,
            channel=document.channel,
            language=document.language,
            brand=enrichment.brand,
            recipient=document.recipient,
            data=document.data,
        )
        size = len(_encode(transaction)) * 4 // 3 + 64  # Base64 in the request
        if size > self._settings.batch_max_bytes:
            await self._fail([document], "too_large", f"{size} bytes encoded for Thunderhead")
            return
        pending = Pending(event, document, enrichment, transaction)
        await self.batcher.add(enrichment.batch_config_res_id, pending, size)

    async def _enrich(self, document: store.Claimed) -> Enrichment:
        templates = [
            t
            for t in await self._refdata.templates(document.document_type)
            if t.active
            and t.channel == document.channel
            and t.language == document.language
            and t.brand == document.brand
        ]
        if not templates:
            raise exceptions.UnknownReference(
                "template", "no active template for this type, channel, language and brand now"
            )
        template = max(templates, key=lambda t: t.version)
        brand = await self._refdata.brand(document.brand)
        if brand is None or not brand.active:
            raise exceptions.UnknownReference("brand", f"brand {document.brand!r} is not active")
        return Enrichment(
            template_id=template.id,
            template_version=template.version,
            batch_config_res_id=template.batch_config_res_id,
            brand=msgspec.to_builtins(brand),
        )

    # --- the batcher's submitter -------------------------------------------------------------

    async def submit(self, batch_config_res_id: str, batch: list[Pending]) -> None:
        batch_id = domain.uuid7()
        now = _now()
        async with self._db.acquire() as conn:
            held = await store.start_batch(
                conn,
                batch_id,
                batch_config_res_id,
                {p.document.id: _encode(p.enrichment) for p in batch},
                {p.document.id: p.document.lease for p in batch},
                now + self._lease,
                now,
            )
        # By id AND claim: two claims of one document never both go (a stale one is out).
        batch = [p for p in batch if (p.document.id, p.document.lease) in held]
        if not batch:
            return
        metrics.BATCH_DOCUMENTS.observe(len(batch))
        try:
            # The send must end well inside the lease just extended: past it,
            # another claim could reconcile and find nothing while this one lands.
            with anyio.fail_after(max(1.0, self._settings.lease_s * 0.8)):
                job_id = await self._thunderhead.submit_batch(
                    batch_config_res_id, str(batch_id), [p.transaction for p in batch]
                )
        except TimeoutError:
            exc = exceptions.ThunderheadOutcomeUnknown("submission outlived its lease", 5.0)
            await self._unknown(batch_id, batch, exc)
            return
        except exceptions.ThunderheadOutcomeUnknown as exc:
            await self._unknown(batch_id, batch, exc)
            return
        except exceptions.ThunderheadTransient as exc:
            await self._close_batch(batch_id, "ABANDONED")
            await self._retry(
                [p.event for p in batch],
                [p.document for p in batch],
                "thunderhead_unavailable",
                exc.reason,
                exc.retry_after_s,
            )
            return
        except exceptions.ThunderheadRejected as exc:
            await self._close_batch(batch_id, "REJECTED")
            await self._fail(
                [p.document for p in batch], "thunderhead_rejected", exc.reason, exc.messages
            )
            return
        await self._submitted(batch_id, job_id, [p.document.id for p in batch])

    # --- settling outcomes --------------------------------------------------------------------

    async def _unknown(
        self,
        batch_id: uuid.UUID,
        batch: list[Pending],
        exc: exceptions.ThunderheadOutcomeUnknown,
    ) -> None:
        logger.warning(
            "submission outcome unknown; will reconcile before re-sending",
            extra={"batch_id": str(batch_id), "reason": exc.reason},
        )
        await self._close_batch(batch_id, "UNKNOWN")
        await self._retry(
            [p.event for p in batch],
            [p.document for p in batch],
            "thunderhead_outcome_unknown",
            exc.reason,
            exc.retry_after_s,
            keep_batch=True,
        )

    async def _reconcile(self, event: domain.DocumentRequested, document: store.Claimed) -> bool:
        """Ask Thunderhead whether an earlier, unanswered submission reached it.

        True when that settled the document (adopted, retried or failed); False
        when Thunderhead never had it, so it is safe to submit again.
        """
        assert document.unresolved_batch is not None
        try:
            jobs = await self._thunderhead.find_by_reference(str(document.id))
        except exceptions.ThunderheadTransient as exc:
            await self._retry(
                [event],
                [document],
                "reconciliation_pending",
                exc.reason,
                exc.retry_after_s,
                keep_batch=True,
            )
            return True
        live = [j for j in jobs if j.status != "FAILED"] or jobs
        if live:
            metrics.PROCESSING_OUTCOMES.labels("reconciled").inc()
            # Adopts the job for every document of that batch, not only this one.
            await self._submitted(
                document.unresolved_batch, live[-1].job_id, [document.id], reconciled=True
            )
            return True
        sent_at = document.unresolved_batch_created_at or _now()
        if (_now() - sent_at).total_seconds() < self._settings.lease_s:
            # Too young to be sure: a send may still be on its way. Ask again later.
            await self._retry(
                [event],
                [document],
                "reconciliation_pending",
                "submission may be in flight",
                self._settings.backoff_base_s,
                keep_batch=True,
            )
            return True
        async with self._db.acquire() as conn:
            await store.close_batch(conn, document.unresolved_batch, "ABANDONED", _now())
        if document.attempts >= self._settings.max_attempts:
            await self._fail(
                [document], "retries_exhausted", "Thunderhead never confirmed the submission"
            )
            return True
        return False

    async def _submitted(
        self,
        batch_id: uuid.UUID,
        job_id: str,
        document_ids: list[uuid.UUID],
        *,
        reconciled: bool = False,
    ) -> None:
        async with self._db.acquire() as conn:
            events = await store.mark_submitted(
                conn, batch_id, job_id, document_ids, self._topics, _now(), reconciled=reconciled
            )
        metrics.PROCESSING_OUTCOMES.labels("submitted").inc(len(events))
        self._on_submitted(events)

    async def _retry(
        self,
        events: list[domain.DocumentRequested],
        documents: list[store.Claimed],
        reason: str,
        detail: str,
        retry_after_s: float,
        *,
        keep_batch: bool = False,
    ) -> None:
        delays = {
            d.id: timedelta(seconds=self.backoff(d.attempts, retry_after_s)) for d in documents
        }
        error = domain.DocumentError(reason=reason, detail=detail)
        async with self._db.acquire() as conn:
            retries, exhausted = await store.retry_or_exhaust(
                conn,
                {d.id: d.lease for d in documents},
                error,
                delays,
                # An unknown outcome never exhausts here: the retry reconciles first.
                None if keep_batch else self._settings.max_attempts,
                self._topics,
                _now(),
                keep_batch=keep_batch,
            )
        metrics.PROCESSING_OUTCOMES.labels("retry").inc(len(retries))
        metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(exhausted))
        by_id = {e.document_id: e for e in events}
        now = _now()
        for retry in retries:
            self._retry_later(
                by_id[retry.document_id], (retry.next_attempt_at - now).total_seconds()
            )

    async def _fail(
        self,
        documents: list[store.Claimed],
        reason: str,
        detail: str,
        messages: list[dict[str, object]] | None = None,
    ) -> None:
        error = domain.DocumentError(reason=reason, detail=detail, messages=messages or [])
        async with self._db.acquire() as conn:
            failed = await store.fail(
                conn, {d.id: d.lease for d in documents}, error, self._topics, _now()
            )
        metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(failed))

    async def _close_batch(self, batch_id: uuid.UUID, status: str) -> None:
        async with self._db.acquire() as conn:
            await store.close_batch(conn, batch_id, status, _now())

    def backoff(self, attempts: int, at_least_s: float) -> float:
        """Exponential backoff with jitter, never shorter than Thunderhead asked."""
        ceiling = min(
            self._settings.backoff_max_s, self._settings.backoff_base_s * 2 ** min(attempts, 30)
        )
        return max(at_least_s, ceiling * random.uniform(0.5, 1.0))


def _now() -> datetime:
    return datetime.now(UTC)
