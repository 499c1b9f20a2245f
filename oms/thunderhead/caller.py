"""How one call to Thunderhead is made, and what the calls tell readiness.

Every HTTP call, token calls included, passes one concurrency limit and one rate
limit (``ratelimit``), carries a timeout, and ends as ``outcomes`` says. An API
call carries a bearer token (``token``); a 401 forces one token refresh (shared by
all callers, and only if no one has replaced that token yet) and one retry.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import anyio
import msgspec
from anyio.abc import TaskGroup
from yarl import URL

from oms import exceptions, httpclient
from oms.config import ThunderheadSettings
from oms.thunderhead import metrics, outcomes, token
from oms.thunderhead.answers import TOKEN, Answer, messages_of, strip_prefix, summary
from oms.thunderhead.outcomes import Reply
from oms.thunderhead.ratelimit import RateLimiter

log = logging.getLogger("oms.thunderhead")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class _Open:
    slots: anyio.CapacityLimiter
    tokens: token.TokenCache


class Caller(httpclient.HttpClient[_Open]):
    """Makes Thunderhead calls for ``ThunderheadClient``, which adds the endpoints."""

    def __init__(
        self, settings: ThunderheadSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        base = httpclient.base_url(settings.base_url, "thunderhead.base_url")
        # The pool never holds a call back: the concurrency limit below does.
        super().__init__(
            connections=settings.max_concurrency, headers={"Accept": "application/json"}
        )
        self._settings = settings
        self._clock = clock
        prefix = base.path.rstrip("/")
        self._token_url = base.with_path(prefix + settings.token_path)
        self._api_url = base.with_path(prefix + settings.api_path.rstrip("/"))
        self._token_form, self._token_headers = token.request(settings)
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

    def _start(self, task_group: TaskGroup) -> _Open:
        tokens = token.TokenCache(
            self._fetch_token,
            margin_s=self._settings.token_refresh_margin_s,
            task_group=task_group,
            clock=self._clock,
        )
        return _Open(slots=anyio.CapacityLimiter(self._settings.max_concurrency), tokens=tokens)

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

    async def _post(
        self,
        endpoint: str,
        body: bytes,
        decoder: msgspec.json.Decoder[T],
        context: dict[str, Any],
        params: Mapping[str, str] | None = None,
    ) -> T:
        """A call asking Thunderhead for work: unsafe, and refused here if too large."""
        limit = self._settings.max_request_bytes
        if len(body) > limit:
            raise outcomes.failed(
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
        bearer = await tokens.get()
        for attempt in (1, 2):
            reply = await self._exchange(
                endpoint,
                method,
                url,
                unsafe=unsafe,
                context=context,
                headers={**(headers or {}), "Authorization": f"Bearer {bearer}"},
                **request,
            )
            if reply.status != 401 or attempt == 2:
                break
            metrics.CALLS.labels(endpoint, "unauthorized").inc()
            log.info("Thunderhead refused the token; refreshing it", extra={"endpoint": endpoint})
            bearer = await tokens.refresh(bearer)
        self._check_status(endpoint, reply, unsafe, context)
        answer = self._decode(endpoint, reply, decoder, unsafe, context)
        if isinstance(answer, Answer):
            if answer.failed():
                said = messages_of(answer)
                raise outcomes.failed(
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
                reason = f"{endpoint} answered {reply.status} without a result"
                error = outcomes.unusable(reason, unsafe, self._settings.wait_500_s)
                raise outcomes.failed(endpoint, "invalid_answer", error, context, reply)
        self._api_errors.pop(endpoint, None)
        metrics.CALLS.labels(endpoint, "ok").inc()
        return answer

    async def _fetch_token(self) -> token.Grant:
        reply = await self._exchange(
            "token",
            "POST",
            self._token_url,
            unsafe=False,
            context={},
            data=self._token_form,
            headers=self._token_headers,
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
            error = outcomes.unusable("token answered no token", False, self._settings.wait_500_s)
            raise outcomes.failed("token", "invalid_answer", error, {})
        self.credentials_error = None
        metrics.TOKEN_OK.set(1)
        metrics.CALLS.labels("token", "ok").inc()
        return token.Grant(answer.access_token, answer.expires_in)

    async def _exchange(
        self,
        endpoint: str,
        method: str,
        url: URL,
        *,
        unsafe: bool,
        context: dict[str, Any],
        **request: Any,
    ) -> Reply:
        """One HTTP request under both limits; transport failures raised as Transient."""
        slots = self._open().slots
        with outcomes.refusals(endpoint):
            self._limiter.check()  # refuse at once rather than queue for a slot
        async with slots:
            with outcomes.refusals(endpoint):
                await self._limiter.acquire()
            return await self._send(endpoint, method, url, unsafe, context, request)

    async def _send(
        self,
        endpoint: str,
        method: str,
        url: URL,
        unsafe: bool,
        context: dict[str, Any],
        request: dict[str, Any],
    ) -> Reply:
        """Send; a timeout or lost connection on an unsafe call is an unknown outcome."""
        s = self._settings
        timeout = self._submit_timeout if unsafe else self._timeout
        if isinstance(request.get("data"), bytes):
            # A file-like body is streamed (aiohttp warns that large bytes block the
            # loop); a new one per send, since a 401 retry sends the body again.
            request = {**request, "data": io.BytesIO(request["data"])}

        def no_answer(failure: httpclient.Failure, cause: Exception) -> Exception:
            outcome, error = outcomes.transport_error(
                endpoint,
                failure,
                cause,
                unsafe=unsafe,
                timeout_s=s.submit_timeout_s if unsafe else s.timeout_s,
                wait_s=s.wait_500_s,
            )
            return outcomes.failed(endpoint, outcome, error, context)

        started = time.perf_counter()
        try:
            with metrics.IN_FLIGHT.track_inprogress():
                async with self._request(
                    method,
                    url,
                    timeouts=timeout,
                    failed=no_answer,
                    allow_redirects=False,
                    **request,
                ) as response:
                    body = await httpclient.read_body(response)
                    status, retry_after = response.status, response.headers.get("Retry-After")
        finally:
            elapsed = time.perf_counter() - started
            metrics.LATENCY.labels(endpoint).observe(elapsed)
        reply = Reply(status, retry_after, body, elapsed)
        log.debug(
            "Thunderhead %s answered %d",
            endpoint,
            status,
            extra={
                **context,
                "endpoint": endpoint,
                "status": status,
                "latency_ms": reply.latency_ms,
            },
        )
        return reply

    def _check_status(
        self, endpoint: str, reply: Reply, unsafe: bool, context: dict[str, Any]
    ) -> None:
        """Raise unless ``reply`` is a 2xx; a 429/503 pauses every call first."""
        verdict = outcomes.status_error(endpoint, reply, unsafe, self._settings)
        if verdict is None:
            return
        outcome, error = verdict
        if isinstance(error, exceptions.ThunderheadTransient):
            if outcome == "throttled" and reply.status == 429:
                # The tenant's limit is below our rate.
                sent_at = self._clock() - reply.latency_s
                self._limiter.throttled(error.retry_after_s, sent_at=sent_at)
            elif outcome == "throttled":
                self._limiter.pause(error.retry_after_s)  # maintenance: says nothing about the rate
            elif outcome == "misconfigured":
                self._api_errors[endpoint] = error.reason
        raise outcomes.failed(endpoint, outcome, error, context, reply)

    def _decode(
        self,
        endpoint: str,
        reply: Reply,
        decoder: msgspec.json.Decoder[T],
        unsafe: bool,
        context: dict[str, Any],
    ) -> T:
        try:
            if reply.body is None:
                raise msgspec.DecodeError(f"body over {httpclient.MAX_BODY_BYTES} bytes")
            return decoder.decode(strip_prefix(reply.body))
        except msgspec.DecodeError as exc:
            reason = f"{endpoint} answered {reply.status} with {exc}"
            error = outcomes.unusable(reason, unsafe, self._settings.wait_500_s)
            raise outcomes.failed(endpoint, "invalid_answer", error, context, reply) from exc
