"""Jobs of the Thunderhead simulator: their life is computed from the clock, not driven.

A job keeps when it was submitted and how long one document takes; its status and
each transaction's are worked out whenever it is read. No background task, so
nothing to start, supervise or cancel.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgspec

from oms.sim import _thunderhead_shapes as shapes


class Transaction(msgspec.Struct, frozen=True):
    """The part of a transaction the simulator reads; the rest passes unread."""

    reference: str
    """The value of the correlation field."""
    channel: str = ""
    """OMS's ``channel`` field ("" when absent): it picks the envelope's channel type."""


@dataclasses.dataclass
class Job:
    job_id: int
    batch_name: str
    batch_config_res_id: int
    correlation_field: str
    """The field the reference was read from, and is written back under."""
    submitted_at: float
    """``time.monotonic()`` time (the job file keeps wall-clock time)."""
    per_document_s: float
    transactions: list[Transaction]
    fails: list[bool]
    """Per transaction: whether it ends FAILED, decided on submission."""


@dataclasses.dataclass(frozen=True)
class Generated:
    """A reference sent to generateDocument: no job, but a submission all the same."""

    reference: str
    submitted_at: float


def new_job(
    job_id: int,
    batch_name: str,
    transactions: list[Transaction],
    *,
    batch_config_res_id: int,
    correlation_field: str,
    now: float,
    per_document_s: float,
    failure_ratio: float,
) -> Job:
    return Job(
        job_id=job_id,
        batch_name=batch_name,
        batch_config_res_id=batch_config_res_id,
        correlation_field=correlation_field,
        submitted_at=now,
        per_document_s=per_document_s,
        transactions=transactions,
        fails=[fails(tx.reference, failure_ratio) for tx in transactions],
    )


def fails(reference: str, failure_ratio: float) -> bool:
    """Whether this reference fails: the same answer every time for the same ratio."""
    digest = hashlib.sha256(reference.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < failure_ratio


def _transaction_status(job: Job, index: int, elapsed: float) -> str:
    """Queued for half a document's time, then composed one at a time, in order."""
    per_document = job.per_document_s
    if elapsed >= (index + 1) * per_document:
        return "FAILED" if job.fails[index] else "COMPLETED"
    if elapsed < per_document / 2 or elapsed < index * per_document:
        return "PENDING"
    return "RUNNING"


def _job_status(job: Job, statuses: list[str], elapsed: float) -> str:
    if any(s in ("PENDING", "RUNNING") for s in statuses):
        return "PENDING" if elapsed < job.per_document_s / 2 else "RUNNING"
    return "COMPLETED" if "COMPLETED" in statuses else "FAILED"


def _statuses(job: Job, elapsed: float) -> list[str]:
    return [_transaction_status(job, i, elapsed) for i in range(len(job.transactions))]


def status_at(job: Job, now: float) -> str:
    elapsed = now - job.submitted_at
    return _job_status(job, _statuses(job, elapsed), elapsed)


def view(job: Job, now: float) -> dict[str, Any]:
    """The job as ``GET …/job/{jobId}`` answers it at ``now``."""
    elapsed = now - job.submitted_at
    statuses = _statuses(job, elapsed)
    status = _job_status(job, statuses, elapsed)
    transactions = [_transaction_view(job, i, tx_status) for i, tx_status in enumerate(statuses)]
    total, failed = len(statuses), statuses.count("FAILED")
    ended = job.submitted_at + total * job.per_document_s
    messages = [shapes.message("I", f"job accepted with {total} transaction(s)", job.submitted_at)]
    if status == "FAILED":
        messages.append(shapes.message("E", f"all {total} transaction(s) failed", ended))
    elif status == "COMPLETED" and failed:
        messages.append(shapes.message("W", f"{failed} of {total} transaction(s) failed", ended))
    elif status == "COMPLETED":
        messages.append(shapes.message("I", f"all {total} transaction(s) completed", ended))
    return {
        "jobId": job.job_id,
        "batchName": job.batch_name,
        "status": status,
        "transactions": transactions,
        "jobMessages": messages,
    }


def _transaction_view(job: Job, index: int, status: str) -> dict[str, Any]:
    tx = job.transactions[index]
    view: dict[str, Any] = {job.correlation_field: tx.reference, "status": status}
    if status == "COMPLETED":
        location = f"th://jobs/{job.job_id}"
        view["envelopes"] = [shapes.envelope(tx.reference, tx.channel, location=location)]
    else:
        view["envelopes"] = []
    if status == "FAILED":
        ended = job.submitted_at + (index + 1) * job.per_document_s
        failure = composition_failure(tx.reference, shapes.stable_id(job.job_id, index))
        view["exceptions"] = [failure]
        view["jobMessages"] = [shapes.message("E", failure.msg, ended)]
    else:
        view["exceptions"] = []
        view["jobMessages"] = []
    return view


def composition_failure(
    reference: str, exception_id: int | None = None
) -> shapes.BusinessException:
    """The exception of a document that did not compose (``failure_ratio``)."""
    text = f"composition of {reference} failed (simulated)"
    return shapes.exception(shapes.Problem.COMPOSITION_FAILED, text, exception_id)
