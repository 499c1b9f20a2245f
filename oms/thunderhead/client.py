"""The Thunderhead client (docs/thunderhead.md), one instance shared by every actor.

Every HTTP call, token calls included, passes one concurrency limit and one rate
limit (``ratelimit``), carries a timeout, and ends in one of three ways:

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

A 401 on an API call forces one token refresh (shared by all callers, and only if
no one has replaced that token yet) and one retry.
Recipient and transaction data are never logged; logs carry the endpoint, status,
latency, batch name and job id.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import anyio
import msgspec
from yarl import URL

from oms import exceptions
from oms.config import ThunderheadSettings
from oms.thunderhead import metrics
from oms.thunderhead.answers import (
    ENCODE,
    GENERATE,
    JOBS,
    MAX_BODY_BYTES,
    SUBMIT,
    TOKEN,
    Answer,
    error_answer,
    job_decoder,
    messages_of,
    retry_after,
    strip_prefix,
    summary,
)
from oms.thunderhead.ratelimit import RateLimiter
from oms.thunderhead.token import Grant, TokenCache
from oms.thunderhead.types import (
    GeneratedDocument,
    JobRef,
    JobStatus,
    Transaction,
    TransactionStatus,
)

log = logging.getLogger("oms.thunderhead")

T = TypeVar("T")
E = TypeVar("E", bound=exceptions.ThunderheadError)


@dataclasses.dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    retry_after: str | None
    body: bytes | None  # None: larger than MAX_BODY_BYTES
    latency_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Open:
    session: aiohttp.ClientSession
    slots: anyio.CapacityLimiter
    tokens: TokenCache


class ThunderheadClient:
    """Client for Thunderhead's job API; see the module docstring for the error rules.

    Use as ``async with ThunderheadClient(settings) as client``; enter and exit in
    the same task (it owns a task group for token fetches). ``settings.base_url``
    must be the absolute URL to call: the caller resolves "empty: the in-process
    simulator" before building the client.
    """

    def __init__(
        self, settings: ThunderheadSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        base = URL(settings.base_url)
        if not base.absolute or base.scheme not in ("http", "https"):
            raise exceptions.ConfigError("thunderhead.base_url", "must be an absolute http(s) URL")
        for key in ("rate_limit_per_s", "rate_limit_burst", "max_concurrency"):
            if getattr(settings, key) <= 0:
                raise exceptions.ConfigError(f"thunderhead.{key}", "must be greater than 0")
        self._settings = settings
        self._clock = clock
        prefix = base.path.rstrip("/")
        self._token_url = base.with_path(prefix + settings.token_path)
        self._api_url = base.with_path(prefix + settings.api_path.rstrip("/"))
        # RFC 6749 2.3.1: each part form-urlencoded, then Base64 of "id:secret".
        credentials = f"{quote_plus(settings.client_id)}:{quote_plus(settings.client_secret)}"
        self._basic_auth = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        self._correlation_field = settings.correlation_field
        self._job = job_decoder(settings.correlation_field)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        # A connect timeout proves nothing was sent, so it is a plain Transient.
        self._submit_timeout = aiohttp.ClientTimeout(
            total=settings.submit_timeout_s,
            connect=min(settings.timeout_s, settings.submit_timeout_s),
        )
        self._limiter = RateLimiter(
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
            max_wait_s=settings.timeout_s,
            min_rate_per_s=settings.rate_min_per_s,
            decrease_factor=settings.rate_decrease_factor,
            recovery_s=settings.rate_recovery_s,
            ceiling_ttl_s=settings.rate_ceiling_ttl_s,
            clock=clock,
        )
        self.credentials_error: str | None = None
        """Why the token endpoint last refused OMS (None: it did not); for readiness."""
        self._api_errors: dict[str, str] = {}  # endpoint → why its path was not found
        metrics.TOKEN_OK.set(float("nan"))  # unknown until the first fetch
        self._stack: AsyncExitStack | None = None
        self._state: _Open | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("ThunderheadClient is already open")
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(headers={"Accept": "application/json"})
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # on exit: abandon a token fetch
            tokens = TokenCache(
                self._fetch_token,
                margin_s=self._settings.token_refresh_margin_s,
                task_group=tg,
                clock=self._clock,
            )
            slots = anyio.CapacityLimiter(self._settings.max_concurrency)
            self._state = _Open(session=session, slots=slots, tokens=tokens)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._state = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def api_error(self) -> str | None:
        """Why an API path was last not found (None: every endpoint fine since); for
        readiness. Kept per endpoint, so one working endpoint does not hide another."""
        return next(iter(self._api_errors.values()), None)

    def paused_for(self) -> float:
        """Seconds left of a pause Thunderhead asked for (429/503) that a call would not
        wait out; 0 when calls may go."""
        left = self._limiter.paused_for()
        return left if left > self._settings.timeout_s else 0.0

    @property
    def rate_per_s(self) -> float:
        """The call rate in force now (it drops after a 429, then climbs back)."""
        return self._limiter.rate_per_s

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
        url = self._api_url.joinpath(_segment(job_id), encoded=True)
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

    async def ping(self) -> bool:
        """True if OMS holds, or can fetch within ``timeout_s``, a token: for readiness."""
        tokens = self._open().tokens
        with anyio.move_on_after(self._settings.timeout_s):
            try:
                await tokens.get()
            except exceptions.ThunderheadError:
                return False
            return True
        return False

    def _open(self) -> _Open:
        if self._state is None:
            raise RuntimeError("ThunderheadClient is not open; use `async with`")
        return self._state

    async def _post(
        self,
        endpoint: str,
        body: bytes,
        decoder: msgspec.json.Decoder[T],
        context: dict[str, Any],
        params: Mapping[str, str] | None = None,
    ) -> T:
        limit = self._settings.max_request_bytes
        if len(body) > limit:
            raise self._failed(
                endpoint,
                "rejected",
                exceptions.ThunderheadRejected(
                    f"{endpoint} request of {len(body)} bytes is over the {limit} byte limit",
                    [],
                    413,
                ),
                context,
            )
        return await self._api(
            endpoint,
            "POST",
            self._api_url / endpoint,
            decoder,
            unsafe=True,
            context=context,
            data=body,
            headers={"Content-Type": "application/json"},
            **({"params": params} if params else {}),
        )

    async def _api(
        self,
        endpoint: str,
        method: str,
        url: URL,
        decoder: msgspec.json.Decoder[T],
        *,
        unsafe: bool,
        context: dict[str, Any],
        headers: Mapping[str, str] | None = None,
        **request: Any,
    ) -> T:
        """One API call with a bearer token; on a 401, one refresh and one retry."""
        tokens = self._open().tokens
        token = await tokens.get()
        for attempt in (1, 2):
            reply = await self._exchange(
                endpoint,
                method,
                url,
                unsafe=unsafe,
                context=context,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                **request,
            )
            if reply.status != 401 or attempt == 2:
                break
            metrics.CALLS.labels(endpoint, "unauthorized").inc()
            log.info("Thunderhead refused the token; refreshing it", extra={"endpoint": endpoint})
            token = await tokens.refresh(token)
        self._check_status(endpoint, reply, unsafe, context)
        answer = self._decode(endpoint, reply, decoder, unsafe, context)
        if isinstance(answer, Answer):
            if answer.failed():
                said = messages_of(answer)
                raise self._failed(
                    endpoint,
                    "rejected",
                    exceptions.ThunderheadRejected(
                        f"{endpoint} failed: {summary(said)}",
                        said,
                        reply.status,
                    ),
                    context,
                    reply,
                )
            if not answer.usable():
                raise self._failed(
                    endpoint,
                    "invalid_answer",
                    self._unusable(f"{endpoint} answered {reply.status} without a result", unsafe),
                    context,
                    reply,
                )
        self._api_errors.pop(endpoint, None)
        metrics.CALLS.labels(endpoint, "ok").inc()
        return answer

    async def _fetch_token(self) -> Grant:
        s = self._settings
        form = {"grant_type": s.grant_type}
        headers: dict[str, str] = {}
        if s.grant_type == "password":
            form |= {"username": s.username, "password": s.password}
        # ONE client authentication method per request (RFC 6749 2.3.1).
        if s.client_auth == "basic":
            headers["Authorization"] = self._basic_auth
        else:
            form |= {"client_id": s.client_id, "client_secret": s.client_secret}
        reply = await self._exchange(
            "token",
            "POST",
            self._token_url,
            unsafe=False,
            context={},
            data=form,
            headers=headers,
        )
        try:
            self._check_status("token", reply, False, {})
        except exceptions.ThunderheadTransient as exc:
            if 400 <= reply.status < 500 and reply.status != 429:
                self.credentials_error = exc.reason
                metrics.TOKEN_OK.set(0)
            raise
        answer = self._decode("token", reply, TOKEN, False, {})
        if not answer.access_token:
            raise self._failed(
                "token", "invalid_answer", self._unusable("token answered no token", False), {}
            )
        self.credentials_error = None
        metrics.TOKEN_OK.set(1)
        metrics.CALLS.labels("token", "ok").inc()
        return Grant(answer.access_token, answer.expires_in)

    async def _exchange(
        self,
        endpoint: str,
        method: str,
        url: URL,
        *,
        unsafe: bool,
        context: dict[str, Any],
        **request: Any,
    ) -> _Reply:
        """One HTTP request under both limits; transport failures raised as Transient."""
        state = self._open()
        try:
            self._limiter.check()  # refuse at once rather than queue for a slot
        except exceptions.ThunderheadTransient as exc:
            _refused(endpoint, exc)
            raise
        async with state.slots:
            try:
                await self._limiter.acquire()
            except exceptions.ThunderheadTransient as exc:
                _refused(endpoint, exc)
                raise
            return await self._send(state.session, endpoint, method, url, unsafe, context, request)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        method: str,
        url: URL,
        unsafe: bool,
        context: dict[str, Any],
        request: dict[str, Any],
    ) -> _Reply:
        """Send; a timeout or lost connection on an unsafe call is an unknown outcome."""
        timeout = self._submit_timeout if unsafe else self._timeout
        if isinstance(request.get("data"), bytes):
            # A file-like body is streamed (aiohttp warns that large bytes block the
            # loop); a new one per send, since a 401 retry sends the body again.
            request = {**request, "data": io.BytesIO(request["data"])}
        retry = self._settings.wait_500_s
        started = time.perf_counter()
        try:
            with metrics.IN_FLIGHT.track_inprogress():
                async with session.request(
                    method, url, timeout=timeout, allow_redirects=False, **request
                ) as response:
                    body = await _read_body(response)
                    status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            reason = f"{endpoint}: cannot connect ({_why(exc)})"
            error = exceptions.ThunderheadTransient(reason, retry)
            raise self._failed(endpoint, "connection_error", error, context) from exc
        except TimeoutError as exc:
            reason = f"{endpoint}: no answer within {timeout.total:g} s"
            if unsafe:
                error = exceptions.ThunderheadOutcomeUnknown(reason, retry)
                raise self._failed(endpoint, "outcome_unknown", error, context) from exc
            error = exceptions.ThunderheadTransient(reason, retry)
            raise self._failed(endpoint, "timeout", error, context) from exc
        except aiohttp.ClientError as exc:
            reason = f"{endpoint}: connection lost ({_why(exc)})"
            if unsafe:
                error = exceptions.ThunderheadOutcomeUnknown(reason, retry)
                raise self._failed(endpoint, "outcome_unknown", error, context) from exc
            error = exceptions.ThunderheadTransient(reason, retry)
            raise self._failed(endpoint, "connection_error", error, context) from exc
        finally:
            elapsed = time.perf_counter() - started
            metrics.LATENCY.labels(endpoint).observe(elapsed)
        reply = _Reply(status, retry_after, body, elapsed)
        log.debug(
            "Thunderhead %s answered %d",
            endpoint,
            status,
            extra={**context, "endpoint": endpoint, "status": status, "latency_ms": _ms(reply)},
        )
        return reply

    def _check_status(
        self, endpoint: str, reply: _Reply, unsafe: bool, context: dict[str, Any]
    ) -> None:
        """Raise unless ``reply`` is a 2xx."""
        s, status = self._settings, reply.status
        if 200 <= status < 300:
            return
        error: exceptions.ThunderheadError
        reason = f"{endpoint} answered {status}"
        if status in (429, 503):
            default = s.wait_429_s if status == 429 else s.wait_503_s
            wait = retry_after(reply.retry_after, default)
            if status == 429:
                # The tenant's limit is below our rate.
                self._limiter.throttled(wait, sent_at=self._clock() - reply.latency_s)
            else:
                self._limiter.pause(wait)  # maintenance: says nothing about the rate
            error = exceptions.ThunderheadTransient(reason, wait)
            raise self._failed(endpoint, "throttled", error, context, reply)
        if status in (502, 504) and unsafe:
            error = exceptions.ThunderheadOutcomeUnknown(reason, s.wait_500_s)
            raise self._failed(endpoint, "outcome_unknown", error, context, reply)
        if status >= 500:
            # A token endpoint's 5xx is OMS's wait, never a document's attempt.
            attempt = endpoint != "token"
            error = exceptions.ThunderheadTransient(reason, s.wait_500_s, attempt=attempt)
            raise self._failed(endpoint, "server_error", error, context, reply)
        if status == 401 or (endpoint == "token" and 400 <= status < 500):
            code = error_answer(reply.body).error
            reason = f"{reason} ({code})" if code else reason
            error = exceptions.ThunderheadTransient(reason, s.wait_500_s)
            raise self._failed(endpoint, "unauthorized", error, context, reply)
        if status in (404, 405) and endpoint != "jobStatus":
            # The API path (its version) is wrong for this tenant: OMS's problem,
            # never a document's. Readiness says so; the work waits.
            problem = self._api_errors[endpoint] = f"{reason}: check thunderhead.api_path"
            error = exceptions.ThunderheadTransient(problem, s.wait_500_s)
            raise self._failed(endpoint, "misconfigured", error, context, reply)
        if 400 <= status < 500:
            said = messages_of(error_answer(reply.body))
            reason = f"{reason}: {summary(said)}" if said else reason
            error = exceptions.ThunderheadRejected(reason, said, status)
            raise self._failed(endpoint, "rejected", error, context, reply)
        # 1xx/3xx: not Thunderhead's protocol (a proxy, a wrong base URL).
        error = self._unusable(f"{reason}, which OMS does not expect", unsafe)
        raise self._failed(endpoint, "invalid_answer", error, context, reply)

    def _decode(
        self,
        endpoint: str,
        reply: _Reply,
        decoder: msgspec.json.Decoder[T],
        unsafe: bool,
        context: dict[str, Any],
    ) -> T:
        try:
            if reply.body is None:
                raise msgspec.DecodeError(f"body over {MAX_BODY_BYTES} bytes")
            return decoder.decode(strip_prefix(reply.body))
        except msgspec.DecodeError as exc:
            error = self._unusable(f"{endpoint} answered {reply.status} with {exc}", unsafe)
            raise self._failed(endpoint, "invalid_answer", error, context, reply) from exc

    def _unusable(self, reason: str, unsafe: bool) -> exceptions.ThunderheadTransient:
        kind = exceptions.ThunderheadOutcomeUnknown if unsafe else exceptions.ThunderheadTransient
        return kind(reason, self._settings.wait_500_s)

    @staticmethod
    def _failed(
        endpoint: str,
        outcome: str,
        error: E,
        context: dict[str, Any],
        reply: _Reply | None = None,
    ) -> E:
        """Count and log a failed call; return ``error`` for the caller to raise."""
        metrics.CALLS.labels(endpoint, outcome).inc()
        extra: dict[str, Any] = {**context, "endpoint": endpoint, "outcome": outcome}
        if reply is not None:
            extra |= {"status": reply.status, "latency_ms": _ms(reply)}
        log.warning("Thunderhead call failed: %s", error, extra=extra)
        return error


def _refused(endpoint: str, error: exceptions.ThunderheadTransient) -> None:
    """Count a call the limiter refused because Thunderhead asked OMS to wait."""
    metrics.CALLS.labels(endpoint, "paused").inc()
    log.debug("Thunderhead call not sent: %s", error, extra={"endpoint": endpoint})


def _segment(value: str) -> str:
    # Encode the segment whole, dots included, so an id such as "a/b" or ".."
    # cannot reach a different path.
    return quote(value, safe="").replace(".", "%2E")


async def _read_body(response: aiohttp.ClientResponse) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65_536):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _ms(reply: _Reply) -> int:
    return round(reply.latency_s * 1000)
