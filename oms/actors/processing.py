"""The processing stage's actors: claim a requested document, enrich it, batch it.

An actor claims a ``document.requested`` event's document (a compare-and-set
lease with a token of its own), enriches it from Reference Data, builds its
Thunderhead transaction and adds it to the submitters' batches
(``oms.actors.submitter``). What cannot go on is settled at once
(``oms.actors.settle``): no template now (FAILED), too large (FAILED), past its
deadline (FAILED), Reference Data down (a wait), or found with a batch that was
being sent when a process stopped (parked for reconciliation).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec

from oms import config, domain, exceptions, metrics
from oms.actors.settle import Settler
from oms.actors.submitter import Enrichment, Pending, Submitter
from oms.db.pool import CONNECTION_ERRORS
from oms.refdata import RefDataClient
from oms.store import processing as store
from oms.thunderhead import Transaction

logger = logging.getLogger(__name__)

_encode = msgspec.json.encode


class ProcessingStage:
    def __init__(
        self,
        db: asyncpg.Pool,
        refdata: RefDataClient,
        settings: config.ProcessingSettings,
        owner: str,
        *,
        submitter: Submitter,
        settler: Settler,
    ) -> None:
        self._db = db
        self._refdata = refdata
        self._settings = settings
        self._owner = owner
        self._submitter = submitter
        self._settler = settler
        self._lease = timedelta(seconds=settings.lease_s)

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
                    await self._settler.retry(
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
                await self._settler.release(document)
            raise

    async def _process(self, event: domain.DocumentRequested, document: store.Claimed) -> None:
        if document.unresolved_batch is not None:
            # Its batch was being sent when a process stopped: Thunderhead may have it.
            parked = await self._settler.park(
                document.unresolved_batch,
                "found unresolved after a lease expired (a process stopped while sending)",
            )
            if not parked:
                # Its sender settled the batch meanwhile: the document is free to go
                # (its batch no longer holds it), so it is due again now.
                await self._settler.release(document)
            return
        if _now() >= document.created_at + self._settler.deadline:
            last = f"; last: {document.last_reason}" if document.last_reason else ""
            await self._settler.fail(
                [document], "deadline_exceeded", f"not handed to Thunderhead in time{last}"
            )
            return
        try:
            enrichment = await self._enrich(document)
        except (exceptions.ReferenceDataUnavailable, exceptions.ReferenceDataError) as exc:
            await self._settler.retry(
                [event], [document], "reference_data_unavailable", str(exc), 0.0, charge=False
            )
            return
        except exceptions.UnknownReference as exc:
            await self._settler.fail([document], "template_unavailable", exc.reason)
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
            await self._settler.fail(
                [document], "too_large", f"{size} bytes encoded for Thunderhead"
            )
            return
        await self._submitter.add(Pending(event, document, enrichment, transaction), size)

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


def _now() -> datetime:
    return datetime.now(UTC)
