"""Thunderhead's answers as the client decodes them (docs/thunderhead.md).

Private to the client: what a 2xx must carry to be usable, what makes a 200 a
business failure, and the helpers that read error bodies and Retry-After.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime
from typing import Any

import msgspec

from oms.thunderhead.types import Envelope, JobException, JobMessage, messages

JSON_PREFIX = b"while(1);"
MAX_RETRY_AFTER_S = 86_400.0


class TokenAnswer(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str = "bearer"
    expires_in: float = 1800.0  # optional in RFC 6749 5.1; Nuxeo assumes 1800 s [docs: S4]


class Answer(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An answer that may carry a business failure even with status 200."""

    exceptions: tuple[JobException, ...] = ()
    job_messages: tuple[JobMessage, ...] = ()

    def failed(self) -> bool:
        return bool(self.exceptions) or any(m.msg_type == "E" for m in self.job_messages)

    def usable(self) -> bool:
        return True


class SubmitAnswer(Answer, frozen=True, kw_only=True):
    job_id: int | str | None = None  # a number on the wire; a string is accepted

    def failed(self) -> bool:
        # A job id means a job exists, whatever else the answer says: refusing it
        # would send its documents again. Its transactions' verdicts come by polling.
        return super().failed() and not self.usable()

    def usable(self) -> bool:
        return self.job_id is not None and str(self.job_id).strip() != ""


class GenerateAnswer(Answer, frozen=True, kw_only=True):
    envelopes: tuple[Envelope, ...] = ()
    number_transactions: int = 0

    def usable(self) -> bool:
        return bool(self.envelopes)


class WireJobRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    job_id: int | str
    batch_name: str = ""
    status: str = ""


class JobsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    jobs: tuple[WireJobRef, ...]  # required: a missing list must not read as "never submitted"


class ErrorAnswer(Answer, frozen=True, kw_only=True):
    error: str = ""  # OAuth2's error code (invalid_client, invalid_token)
    id: int | str | None = None  # a 403's {id, msg} [docs: S3]
    msg: str = ""


def job_decoder(correlation_field: str) -> msgspec.json.Decoder[Any]:
    """A decoder of job status answers whose transactions name the reference
    ``correlation_field`` (the tenant's data model chooses it)."""
    transaction = msgspec.defstruct(
        "WireTransactionStatus",
        [
            ("correlation_reference", str, ""),
            ("status", str, ""),
            ("envelopes", tuple[Envelope, ...], ()),
            ("exceptions", tuple[JobException, ...], ()),
            ("job_messages", tuple[JobMessage, ...], ()),
        ],
        rename={"correlation_reference": correlation_field, "job_messages": "jobMessages"},
        kw_only=True,
        frozen=True,
    )
    job = msgspec.defstruct(
        "WireJobStatus",
        [
            ("job_id", int | str),
            ("status", str),
            ("batch_name", str, ""),
            ("transactions", tuple[transaction, ...], ()),  # type: ignore[valid-type]
            ("job_messages", tuple[JobMessage, ...], ()),
        ],
        rename="camel",
        kw_only=True,
        frozen=True,
    )
    return msgspec.json.Decoder(job)


ENCODE = msgspec.json.Encoder().encode
TOKEN = msgspec.json.Decoder(TokenAnswer)
SUBMIT = msgspec.json.Decoder(SubmitAnswer)
GENERATE = msgspec.json.Decoder(GenerateAnswer)
JOBS = msgspec.json.Decoder(JobsAnswer)
ERROR = msgspec.json.Decoder(ErrorAnswer)


def strip_prefix(body: bytes) -> bytes:
    return body.lstrip().removeprefix(JSON_PREFIX)


def error_answer(body: bytes | None) -> ErrorAnswer:
    try:
        return ERROR.decode(strip_prefix(body or b""))
    except msgspec.DecodeError:
        return ErrorAnswer()


def messages_of(answer: Answer) -> list[dict[str, object]]:
    """Every exception, then every job message, as Thunderhead wrote them."""
    found: list[dict[str, object]] = messages(answer.exceptions, answer.job_messages)
    if isinstance(answer, ErrorAnswer) and answer.msg:
        found.append({"id": answer.id, "msg": answer.msg})
    return found


def summary(said: list[dict[str, object]]) -> str:
    """The texts of Thunderhead's messages, for a log line or a document's error."""
    texts = [str(m.get("msg") or m.get("msgText") or "") for m in said]
    texts = [t for t in texts if t]
    if not texts:
        return f"{len(said)} message(s)"
    more = f" (+{len(texts) - 3} more)" if len(texts) > 3 else ""
    return "; ".join(texts[:3]) + more


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date), else ``default``."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return default
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)
