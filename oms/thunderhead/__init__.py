"""Thunderhead: the client OMS composes documents through (docs/thunderhead.md)."""

from oms.thunderhead.client import ThunderheadClient
from oms.thunderhead.types import (
    Envelope,
    GeneratedDocument,
    JobException,
    JobMessage,
    JobRef,
    JobStatus,
    Transaction,
    TransactionStatus,
)

__all__ = [
    "Envelope",
    "GeneratedDocument",
    "JobException",
    "JobMessage",
    "JobRef",
    "JobStatus",
    "ThunderheadClient",
    "Transaction",
    "TransactionStatus",
]
