"""What a Thunderhead call's failure means (docs/thunderhead.md, "Status codes and waits").

Every call, token calls included, ends in one of three ways:

- ``ThunderheadTransient``: nothing was done, try again after ``retry_after_s``:
  429 and 503 (Retry-After, else the documented default; both also pause the
  whole client, and a 429 slows it down), 500 and other 5xx, a refused connection,
  a timeout or a lost connection on an idempotent GET, a 401 to a freshly fetched
  token, any refusal from the token endpoint (bad credentials are OMS's problem,
  never a document's), a 2xx whose body cannot be used (GETs). Only a 5xx other
  than 503 is marked ``attempt`` (docs/thunderhead.md, "How OMS counts attempts").
- ``ThunderheadOutcomeUnknown`` (a Transient): a submitBatch or generateDocument
  that may have reached Thunderhead: a timeout or a lost connection after the
  request was sent, a 502/504 (a gateway gave up; Thunderhead may have acted), or a
  2xx whose body cannot be used. Reconcile by reference before sending it again.
- ``ThunderheadRejected``: any other 4xx, a business failure in a 200 (non-empty
  ``exceptions`` or a ``jobMessages`` entry of type ``E``; ``messages`` keeps them
  all), or a request over ``max_request_bytes`` (413, never sent).

A call is ``unsafe`` when it asks Thunderhead for work (submitBatch,
generateDocument): only those can have an unknown outcome. Each failure is
counted under an ``outcome`` label (``metrics``) and logged here, once; logs carry
the endpoint, status, latency and the caller's context, never recipient or
transaction data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

from oms import exceptions, httpclient
from oms.config import ThunderheadSettings
from oms.thunderhead import metrics
from oms.thunderhead.answers import error_answer, messages_of, retry_after, summary

log = logging.getLogger("oms.thunderhead")

E = TypeVar("E", bound=exceptions.ThunderheadError)


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """An answer as read off the wire."""

    status: int
    retry_after: str | None
    body: bytes | None  # None: larger than httpclient.MAX_BODY_BYTES
    latency_s: float

    @property
    def latency_ms(self) -> int:
        return round(self.latency_s * 1000)


def status_error(
    endpoint: str, reply: Reply, unsafe: bool, settings: ThunderheadSettings
) -> tuple[str, exceptions.ThunderheadError] | None:
    """The outcome label and the error for a non-2xx ``reply``; None for a 2xx.

    The caller acts on two outcomes before raising: ``throttled`` pauses the client
    (a 429 also slows it down), ``misconfigured`` is kept for readiness.
    """
    s, status = settings, reply.status
    if 200 <= status < 300:
        return None
    reason = f"{endpoint} answered {status}"
    if status in (429, 503):
        default = s.wait_429_s if status == 429 else s.wait_503_s
        wait = retry_after(reply.retry_after, default)
        return "throttled", exceptions.ThunderheadTransient(reason, wait)
    if status in (502, 504) and unsafe:
        return "outcome_unknown", exceptions.ThunderheadOutcomeUnknown(reason, s.wait_500_s)
    if status >= 500:
        # A token endpoint's 5xx is OMS's wait, never a document's attempt.
        attempt = endpoint != "token"
        error = exceptions.ThunderheadTransient(reason, s.wait_500_s, attempt=attempt)
        return "server_error", error
    if status == 401 or (endpoint == "token" and 400 <= status < 500):
        code = error_answer(reply.body).error
        reason = f"{reason} ({code})" if code else reason
        return "unauthorized", exceptions.ThunderheadTransient(reason, s.wait_500_s)
    if status in (404, 405) and endpoint != "jobStatus":
        # The API path (its version) is wrong for this tenant: OMS's problem,
        # never a document's. Readiness says so; the work waits.
        problem = f"{reason}: check thunderhead.api_path"
        return "misconfigured", exceptions.ThunderheadTransient(problem, s.wait_500_s)
    if 400 <= status < 500:
        said = messages_of(error_answer(reply.body))
        reason = f"{reason}: {summary(said)}" if said else reason
        return "rejected", exceptions.ThunderheadRejected(reason, said, status)
    # 1xx/3xx: not Thunderhead's protocol (a proxy, a wrong base URL).
    return "invalid_answer", unusable(f"{reason}, which OMS does not expect", unsafe, s.wait_500_s)


def transport_error(
    endpoint: str,
    failure: httpclient.Failure,
    cause: Exception,
    *,
    unsafe: bool,
    timeout_s: float,
    wait_s: float,
) -> tuple[str, exceptions.ThunderheadTransient]:
    """The outcome label and the error for a call that got no answer."""
    if failure is httpclient.Failure.CONNECT:
        # Nothing was sent, so even an unsafe call is a plain Transient.
        reason = f"{endpoint}: cannot connect ({httpclient.describe(cause)})"
        return "connection_error", exceptions.ThunderheadTransient(reason, wait_s)
    if failure is httpclient.Failure.TIMEOUT:
        reason = f"{endpoint}: no answer within {timeout_s:g} s"
        quiet = "timeout"
    else:
        reason = f"{endpoint}: connection lost ({httpclient.describe(cause)})"
        quiet = "connection_error"
    if unsafe:
        return "outcome_unknown", exceptions.ThunderheadOutcomeUnknown(reason, wait_s)
    return quiet, exceptions.ThunderheadTransient(reason, wait_s)


def unusable(reason: str, unsafe: bool, wait_s: float) -> exceptions.ThunderheadTransient:
    """An answer OMS cannot use: for an unsafe call, Thunderhead may have acted."""
    kind = exceptions.ThunderheadOutcomeUnknown if unsafe else exceptions.ThunderheadTransient
    return kind(reason, wait_s)


def failed(
    endpoint: str,
    outcome: str,
    error: E,
    context: dict[str, Any],
    reply: Reply | None = None,
) -> E:
    """Count and log a failed call; return ``error`` for the caller to raise."""
    metrics.CALLS.labels(endpoint, outcome).inc()
    extra: dict[str, Any] = {**context, "endpoint": endpoint, "outcome": outcome}
    if reply is not None:
        extra |= {"status": reply.status, "latency_ms": reply.latency_ms}
    log.warning("Thunderhead call failed: %s", error, extra=extra)
    return error


@contextlib.contextmanager
def refusals(endpoint: str) -> Iterator[None]:
    """Count a call the limiter refuses (Thunderhead asked OMS to wait), and re-raise."""
    try:
        yield
    except exceptions.ThunderheadTransient as error:
        metrics.CALLS.labels(endpoint, "paused").inc()
        log.debug("Thunderhead call not sent: %s", error, extra={"endpoint": endpoint})
        raise
