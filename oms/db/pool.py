"""The asyncpg pool: one per process, with jsonb passed through as raw bytes."""

from __future__ import annotations

import re
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import asyncpg.pool
import msgspec

from oms import config

Connection: TypeAlias = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
"""What a store function takes: a connection of its own, or one lent by the pool."""

_JSONB_VERSION = b"\x01"

# What "the database is unreachable" looks like from asyncpg: refused or reset
# connections, a server shutting down or starting up, an acquire that timed out.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # The backend died mid-operation and asyncpg's protocol state is broken:
    # "cannot switch to state …; another operation is in progress".
    asyncpg.exceptions.InternalClientError,
)


def _encode_jsonb(value: object) -> bytes:
    # Bytes are JSON already (request data kept as msgspec.Raw): no re-encoding.
    raw = value if isinstance(value, bytes | bytearray | memoryview) else msgspec.json.encode(value)
    return _JSONB_VERSION + bytes(raw)


def _decode_jsonb(data: bytes) -> object:
    return msgspec.json.decode(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


async def create_pool(dsn: str, settings: config.DatabaseSettings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.command_timeout_s,
        init=_init_connection,
    )
    assert pool is not None
    return pool


def redacted(dsn: str) -> str:
    """The DSN as it may be shown (banner, logs): any password replaced by ``***``.

    Handles ``postgresql://user:secret@host/db`` and the ``password=`` parameter
    (``?password=secret`` or ``host=... password=secret``).
    """
    parts = urlsplit(dsn)
    if parts.scheme and parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        dsn = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return _PASSWORD_PARAMETER.sub(r"\1***", dsn)


_PASSWORD_PARAMETER = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)
