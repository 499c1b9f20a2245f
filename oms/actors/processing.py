"""The processing stage: claim, enrich, batch, submit to Thunderhead exactly once.

An actor claims a ``document.requested`` event's document (a compare-and-set
lease), enriches it from Reference Data and hands it to the batcher. A
submitter records the batch BEFORE sending it, sends it through the shared
Thunderhead client, and settles the outcome in one transaction per batch:

- accepted → SUBMITTED, job id kept, ``document.submitted`` events written and
  handed to monitoring;
- transient → a retry with backoff. Only a 5xx answer (not 503) uses an attempt
  (FAILED ``retries_exhausted`` after ``max_attempts``); OMS's own waits (429/503
  pause, token refused, Reference Data down) do not, and end only at the
  document's ``deadline_s`` (FAILED ``deadline_exceeded``);
- outcome unknown (timeout after sending) → the batch is parked RECONCILING and
  the reconciler (``oms.actors.reconciler``) decides for the whole batch: adopt
  the job Thunderhead has, or send again, so nothing is generated twice;
- too large (413) → sent again in halves; refused whole (400, business failure)
  → bisected until the refused document is alone, which FAILS with Thunderhead's
  messages while the others go through (after ``split_max_extra_calls`` extra
  submissions, the rest go one by one: a good document never fails for its
  neighbour);
- rejected otherwise → FAILED at once, Thunderhead's messages kept.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec

from oms import config, domain, exceptions, metrics
from oms.actors.batcher import Batcher
from oms.actors.delay import jittered_backoff
from oms.db.pool import CONNECTION_ERRORS
from oms.refdata import RefDataClient
from oms.store import batches
from oms.store import processing as store
from oms.store.journal import Topics
from oms.thunderhead import ThunderheadClient, Transaction

logger = logging.getLogger(__name__)


class Enrichment(msgspec.Struct, frozen=True):
    template_id: str
    template_version: int
    batch_config_res_id: int
    brand: dict[str, object]


class Pending(msgspec.Struct, frozen=True):
    """A claimed, enriched document waiting in a batch."""

    event: domain.DocumentRequested
    document: store.Claimed
    enrichment: Enrichment
    transaction: Transaction


_encode = msgspec.json.encode
_SPLITTABLE = frozenset({200, 400, 413, 422})  # a 200 here is a business failure


class _SplitBudget:
    """Extra submissions one batch may still spend on splitting (shared by its halves)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls


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
        reconcile_soon: Callable[[], None],
    ) -> None:
        self._db = db
        self._refdata = refdata
        self._thunderhead = thunderhead
        self._settings = settings
        self._topics = topics
        self._owner = owner
        self._on_submitted = on_submitted
        self._retry_later = retry_later
        self._reconcile_soon = reconcile_soon
        self._lease = timedelta(seconds=settings.lease_s)
        self._deadline = timedelta(seconds=settings.deadline_s)
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
            # Not so for the database being unreachable (OMS's own trouble), nor
            # for a document whose batch Thunderhead may have: those wait.
            unresolved = document.unresolved_batch is not None
            try:
                with anyio.CancelScope(shield=True):
                    await self._retry(
                        [event],
                        [document],
                        "processing_error",
                        f"{type(exc).__name__}: {exc}",
                        0.0,
                        charge=not unresolved and not isinstance(exc, CONNECTION_ERRORS),
                        # Thunderhead may have it: keep the batch, so the retry reconciles.
                        keep_batch=unresolved,
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
        if document.unresolved_batch is not None:
            # Its batch was being sent when a process stopped: Thunderhead may have it.
            parked = await self._park(
                document.unresolved_batch,
                "found unresolved after a lease expired (a process stopped while sending)",
            )
            if not parked:
                # Its sender settled the batch meanwhile: the document is free to go
                # (its batch no longer holds it), so it is due again now.
                async with self._db.acquire() as conn:
                    await store.release(conn, document.id, document.lease, _now())
            return
        if _now() >= document.created_at + self._deadline:
            last = f"; last: {document.last_reason}" if document.last_reason else ""
            await self._fail(
                [document], "deadline_exceeded", f"not handed to Thunderhead in time{last}"
            )
            return
        try:
            enrichment = await self._enrich(document)
        except (exceptions.ReferenceDataUnavailable, exceptions.ReferenceDataError) as exc:
            await self._retry(
                [event], [document], "reference_data_unavailable", str(exc), 0.0, charge=False
            )
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
        await self.batcher.add(str(enrichment.batch_config_res_id), pending, size)

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
        paused = self._thunderhead.paused_for()
        if paused > 0:
            # Thunderhead asked OMS to wait longer than a call waits: no batch row
            # for a send the client would refuse anyway; the documents wait.
            await self._retry(
                [p.event for p in batch],
                [p.document for p in batch],
                "thunderhead_unavailable",
                "Thunderhead asked OMS to wait (429/503)",
                paused,
                charge=False,
            )
            return
        budget = _SplitBudget(self._settings.split_max_extra_calls)
        await self._send(int(batch_config_res_id), batch, budget)

    async def _send(
        self, batch_config_res_id: int, batch: list[Pending], budget: _SplitBudget
    ) -> None:
        # The send must end well inside the lease taken below, counted from before
        # the database call: past it another claim could reconcile and find nothing
        # while this send still lands.
        cut_off = time.monotonic() + max(1.0, self._settings.lease_s * 0.8)
        batch_id = domain.uuid7()
        now = _now()
        async with self._db.acquire() as conn:
            held = await batches.start_batch(
                conn,
                batch_id,
                str(batch_config_res_id),
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
            with anyio.fail_after(max(0.0, cut_off - time.monotonic())):
                job_id = await self._thunderhead.submit_batch(
                    batch_config_res_id, str(batch_id), [p.transaction for p in batch]
                )
        except TimeoutError:
            await self._unknown(batch_id, batch, "submission outlived its lease")
            return
        except exceptions.ThunderheadOutcomeUnknown as exc:
            await self._unknown(batch_id, batch, exc.reason)
            return
        except exceptions.ThunderheadTransient as exc:
            if await self._close_batch(batch_id, "ABANDONED"):
                await self._retry(
                    [p.event for p in batch],
                    [p.document for p in batch],
                    "thunderhead_unavailable",
                    exc.reason,
                    exc.retry_after_s,
                    charge=exc.attempt,
                )
            return
        except exceptions.ThunderheadRejected as exc:
            await self._refused(batch_config_res_id, batch_id, batch, budget, exc)
            return
        await self._submitted(batch_id, job_id, [p.document.id for p in batch])

    async def _refused(
        self,
        batch_config_res_id: int,
        batch_id: uuid.UUID,
        batch: list[Pending],
        budget: _SplitBudget,
        exc: exceptions.ThunderheadRejected,
    ) -> None:
        """Refused whole: split to find what Thunderhead refuses, or FAIL a lone document."""
        splittable = len(batch) > 1 and exc.status in _SPLITTABLE
        closed = await self._close_batch(batch_id, "SPLIT" if splittable else "REJECTED")
        if not closed:
            return  # reconciliation has the batch now (this send outlived its lease)
        if not splittable:
            reason = "too_large" if exc.status == 413 else "thunderhead_rejected"
            await self._fail([p.document for p in batch], reason, exc.reason, exc.messages)
            return
        cause = "too_large" if exc.status == 413 else "rejected"
        metrics.BATCH_SPLITS.labels(cause).inc()
        if budget.calls >= 2:
            budget.calls -= 2
            logger.info(
                "Thunderhead refused a batch whole; sending it again in halves",
                extra={"batch_id": str(batch_id), "count": len(batch), "reason": exc.reason},
            )
            half = len(batch) // 2
            parts = [batch[:half], batch[half:]]
        else:
            # Out of halvings: one call per document finds every refused one, and
            # never fails a good document for sharing a batch with a bad one.
            logger.info(
                "Thunderhead refused a batch whole; sending its documents one by one",
                extra={"batch_id": str(batch_id), "count": len(batch), "reason": exc.reason},
            )
            parts = [[p] for p in batch]
        for n, part in enumerate(parts):
            # The parts go one after the other: keep every part still to go claimed.
            waiting = [p for later in parts[n:] for p in later]
            async with self._db.acquire() as conn:
                await store.extend_leases(
                    conn, {p.document.id: p.document.lease for p in waiting}, _now() + self._lease
                )
            await self._send(batch_config_res_id, part, budget)

    # --- settling outcomes --------------------------------------------------------------------

    async def _unknown(self, batch_id: uuid.UUID, batch: list[Pending], reason: str) -> None:
        logger.warning(
            "submission outcome unknown; the batch will be reconciled before any re-send",
            extra={"batch_id": str(batch_id), "reason": reason, "count": len(batch)},
        )
        await self._park(batch_id, reason)

    async def _park(self, batch_id: uuid.UUID, reason: str) -> int:
        """Hand a batch whose fate is unknown to reconciliation; no attempt is used.

        Returns how many documents were parked (0: the batch was settled meanwhile).
        """
        error = domain.DocumentError(reason="thunderhead_outcome_unknown", detail=reason)
        async with self._db.acquire() as conn:
            parked = await batches.park_for_reconciliation(conn, batch_id, error, _now(), _now())
        metrics.PROCESSING_OUTCOMES.labels("reconciling").inc(parked)
        self._reconcile_soon()
        return parked

    async def _submitted(
        self,
        batch_id: uuid.UUID,
        job_id: str,
        document_ids: list[uuid.UUID],
        *,
        reconciled: bool = False,
    ) -> None:
        async with self._db.acquire() as conn:
            events = await batches.mark_submitted(
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
        charge: bool,
        keep_batch: bool = False,
    ) -> None:
        """Try again later; ``charge`` when Thunderhead answered with a transient failure."""
        delays = {
            d.id: timedelta(
                seconds=self.backoff(d.attempts, retry_after_s)
                if charge
                else self.wait(d.waits, retry_after_s)
            )
            for d in documents
        }
        error = domain.DocumentError(reason=reason, detail=detail)
        async with self._db.acquire() as conn:
            retries, failed = await store.retry_or_exhaust(
                conn,
                {d.id: d.lease for d in documents},
                error,
                delays,
                self._settings.max_attempts,
                self._topics,
                _now(),
                charge=charge,
                deadline=self._deadline,
                keep_batch=keep_batch,
            )
        metrics.PROCESSING_OUTCOMES.labels("retry" if charge else "wait").inc(len(retries))
        metrics.PROCESSING_OUTCOMES.labels("failed").inc(len(failed))
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

    async def _close_batch(self, batch_id: uuid.UUID, status: str) -> bool:
        async with self._db.acquire() as conn:
            closed = await batches.close_batch(conn, batch_id, status, _now())
        if not closed:
            logger.warning(
                "a send ended after its batch was handed to reconciliation; it decides",
                extra={"batch_id": str(batch_id), "status": status},
            )
        return closed

    def backoff(self, attempts: int, at_least_s: float) -> float:
        """Exponential backoff with jitter, never shorter than Thunderhead asked."""
        s = self._settings
        return max(at_least_s, jittered_backoff(s.backoff_base_s, attempts, s.backoff_max_s))

    def wait(self, waits: int, at_least_s: float) -> float:
        """Backoff for OMS's own waits: capped lower, so work resumes soon after."""
        s = self._settings
        return max(at_least_s, jittered_backoff(s.backoff_base_s, waits, s.wait_backoff_max_s))


def _now() -> datetime:
    return datetime.now(UTC)
