"""Jobs of the Thunderhead simulator: their life is computed from the clock, not driven.

A job keeps when it was submitted and how long one document takes; its status and
each transaction's are worked out whenever it is read. No background task, so
nothing to start, supervise or cancel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any
from urllib.parse import quote

import msgspec


class Transaction(msgspec.Struct):
    """The part of a transaction the simulator reads; the rest passes unread."""

    correlationReference: str
    channel: str = "print"


@dataclasses.dataclass
class Job:
    job_id: str
    batch_name: str
    batch_config_res_id: str
    """Empty for generateDocument's one-transaction jobs."""
    submitted_at: float
    """``time.monotonic()`` time (the job file keeps wall-clock time)."""
    per_document_s: float
    transactions: list[Transaction]
    fails: list[bool]
    """Per transaction: whether it ends FAILED, decided on submission."""


def new_job(
    batch_name: str,
    transactions: list[Transaction],
    *,
    batch_config_res_id: str,
    now: float,
    per_document_s: float,
    failure_ratio: float,
) -> Job:
    return Job(
        job_id=f"J-{uuid.uuid4().hex}",
        batch_name=batch_name,
        batch_config_res_id=batch_config_res_id,
        submitted_at=now,
        per_document_s=per_document_s,
        transactions=transactions,
        fails=[fails(tx.correlationReference, failure_ratio) for tx in transactions],
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
    transactions = [
        {
            "correlationReference": tx.correlationReference,
            "status": tx_status,
            "envelopes": [envelope(job, tx)] if tx_status == "COMPLETED" else [],
            "exceptions": composition_failure(tx) if tx_status == "FAILED" else [],
        }
        for tx, tx_status in zip(job.transactions, statuses, strict=True)
    ]
    total, failed = len(statuses), statuses.count("FAILED")
    messages = [{"type": "I", "text": f"job accepted with {total} transaction(s)"}]
    if status == "FAILED":
        messages.append({"type": "E", "text": f"all {total} transaction(s) failed"})
    elif status == "COMPLETED" and failed:
        messages.append({"type": "W", "text": f"{failed} of {total} transaction(s) failed"})
    elif status == "COMPLETED":
        messages.append({"type": "I", "text": f"all {total} transaction(s) completed"})
    return {
        "jobId": job.job_id,
        "batchName": job.batch_name,
        "status": status,
        "transactions": transactions,
        "jobMessages": messages,
    }


def envelope(job: Job, tx: Transaction) -> dict[str, str]:
    name = f"{tx.correlationReference}.pdf"
    return {
        "channel": tx.channel,
        "documentName": name,
        "mimeType": "application/pdf",
        "partLocation": f"th://jobs/{job.job_id}/{quote(name, safe='')}",
    }


def composition_failure(tx: Transaction) -> list[dict[str, str]]:
    message = f"composition of {tx.correlationReference} failed (simulated)"
    return [{"code": "COMPOSITION_FAILED", "message": message}]
