"""The OAuth2 access token every Thunderhead call carries: how it is asked for, and
its cache, which fetches it one at a time.

The request carries the grant and ONE client authentication method (RFC 6749
2.3.1; docs/thunderhead.md, "Token").

A token is used until ``expires_in - margin_s`` (at least half its lifetime), then
refreshed. Every fetch is single-flight: it runs in the owner's task group, and all
callers that need a token meanwhile wait for that one fetch and share its result or
its error, so a caller that gives up does not cancel it for the others.

A 401 on an API call asks for a refresh *of the token that got the 401*: if another
caller has already replaced it, the new one is returned without a fetch.
If a refresh that is due fails while the old token has not expired yet, the old
token is still used.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote_plus

from anyio.abc import TaskGroup

from oms import exceptions
from oms.config import ThunderheadSettings
from oms.singleflight import SingleFlight
from oms.thunderhead import metrics

log = logging.getLogger("oms.thunderhead")


def request(settings: ThunderheadSettings) -> tuple[dict[str, str], dict[str, str]]:
    """The form and the headers of a token request."""
    s = settings
    form = {"grant_type": s.grant_type}
    headers: dict[str, str] = {}
    if s.grant_type == "password":
        form |= {"username": s.username, "password": s.password}
    if s.client_auth == "basic":
        # RFC 6749 2.3.1: each part form-urlencoded, then Base64 of "id:secret".
        credentials = f"{quote_plus(s.client_id)}:{quote_plus(s.client_secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    else:
        form |= {"client_id": s.client_id, "client_secret": s.client_secret}
    return form, headers


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What the token endpoint answered."""

    access_token: str
    expires_in_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float
    expires_at: float


class TokenCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[Grant]],
        *,
        margin_s: float,
        task_group: TaskGroup,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._margin_s = margin_s
        self._clock = clock
        self._token: _Token | None = None
        self._flights: SingleFlight[None, _Token] = SingleFlight(
            task_group,
            closed=lambda: exceptions.ThunderheadTransient("Thunderhead client closed", 0),
        )

    async def get(self) -> str:
        """A token to send: the cached one, or a fresh one when it is due."""
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        try:
            return (await self._join("expiry")).value
        except Exception:
            if current is not None and self._clock() < current.expires_at:
                return current.value  # the refresh failed, but the old token still works
            raise

    async def refresh(self, rejected: str) -> str:
        """A token other than ``rejected``, which Thunderhead just answered 401 to."""
        current = self._token
        if current is not None and current.value != rejected:
            return current.value  # another caller already replaced it
        self._token = None  # known bad: nobody else should send it
        return (await self._join("401")).value

    async def _join(self, trigger: str) -> _Token:
        """The fetch in progress (``trigger`` says why, if this starts it), once done."""
        return await self._flights.join(None, functools.partial(self._fetch_and_keep, trigger))

    async def _fetch_and_keep(self, trigger: str) -> _Token:
        try:
            grant = await self._fetch()
        except exceptions.ThunderheadError as exc:
            metrics.TOKEN_REFRESHES.labels(trigger, "error").inc()
            log.warning("Thunderhead token fetch failed: %s", exc, extra={"endpoint": "token"})
            raise
        except Exception:
            metrics.TOKEN_REFRESHES.labels(trigger, "error").inc()
            log.exception("Thunderhead token fetch failed unexpectedly")
            raise
        metrics.TOKEN_REFRESHES.labels(trigger, "ok").inc()
        now = self._clock()
        lifetime = max(0.0, grant.expires_in_s)
        usable_for = max(lifetime - self._margin_s, lifetime / 2)
        self._token = _Token(grant.access_token, now + usable_for, now + lifetime)
        return self._token
