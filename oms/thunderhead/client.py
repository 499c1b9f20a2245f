"""The Thunderhead client (docs/thunderhead.md), one instance shared by every actor.

What each endpoint sends and what it returns. How a call is made (limits, token,
timeouts) is ``caller``'s; what its failures mean is ``outcomes``'s. Recipient and
transaction data are never logged.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from oms import httpclient
from oms.config import ThunderheadSettings
from oms.thunderhead.answers import ENCODE, GENERATE, JOBS, SUBMIT, job_decoder
from oms.thunderhead.caller import Caller
from oms.thunderhead.types import (
    GeneratedDocument,
    JobRef,
    JobStatus,
    Transaction,
    TransactionStatus,
)

log = logging.getLogger("oms.thunderhead")


class ThunderheadClient(Caller):
    """Client for Thunderhead's job API; ``oms.thunderhead.outcomes`` has the error rules.

    Use as ``async with ThunderheadClient(settings) as client``; enter and exit in
    the same task (it owns a task group for token fetches). ``settings.base_url``
    must be the absolute URL to call: "empty: the in-process simulator" is resolved
    before the client is built.
    """

    def __init__(
        self, settings: ThunderheadSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(settings, clock=clock)
        self._correlation_field = settings.correlation_field
        self._job = job_decoder(settings.correlation_field)

    async def submit_batch(
        self, batch_config_res_id: int, batch_name: str, transactions: list[Transaction]
    ) -> str:
        """Submit ``transactions`` as one job; return its jobId (as text)."""
        request: dict[str, Any] = {
            "batchConfigResId": batch_config_res_id,
            "batchName": batch_name,
            "transactionDataType": "application/json",
            "transactionData": self.encode_transactions(transactions),
        }
        if self._settings.project_id:
            request["projectId"] = self._settings.project_id
        context = {"batch_name": batch_name, "transactions": len(transactions)}
        answer = await self._post("submitBatch", ENCODE(request), SUBMIT, context)
        job_id = str(answer.job_id).strip()
        log.info(
            "Thunderhead accepted batch %s as job %s",
            batch_name,
            job_id,
            extra={**context, "job_id": job_id},
        )
        return job_id

    def encode_transactions(self, transactions: list[Transaction]) -> str:
        """``transactionData``: Base64 of the JSON array, the reference under its field."""
        return base64.b64encode(ENCODE([self._wire_transaction(t) for t in transactions])).decode(
            "ascii"
        )

    def _wire_transaction(self, transaction: Transaction) -> dict[str, Any]:
        return {
            self._correlation_field: transaction.correlation_reference,
            "templateId": transaction.template_id,
            "templateVersion": transaction.template_version,
            "channel": transaction.channel,
            "language": transaction.language,
            "brand": transaction.brand,
            "recipient": transaction.recipient,
            "data": transaction.data,
        }

    async def job_status(self, job_id: str) -> JobStatus:
        url = self._api_url.joinpath(httpclient.segment(job_id), encoded=True)
        wire = await self._api(
            "jobStatus", "GET", url, self._job, unsafe=False, context={"job_id": job_id}
        )
        return JobStatus(
            job_id=str(wire.job_id),
            status=wire.status,
            batch_name=wire.batch_name,
            transactions=tuple(
                TransactionStatus(
                    correlation_reference=t.correlation_reference,
                    status=t.status,
                    envelopes=t.envelopes,
                    exceptions=t.exceptions,
                    job_messages=t.job_messages,
                )
                for t in wire.transactions
            ),
            job_messages=wire.job_messages,
        )

    async def find_by_reference(self, reference: str) -> list[JobRef]:
        """Every job holding a transaction with this correlation reference."""
        answer = await self._api(
            "findByReference",
            "GET",
            self._api_url,
            JOBS,
            unsafe=False,
            context={"document_id": reference},
            params={"reference": reference},
        )
        return [
            JobRef(job_id=str(j.job_id), batch_name=j.batch_name, status=j.status)
            for j in answer.jobs
        ]

    async def generate_document(
        self,
        batch_config_res_id: int,
        transaction: Transaction,
        *,
        include_document_data: bool = False,
        properties: Mapping[str, str] | None = None,
    ) -> GeneratedDocument:
        """Compose one document synchronously (the public ``GenerateDocument``).

        A business failure is a ``ThunderheadRejected``. The answer ties nothing to
        the document (no correlation field, no job id), so an unanswered call cannot
        be reconciled: the pipeline does not use this (docs/thunderhead.md).
        """
        request: dict[str, Any] = {
            "batchConfigResId": batch_config_res_id,
            "transactionData": base64.b64encode(ENCODE(self._wire_transaction(transaction))).decode(
                "ascii"
            ),
            "transactionDataType": "application/json",
            "transactionRange": 1,
            "properties": [{"name": k, "value": v} for k, v in (properties or {}).items()],
        }
        if self._settings.project_id:
            request["projectId"] = self._settings.project_id
        context = {"document_id": transaction.correlation_reference}
        flag = "true" if include_document_data else "false"
        answer = await self._post(
            "generateDocument",
            ENCODE(request),
            GENERATE,
            context,
            params={"includeDocumentData": flag},
        )
        return GeneratedDocument(
            envelopes=answer.envelopes,
            job_messages=answer.job_messages,
            number_transactions=answer.number_transactions,
        )
