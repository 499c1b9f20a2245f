"""The OAuth2 access token every Thunderhead call carries, fetched one at a time.

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

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from oms import exceptions
from oms.thunderhead import metrics

log = logging.getLogger("oms.thunderhead")


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


@dataclasses.dataclass(slots=True)
class _Flight:
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    token: _Token | None = None
    # Overwritten by the fetch's error; left as is only if the fetch was cancelled.
    error: BaseException = dataclasses.field(
        default_factory=lambda: exceptions.ThunderheadTransient("Thunderhead client closed", 0)
    )


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
        self._task_group = task_group
        self._clock = clock
        self._token: _Token | None = None
        self._flight: _Flight | None = None

    async def get(self) -> str:
        """A token to send: the cached one, or a fresh one when it is due."""
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        flight = await self._join("expiry")
        if flight.token is not None:
            return flight.token.value
        if current is not None and self._clock() < current.expires_at:
            return current.value  # the refresh failed, but the old token still works
        raise flight.error

    async def refresh(self, rejected: str) -> str:
        """A token other than ``rejected``, which Thunderhead just answered 401 to."""
        current = self._token
        if current is not None and current.value != rejected:
            return current.value  # another caller already replaced it
        self._token = None  # known bad: nobody else should send it
        flight = await self._join("401")
        if flight.token is not None:
            return flight.token.value
        raise flight.error

    async def _join(self, trigger: str) -> _Flight:
        """The fetch in progress, started if there is none, once it has finished."""
        flight = self._flight
        if flight is None:
            flight = self._flight = _Flight()
            self._task_group.start_soon(self._run, flight, trigger)
        await flight.done.wait()
        return flight

    async def _run(self, flight: _Flight, trigger: str) -> None:
        # Never raises: the error belongs to the callers waiting on this flight,
        # and raising would cancel the owner's whole task group.
        try:
            grant = await self._fetch()
        except exceptions.ThunderheadError as exc:
            metrics.TOKEN_REFRESHES.labels(trigger, "error").inc()
            flight.error = exc
            log.warning("Thunderhead token fetch failed: %s", exc, extra={"endpoint": "token"})
        except Exception as exc:
            metrics.TOKEN_REFRESHES.labels(trigger, "error").inc()
            flight.error = exc
            log.exception("Thunderhead token fetch failed unexpectedly")
        else:
            metrics.TOKEN_REFRESHES.labels(trigger, "ok").inc()
            now = self._clock()
            lifetime = max(0.0, grant.expires_in_s)
            usable_for = max(lifetime - self._margin_s, lifetime / 2)
            flight.token = self._token = _Token(
                grant.access_token, now + usable_for, now + lifetime
            )
        finally:
            self._flight = None
            flight.done.set()
