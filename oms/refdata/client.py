"""The Reference Data API client, cached so intake keeps validating through an outage.

Timeouts, connection errors, 5xx and 429 mean "the API is down": a cached value
of any age is served, and with nothing cached ``ReferenceDataUnavailable`` is
raised. Anything else unexpected (another status, a body that does not decode)
is ``ReferenceDataError``: the API answered, wrongly, and serving old data would
hide that.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
import msgspec
from yarl import URL

from oms import exceptions
from oms.config import RefDataSettings
from oms.refdata.cache import Cache
from oms.refdata.types import Brand, DocumentType, Template

T = TypeVar("T")

_DOCUMENT_TYPES = msgspec.json.Decoder(list[DocumentType])
_TEMPLATES = msgspec.json.Decoder(list[Template])
_BRAND = msgspec.json.Decoder(Brand)
_MAX_BODY_BYTES = 16 * 1024 * 1024
_ALL = "all"  # the one key of the document-types cache


@dataclasses.dataclass(frozen=True, slots=True)
class _Open:
    session: aiohttp.ClientSession
    document_types: Cache[str, list[DocumentType]]
    templates: Cache[str, list[Template]]
    brands: Cache[str, Brand | None]


class RefDataClient:
    """Cached client for the Reference Data API.

    Use as ``async with RefDataClient(settings) as client``; enter and exit in
    the same task (it owns an anyio task group for background refreshes).
    Returned lists are fresh lists of frozen, shared Structs.
    """

    def __init__(
        self, settings: RefDataSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        base = URL(settings.base_url)
        if not base.absolute or base.scheme not in ("http", "https"):
            raise exceptions.ConfigError("refdata.base_url", "must be an absolute http(s) URL")
        self._settings = settings
        self._base = base
        self._clock = clock
        self._stack: AsyncExitStack | None = None
        self._state: _Open | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("RefDataClient is already open")
        s = self._settings
        async with AsyncExitStack() as stack:
            timeout = aiohttp.ClientTimeout(total=s.timeout_s)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # on exit: drop pending refreshes

            def cache(name: str, fetch: Callable[[str], Awaitable[T]]) -> Cache[str, T]:
                return Cache(
                    name,
                    fetch,
                    ttl_s=s.ttl_s,
                    revalidate_window_s=s.revalidate_window_s,
                    task_group=tg,
                    clock=self._clock,
                )

            self._state = _Open(
                session=session,
                document_types=cache("document-types", self._fetch_document_types),
                templates=cache("templates", self._fetch_templates),
                brands=cache("brands", self._fetch_brand),
            )
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

    async def document_types(self) -> list[DocumentType]:
        return list(await self._open().document_types.get(_ALL))

    async def templates(self, document_type: str) -> list[Template]:
        """Every template of ``document_type``, active or not; callers filter."""
        return list(await self._open().templates.get(document_type))

    async def brand(self, code: str) -> Brand | None:
        """The brand, or None if the API does not know it (cached like a brand)."""
        return await self._open().brands.get(code)

    async def ping(self) -> bool:
        """True if the API answers now; bypasses the cache, for readiness checks."""
        try:
            await self._get(self._url("reference", "document-types"))
        except exceptions.OmsError:
            return False
        return True

    def _open(self) -> _Open:
        if self._state is None:
            raise RuntimeError("RefDataClient is not open; use `async with`")
        return self._state

    async def _fetch_document_types(self, _key: str) -> list[DocumentType]:
        body = await self._get(self._url("reference", "document-types"))
        return _decode(_DOCUMENT_TYPES, body, "document types")

    async def _fetch_templates(self, document_type: str) -> list[Template]:
        url = self._url("reference", "templates")
        body = await self._get(url, params={"document_type": document_type})
        templates = _decode(_TEMPLATES, body, "templates")
        # Callers trust the type; an API that ignored the filter must not leak others in.
        return [t for t in templates if t.document_type == document_type]

    async def _fetch_brand(self, code: str) -> Brand | None:
        body = await self._get(self._url("reference", "brands", code), missing_ok=True)
        return None if body is None else _decode(_BRAND, body, "brand")

    def _url(self, *segments: str) -> URL:
        # Encode each segment whole, dots included, so a code such as "a/b" or
        # ".." cannot reach a different path.
        encoded = [quote(s, safe="").replace(".", "%2E") for s in segments]
        return self._base.joinpath(*encoded, encoded=True)

    async def _get(
        self, url: URL, *, params: Mapping[str, str] | None = None, missing_ok: bool = False
    ) -> bytes | None:
        """The body of a 200, None for a 404 if ``missing_ok``; else raise."""
        session = self._open().session
        try:
            async with session.get(url, params=params) as response:
                status = response.status
                if status == 200:
                    return await _read_body(response)
        except aiohttp.InvalidURL as exc:
            raise exceptions.ReferenceDataError(f"invalid reference data URL: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise exceptions.ReferenceDataUnavailable(
                f"reference data unreachable ({reason})"
            ) from exc
        if status == 404 and missing_ok:
            return None
        if status == 429 or status >= 500:
            raise exceptions.ReferenceDataUnavailable(f"reference data answered {status}")
        raise exceptions.ReferenceDataError(f"reference data answered unexpected status {status}")


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65_536):
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise exceptions.ReferenceDataError("reference data response is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes | None, what: str) -> T:
    try:
        return decoder.decode(body or b"")
    except msgspec.DecodeError as exc:
        raise exceptions.ReferenceDataError(f"undecodable {what}: {exc}") from exc
