"""``python -m oms.db migrate DSN``: bring a database's schema up to date and exit.

OMS migrates at start by itself; this is for operators who migrate ahead of a
rollout, and for the test that starts two migrators at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from oms.db import migrate


async def _migrate(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m oms.db")
    parser.add_argument("command", choices=["migrate"])
    parser.add_argument("dsn")
    args = parser.parse_args()
    applied = asyncio.run(_migrate(args.dsn))
    print("applied: " + (", ".join(map(str, applied)) or "nothing, already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
