"""Intake benchmark: group commit against one transaction per request.

Usage: .venv/bin/python bench/intake.py --clients 64 --seconds 10

One embedded PostgreSQL serves the whole run. For each variant a fresh database
is created and OMS is started as a real subprocess (``run.py``) on it, with
``OMS_INTAKE__GROUP_COMMIT`` set to ``true`` (group) or ``false`` (naive). C
concurrent clients then POST ``/v1/documents`` on 127.0.0.1 in a closed loop: a
warm-up, then a measured window. Only 202s count as accepted; a request counts
in the window when it completes inside it. With ``--repeat N`` the variants
alternate and the median of each is reported as well.

The load generator, OMS and PostgreSQL share this machine's cores, so absolute
figures understate a real deployment; the ratio is what the benchmark is for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from common import (  # bench/ is on sys.path
    document,
    free_port,
    print_machine,
    run_rounds,
    with_database,
)

from oms.store import api_keys

REPO_ROOT = Path(__file__).resolve().parent.parent

API_KEY = "oms_bench_benchmarksecret123"
VARIANTS = ("group", "naive")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Result:
    variant: str
    round: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    commits: float | None = None
    committed_rows: float | None = None

    @property
    def accepted(self) -> int:
        return self.statuses["202"]

    @property
    def rps(self) -> float:
        return self.accepted / self.seconds

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.statuses.items()) if k != "202"}

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index]


class Oms:
    """One OMS subprocess; its stderr goes to a file so it can never block on a pipe."""

    def __init__(self, dsn: str, group_commit: bool, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {
            **os.environ,
            "OMS_DATABASE__DSN": dsn,
            "OMS_SERVER__HOST": "127.0.0.1",
            "OMS_SERVER__PORT": str(self.port),
            "OMS_KAFKA__EMBEDDED_PORT": str(free_port()),
            # Intake alone is measured: processing stays paused and events wait in
            # the outbox (Kafka, Thunderhead and the load generator share 2 cores).
            "OMS_PROCESSING__START_PAUSED": "true",
            "OMS_RELAY__ENABLED": "false",
            "OMS_PROCESSING__MAILBOX_CAPACITY": "2000000",
            "OMS_LOGGING__LEVEL": "WARNING",
            "OMS_INTAKE__GROUP_COMMIT": "true" if group_commit else "false",
        }
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "run.py",
                cwd=REPO_ROOT,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"OMS exited ({self._proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"{self.base_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"OMS not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    async def stop(self) -> int | None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            print(f"  OMS did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
            proc.kill()
            return await proc.wait()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


async def commit_stats(session: aiohttp.ClientSession, base_url: str) -> tuple[float, float]:
    """(transactions, rows) from OMS's Prometheus histogram, over the whole run."""
    async with session.get(
        f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("oms_intake_commit_batch_size_count", "oms_intake_commit_batch_size_sum"):
            values[name] = float(value)
    return (
        values.get("oms_intake_commit_batch_size_count", 0.0),
        values.get("oms_intake_commit_batch_size_sum", 0.0),
    )


async def drive(
    session: aiohttp.ClientSession,
    base_url: str,
    result: Result,
    clients: int,
    warmup_s: float,
    seconds: float,
) -> None:
    url = f"{base_url}/v1/documents"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + seconds
    prefix = f"bench-{result.variant}-{result.round}-{os.getpid()}"

    async def client(number: int) -> None:
        sequence = 0
        while (began := time.perf_counter()) < window_end:
            sequence += 1
            body = document(f"{prefix}-{number}-{sequence}")
            try:
                async with session.post(url, data=body, headers=headers, timeout=timeout) as r:
                    await r.read()
                    outcome = str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            ended = time.perf_counter()
            if window_start <= ended <= window_end:
                result.statuses[outcome] += 1
                if outcome == "202":
                    result.latencies_ms.append((ended - began) * 1000)

    # Every loop stops at the deadline; this bounds a stuck request as well.
    async with asyncio.timeout(warmup_s + seconds + REQUEST_TIMEOUT_S + 5):
        async with asyncio.TaskGroup() as tg:
            for number in range(clients):
                tg.create_task(client(number))


async def run_variant(
    variant: str,
    round_: int,
    admin_dsn: str,
    workdir: Path,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
) -> Result:
    database = f"bench_{variant}" if args.repeat == 1 else f"bench_{variant}_{round_}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = with_database(admin_dsn, database)
    oms = Oms(dsn, variant == "group", workdir / f"oms-{variant}-{round_}.log")
    result = Result(variant, round_, args.seconds)
    print(f"[{variant} #{round_}] starting OMS on {oms.base_url} (database {database})", flush=True)
    try:
        await oms.start(session)
        conn = await asyncpg.connect(dsn)
        try:
            await api_keys.upsert(conn, API_KEY, "bench", "source")
        finally:
            await conn.close()
        print(
            f"[{variant} #{round_}] {args.clients} clients: {args.warmup:g} s warm-up, "
            f"{args.seconds:g} s measured",
            flush=True,
        )
        await drive(session, oms.base_url, result, args.clients, args.warmup, args.seconds)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            result.commits, result.committed_rows = await commit_stats(session, oms.base_url)
    finally:
        code = await oms.stop()
        if code not in (0, None):
            print(f"[{variant} #{round_}] OMS exited with {code}", flush=True)
    print_result(result)
    if result.errors or code not in (0, None):
        tail = oms.log_tail()
        if tail.strip():
            print(f"  OMS stderr (tail):\n{tail}", flush=True)
    return result


def print_result(r: Result) -> None:
    errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "none"
    line = (
        f"  {r.variant:<5} #{r.round}: {r.rps:9.1f} accepted/s  "
        f"p50 {r.percentile(0.50):7.2f} ms  p99 {r.percentile(0.99):7.2f} ms  "
        f"accepted {r.accepted}  errors: {errors}"
    )
    if r.commits:
        line += f"  (rows/transaction {r.committed_rows / r.commits:.1f}, incl. warm-up)"
    print(line, flush=True)


async def main(args: argparse.Namespace) -> int:
    print_machine(
        f"clients: {args.clients}; warm-up {args.warmup:g} s; "
        f"measured {args.seconds:g} s; repeat {args.repeat}"
    )

    async def one(
        variant: str, round_: int, admin_dsn: str, workdir: Path, session: aiohttp.ClientSession
    ) -> Result:
        return await run_variant(variant, round_, admin_dsn, workdir, session, args)

    results = await run_rounds(VARIANTS, args.repeat, args.clients + 8, one)
    return report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> int:
    print(f"\nresults (clients {args.clients}, cores {os.cpu_count()}):", flush=True)
    for r in results:
        print_result(r)
    rps: dict[str, float] = {}
    for variant in VARIANTS:
        runs = [r for r in results if r.variant == variant]
        rps[variant] = statistics.median(r.rps for r in runs)
        if len(runs) > 1:
            p50 = statistics.median(r.percentile(0.50) for r in runs)
            p99 = statistics.median(r.percentile(0.99) for r in runs)
            print(
                f"  {variant:<5} median of {len(runs)}: {rps[variant]:9.1f} accepted/s  "
                f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms",
                flush=True,
            )
    if rps["naive"] > 0:
        print(f"throughput ratio group/naive: {rps['group'] / rps['naive']:.2f}x", flush=True)
    else:
        print("throughput ratio group/naive: undefined (naive accepted nothing)", flush=True)
    failed = [f"{r.variant} #{r.round}" for r in results if r.accepted == 0]
    if failed:
        print(f"FAILED: no accepted requests in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (10 s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before it (2 s)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, variants alternating (1)")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0 or args.repeat < 1:
        parser.error("--clients and --repeat must be >= 1, --seconds > 0, --warmup >= 0")
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
