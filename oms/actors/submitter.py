"""Processing's submitters: send each batch to Thunderhead exactly once, and settle it.

The submitters own the batcher: actors add enriched documents to it, and a
submitter takes each full (or old enough) group, records the batch BEFORE
sending it, sends it through the shared Thunderhead client, and settles the
outcome (``oms.actors.settle``):

- accepted → SUBMITTED, job id kept, handed to monitoring;
- transient → a retry with backoff (or a wait that uses no attempt);
- outcome unknown (timeout after sending) → the batch is parked RECONCILING and
  the reconciler decides for the whole batch (adopt the job Thunderhead has, or
  send again), so nothing is generated twice;
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
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from oms import config, domain, exceptions, metrics
from oms.actors.batcher import Batcher
from oms.actors.settle import Settler
from oms.lifecycle import Component
from oms.store import batches
from oms.store import processing as store
from oms.thunderhead import ThunderheadClient, Transaction

logger = logging.getLogger(__name__)

_encode = msgspec.json.encode
_SPLITTABLE = frozenset({200, 400, 413, 422})  # a 200 here is a business failure


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


class _SplitBudget:
    """Extra submissions one batch may still spend on splitting (shared by its halves)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls


class Submitter(Component):
    name = "processing submitters"

    def __init__(
        self,
        db: asyncpg.Pool,
        thunderhead: ThunderheadClient,
        settings: config.ProcessingSettings,
        settler: Settler,
    ) -> None:
        self._db = db
        self._thunderhead = thunderhead
        self._settings = settings
        self._settler = settler
        self._lease = timedelta(seconds=settings.lease_s)
        self._batcher: Batcher[Pending] = Batcher(settings)
        self._finished = anyio.Event()

    async def add(self, pending: Pending, size: int) -> None:
        """Put a document in its batch; may wait while the submitters are busy."""
        key = str(pending.enrichment.batch_config_res_id)
        await self._batcher.add(key, pending, size)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The submitters plus the batcher's age-based flush; returns once drained."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._settings.submitters):
                    tg.start_soon(self._take_batches, self._batcher.receiver())
                self._batcher.groups.close()
                tg.start_soon(self._batcher.flush_by_age)
                task_status.started()
        finally:
            self._finished.set()

    async def drain(self) -> None:
        """Send every open batch now and settle it.

        Past the runner's deadline a send is cut off: its documents keep their
        lease and batch row, and are reconciled once the lease expires.
        """
        await self._batcher.close()
        await self._finished.wait()

    async def _take_batches(
        self, receive: MemoryObjectReceiveStream[tuple[str, list[Pending]]]
    ) -> None:
        async with receive:
            async for key, batch in receive:
                try:
                    await self.submit(key, batch)
                except Exception:
                    # The documents keep their lease and batch row: recoverable.
                    logger.exception("batch submission failed unexpectedly")

    async def submit(self, batch_config_res_id: str, batch: list[Pending]) -> None:
        paused = self._thunderhead.paused_for()
        if paused > 0:
            # Thunderhead asked OMS to wait longer than a call waits: no batch row
            # for a send the client would refuse anyway; the documents wait.
            await self._settler.retry(
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
            if await self._settler.close_batch(batch_id, "ABANDONED"):
                await self._settler.retry(
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
        await self._settler.submitted(batch_id, job_id, [p.document.id for p in batch])

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
        closed = await self._settler.close_batch(batch_id, "SPLIT" if splittable else "REJECTED")
        if not closed:
            return  # reconciliation has the batch now (this send outlived its lease)
        if not splittable:
            reason = "too_large" if exc.status == 413 else "thunderhead_rejected"
            await self._settler.fail([p.document for p in batch], reason, exc.reason, exc.messages)
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

    async def _unknown(self, batch_id: uuid.UUID, batch: list[Pending], reason: str) -> None:
        logger.warning(
            "submission outcome unknown; the batch will be reconciled before any re-send",
            extra={"batch_id": str(batch_id), "reason": reason, "count": len(batch)},
        )
        await self._settler.park(batch_id, reason)


def _now() -> datetime:
    return datetime.now(UTC)
