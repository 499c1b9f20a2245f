"""Bearer API keys: which source system (or admin) is calling.

Keys are cached briefly in memory so a request costs no database round trip;
a revoked key stops working within ``api_key_cache_ttl_s``.
"""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web

from oms import exceptions
from oms.store import api_keys

PRINCIPAL = web.RequestKey("principal", api_keys.Principal)


class Authenticator:
    def __init__(self, db: asyncpg.Pool, cache_ttl_s: float) -> None:
        self._db = db
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, api_keys.StoredKey | None]] = {}

    async def authenticate(self, authorization: str | None) -> api_keys.Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise exceptions.Unauthorized("send 'Authorization: Bearer <api key>'")
        parts = api_keys.split(token.strip())
        if parts is None:
            raise exceptions.Unauthorized("the API key is malformed")
        key_id, secret = parts
        stored = await self._lookup(key_id)
        if stored is None or not api_keys.matches(stored, secret):
            raise exceptions.Unauthorized("the API key is unknown or revoked")
        return stored.principal

    async def _lookup(self, key_id: str) -> api_keys.StoredKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        async with self._db.acquire() as conn:  # unreachable: 503 from the HTTP layer
            stored = await api_keys.fetch(conn, key_id)
        if len(self._cache) > 10_000:  # bounded: guessed key ids must not grow memory
            self._cache.clear()
        self._cache[key_id] = (now, stored)
        return stored
