"""``python -m oms.keys``: create, list and revoke API keys in the configured database.

The full key is printed once at creation and never stored: only a digest of its
secret is. Source-system keys call /v1; admin keys call /admin.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from oms import config
from oms.store import api_keys


async def _main(args: argparse.Namespace, dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if args.command == "create":
            key_id, key = api_keys.generate()
            role: api_keys.Role = "admin" if args.admin else "source"
            await api_keys.upsert(conn, key, args.source_system, role)
            print(key)
            print(f"key id {key_id}, {role} key for {args.source_system!r}", file=sys.stderr)
        elif args.command == "revoke":
            if not await api_keys.revoke(conn, args.key_id):
                print(f"no key with id {args.key_id!r}", file=sys.stderr)
                return 1
        else:
            rows = await conn.fetch(
                "SELECT key_id, source_system, role, active, is_demo, created_at"
                " FROM api_keys ORDER BY created_at"
            )
            for r in rows:
                state = "active" if r["active"] else "revoked"
                demo = " (demo)" if r["is_demo"] else ""
                print(f"{r['key_id']}\t{r['role']}\t{r['source_system']}\t{state}{demo}")
    finally:
        await conn.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m oms.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a new key and print it once")
    create.add_argument("--source-system", required=True)
    create.add_argument("--admin", action="store_true", help="an admin key")
    revoke = commands.add_parser("revoke", help="deactivate a key by its id")
    revoke.add_argument("key_id")
    commands.add_parser("list", help="list keys (never their secrets)")
    args = parser.parse_args()
    settings = config.load()
    if settings.embedded:
        print("database.dsn is empty: set OMS_DATABASE__DSN to a real database", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, settings.database.dsn))


if __name__ == "__main__":
    sys.exit(main())
