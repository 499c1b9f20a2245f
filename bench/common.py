"""What the benchmark scripts share: ports, database names, a request body."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
import msgspec

from oms.db.embedded import EmbeddedPostgres

R = TypeVar("R")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


def document(reference: str) -> bytes:
    """A valid request for the Reference Data the simulator ships (email, acme, en)."""
    return msgspec.json.encode(
        {
            "client_reference": reference,
            "document_type": "policy_renewal_notice",
            "channel": "email",
            "language": "en",
            "brand": "acme",
            "priority": "normal",
            "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "data": {"policy_number": "P-123", "premium": "123.45"},
        }
    )


async def run_rounds(
    variants: Sequence[str],
    repeat: int,
    connection_limit: int,
    run_variant: Callable[[str, int, str, Path, aiohttp.ClientSession], Awaitable[R]],
) -> list[R]:
    """One embedded PostgreSQL for the whole run; variants alternate round by round
    (so neither always runs on a warmer machine); returns every round's result."""
    results: list[R] = []
    with tempfile.TemporaryDirectory(prefix="oms-bench-") as tempdir:
        workdir = Path(tempdir)
        postgres = EmbeddedPostgres(workdir / "pgdata")
        try:
            admin_dsn = await asyncio.to_thread(postgres.start)
            connector = aiohttp.TCPConnector(limit=connection_limit)
            async with aiohttp.ClientSession(connector=connector) as session:
                for round_ in range(1, repeat + 1):
                    order = variants if round_ % 2 else tuple(reversed(variants))
                    for variant in order:
                        results.append(
                            await run_variant(variant, round_, admin_dsn, workdir, session)
                        )
        finally:
            await asyncio.to_thread(postgres.stop)
    return results


def print_machine(details: str) -> None:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(f"cores: {cores} (usable {usable}); {details}", flush=True)
