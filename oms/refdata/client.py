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
from typing import TypeVar

import aiohttp
import msgspec
from anyio.abc import TaskGroup
from yarl import URL

from oms import exceptions, httpclient
from oms.config import RefDataSettings
from oms.refdata.cache import Cache
from oms.refdata.types import Brand, DocumentType, Template

T = TypeVar("T")

_DOCUMENT_TYPES = msgspec.json.Decoder(list[DocumentType])
_TEMPLATES = msgspec.json.Decoder(list[Template])
_BRAND = msgspec.json.Decoder(Brand)
_ALL = "all"  # the one key of the document-types cache
_CONNECTIONS = 100  # aiohttp's default pool size; the caches keep calls few


@dataclasses.dataclass(frozen=True, slots=True)
class _Open:
    document_types: Cache[str, list[DocumentType]]
    templates: Cache[str, list[Template]]
    brands: Cache[str, Brand | None]


class RefDataClient(httpclient.HttpClient[_Open]):
    """Cached client for the Reference Data API.

    Use as ``async with RefDataClient(settings) as client``; enter and exit in
    the same task (it owns an anyio task group for background refreshes).
    Returned lists are fresh lists of frozen, shared Structs.
    """

    def __init__(
        self, settings: RefDataSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(connections=_CONNECTIONS)
        self._settings = settings
        self._base = httpclient.base_url(settings.base_url, "refdata.base_url")
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._clock = clock

    def _start(self, task_group: TaskGroup) -> _Open:
        def cache(name: str, fetch: Callable[[str], Awaitable[T]]) -> Cache[str, T]:
            return Cache(
                name,
                fetch,
                ttl_s=self._settings.ttl_s,
                revalidate_window_s=self._settings.revalidate_window_s,
                task_group=task_group,
                clock=self._clock,
            )

        return _Open(
            document_types=cache("document-types", self._fetch_document_types),
            templates=cache("templates", self._fetch_templates),
            brands=cache("brands", self._fetch_brand),
        )

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
        return self._base.joinpath(*map(httpclient.segment, segments), encoded=True)

    async def _get(
        self, url: URL, *, params: Mapping[str, str] | None = None, missing_ok: bool = False
    ) -> bytes | None:
        """The body of a 200, None for a 404 if ``missing_ok``; else raise."""
        request = self._request("GET", url, timeouts=self._timeout, failed=_failed, params=params)
        async with request as response:
            status = response.status
            if status == 200:
                body = await httpclient.read_body(response)
                if body is None:
                    raise exceptions.ReferenceDataError("reference data response is too large")
                return body
        if status == 404 and missing_ok:
            return None
        if status == 429 or status >= 500:
            raise exceptions.ReferenceDataUnavailable(f"reference data answered {status}")
        raise exceptions.ReferenceDataError(f"reference data answered unexpected status {status}")


def _failed(failure: httpclient.Failure, cause: Exception) -> exceptions.OmsError:
    """No answer: the API is down, unless the URL itself is wrong."""
    if failure is httpclient.Failure.INVALID_URL:
        return exceptions.ReferenceDataError(f"invalid reference data URL: {cause}")
    reason = httpclient.describe(cause)
    return exceptions.ReferenceDataUnavailable(f"reference data unreachable ({reason})")


def _decode(decoder: msgspec.json.Decoder[T], body: bytes | None, what: str) -> T:
    try:
        return decoder.decode(body or b"")
    except msgspec.DecodeError as exc:
        raise exceptions.ReferenceDataError(f"undecodable {what}: {exc}") from exc
