"""API keys: ``oms_<key_id>_<secret>``; only a digest of the secret is stored.

The key id is looked up by index and the digest compared in constant time, so
neither the lookup nor the comparison leaks how much of a guessed secret is right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Literal

import msgspec

from oms.db.pool import Connection

Role = Literal["source", "admin"]
_KEY_FORMAT = re.compile(r"^oms_([a-z0-9]{1,32})_([A-Za-z0-9_\-]{8,128})$")


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: a source system, or an admin."""

    key_id: str
    source_system: str
    role: Role


class StoredKey(msgspec.Struct, frozen=True):
    principal: Principal
    secret_sha256: bytes
    active: bool


def split(api_key: str) -> tuple[str, str] | None:
    match = _KEY_FORMAT.match(api_key)
    return (match.group(1), match.group(2)) if match else None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def matches(stored: StoredKey, secret: str) -> bool:
    return stored.active and hmac.compare_digest(stored.secret_sha256, digest(secret))


def generate(key_id: str | None = None) -> tuple[str, str]:
    """A new random key: (key_id, full key). The full key is shown once, never stored."""
    key_id = key_id or secrets.token_hex(6)
    return key_id, f"oms_{key_id}_{secrets.token_urlsafe(24)}"


async def fetch(conn: Connection, key_id: str) -> StoredKey | None:
    row = await conn.fetchrow(
        """SELECT key_id, secret_sha256, source_system, role, active
           FROM api_keys WHERE key_id = $1""",
        key_id,
    )
    if row is None:
        return None
    return StoredKey(
        Principal(row["key_id"], row["source_system"], row["role"]),
        bytes(row["secret_sha256"]),
        row["active"],
    )


async def upsert(
    conn: Connection,
    api_key: str,
    source_system: str,
    role: Role,
    *,
    is_demo: bool = False,
) -> str:
    """Store (or replace) a key; returns its key id."""
    parts = split(api_key)
    if parts is None:
        raise ValueError("API keys look like oms_<key id>_<secret>")
    key_id, secret = parts
    await conn.execute(
        """INSERT INTO api_keys (key_id, secret_sha256, source_system, role, is_demo, active)
           VALUES ($1, $2, $3, $4, $5, true)
           ON CONFLICT (key_id) DO UPDATE
               SET secret_sha256 = EXCLUDED.secret_sha256,
                   source_system = EXCLUDED.source_system,
                   role = EXCLUDED.role, is_demo = EXCLUDED.is_demo, active = true""",
        key_id,
        digest(secret),
        source_system,
        role,
        is_demo,
    )
    return key_id


async def deactivate_demo_keys(conn: Connection) -> int:
    result: str = await conn.execute("UPDATE api_keys SET active = false WHERE is_demo AND active")
    return int(result.split()[-1])


async def revoke(conn: Connection, key_id: str) -> bool:
    result: str = await conn.execute("UPDATE api_keys SET active = false WHERE key_id = $1", key_id)
    return result.split()[-1] != "0"
