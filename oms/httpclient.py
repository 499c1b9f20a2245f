"""What OMS's HTTP clients (Reference Data, Thunderhead) share.

A client is an ``HttpClient`` used as ``async with``: entering opens one aiohttp
session with a bounded connection pool and one task group for the client's
background work (single-flight fetches); leaving cancels that work, then closes
the session. Every request carries its own timeouts (``_request`` requires them).

A request that fails before its answer is read is named by a ``Failure`` and
handed to the client, which turns it into the OMS exception its callers expect:
only the client knows what "no answer" means for its calls (Reference Data is
down; a Thunderhead submission's outcome is unknown). Status codes and bodies are
the client's to judge too, for the same reason.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
from anyio.abc import TaskGroup
from yarl import URL

from oms import exceptions

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest answer body OMS reads; a larger one is not read to the end."""

S = TypeVar("S")


class Failure(enum.Enum):
    """Why a request got no answer (or lost it while reading)."""

    INVALID_URL = "invalid URL"
    CONNECT = "cannot connect"  # nothing was sent
    TIMEOUT = "no answer in time"
    LOST = "connection lost"


def base_url(value: str, key: str) -> URL:
    """``value`` as a client's base URL; ``key`` names the setting in the error."""
    url = URL(value)
    if not url.absolute or url.scheme not in ("http", "https"):
        raise exceptions.ConfigError(key, "must be an absolute http(s) URL")
    return url


def segment(value: str) -> str:
    """``value`` as one path segment, encoded whole (dots included) so that a value
    such as "a/b" or ".." cannot reach a different path."""
    return quote(value, safe="").replace(".", "%2E")


def describe(exc: BaseException) -> str:
    """An exception for a log line or a reason: its type, and its text if any."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def read_body(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None (the rest unread) once it is over ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65_536):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class HttpClient(abc.ABC, Generic[S]):
    """Base of a client that holds one session while open, plus state ``S`` that
    ``_start`` builds from the task group (caches, limiters)."""

    def __init__(self, *, connections: int, headers: Mapping[str, str] | None = None) -> None:
        self._connections = connections
        self._headers = dict(headers or {})
        self._stack: AsyncExitStack | None = None
        self._session: aiohttp.ClientSession | None = None
        self._state: S | None = None

    @abc.abstractmethod
    def _start(self, task_group: TaskGroup) -> S:
        """The state the open client works with; its background work goes in ``task_group``."""

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{type(self).__name__} is already open")
        async with AsyncExitStack() as stack:
            connector = aiohttp.TCPConnector(limit=self._connections)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, headers=self._headers)
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # on exit: abandon background work
            self._session, self._state = session, self._start(tg)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._session, self._state = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    def _open(self) -> S:
        if self._state is None:
            raise self._closed()
        return self._state

    def _closed(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} is not open; use `async with`")

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        url: URL,
        *,
        timeouts: aiohttp.ClientTimeout,
        failed: Callable[[Failure, Exception], Exception],
        **request: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, for the ``async with`` body to read. A failure to connect, to
        get an answer in time or to read it all raises ``failed(failure, cause)``."""
        session = self._session
        if session is None:
            raise self._closed()
        try:
            async with session.request(method, url, timeout=timeouts, **request) as response:
                yield response
        except aiohttp.InvalidURL as exc:
            raise failed(Failure.INVALID_URL, exc) from exc
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            raise failed(Failure.CONNECT, exc) from exc
        except TimeoutError as exc:
            raise failed(Failure.TIMEOUT, exc) from exc
        except aiohttp.ClientError as exc:
            raise failed(Failure.LOST, exc) from exc
