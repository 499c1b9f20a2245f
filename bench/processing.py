"""Processing benchmark: documents to SUBMITTED, batched against one per Thunderhead call.

Usage: .venv/bin/python bench/processing.py --documents 5000
       .venv/bin/python bench/processing.py --documents 5000 --until completed   (end to end)

One embedded PostgreSQL serves the whole run. For each variant a fresh database
is created, the Thunderhead simulator is started as its own subprocess on a free
loopback port with no latency (``python -m oms.sim.thunderhead``), and OMS is
started as a real subprocess (``run.py``) pointed at it, with a client rate limit
high enough that the limiter is not what is measured. ``batched`` keeps the
default ``[processing]`` settings; ``unbatched`` sets
``OMS_PROCESSING__BATCH_MAX_DOCUMENTS=1``. Reference Data is OMS's in-process
simulator.

N documents are then submitted as fast as possible through
``POST /v1/documents/batch`` (up to 500 per call, a few calls at once); items
answered 503 (the processing mailbox is full) are resubmitted after a short wait
and counted. The clock runs from the first submission until the database holds N
documents in SUBMITTED or later (``--until completed``: COMPLETED, the whole
pipeline, with final events written for Kafka), polled every 0.2 s. The
simulator's ``/_sim/stats`` then gives the Thunderhead calls made and any
duplicate submission. With ``--repeat N`` the variants alternate and the median
of each is reported as well. The exit status is non-zero if any document was
submitted twice or any run did not bring every document to SUBMITTED.

The load generator, OMS, the simulator and PostgreSQL share this machine's
cores, so absolute figures understate a real deployment; the ratios are what the
benchmark is for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from common import (  # bench/ is on sys.path
    Child,
    add_api_key,
    create_database,
    document,
    oms_child,
    print_machine,
    run_rounds,
    sim_stats,
    simulator_child,
    submit_documents,
)

VARIANTS = ("batched", "unbatched")
POLL_INTERVAL_S = 0.2
SIM_CONFIG = {"latency_s": 0, "processing_s_per_document": 0.01}
THUNDERHEAD_ENV = {
    "OMS_THUNDERHEAD__RATE_LIMIT_PER_S": "100000",
    "OMS_THUNDERHEAD__RATE_LIMIT_BURST": "1000",
    "OMS_THUNDERHEAD__MAX_CONCURRENCY": "16",
}


@dataclass
class Result:
    variant: str
    round: int
    documents: int
    seconds: float = float("nan")
    intake_seconds: float = float("nan")  # until every document was accepted
    submitted: int = 0
    failed: int = 0
    resubmitted_503: int = 0
    transport_errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # item status → count, not 202/503
    calls: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    duplicates: int | None = None

    @property
    def complete(self) -> bool:
        return self.submitted == self.documents

    @property
    def rate(self) -> float:
        return self.submitted / self.seconds if self.seconds > 0 else float("nan")

    @property
    def submit_calls_per_doc(self) -> float:
        return self.calls.get("submitBatch", 0) / self.documents

    @property
    def api_calls_per_doc(self) -> float:
        return sum(self.calls.values()) / self.documents


# Which statuses count as done (set from --until): a one-element holder, not a global rebind.
DONE: list[list[str]] = [["SUBMITTED", "COMPLETED"]]


def oms(dsn: str, thunderhead_url: str, batched: bool, log_path: Path) -> tuple[Child, str]:
    env = dict(THUNDERHEAD_ENV)
    if not batched:
        env["OMS_PROCESSING__BATCH_MAX_DOCUMENTS"] = "1"
    if DONE[0] == ["COMPLETED"]:
        # End to end: poll Thunderhead often enough that polling is not what is measured.
        env["OMS_MONITORING__POLL_INITIAL_S"] = "0.2"
        env["OMS_MONITORING__POLL_MAX_S"] = "1"
    return oms_child(dsn, thunderhead_url, env, log_path)


async def submit_all(
    session: aiohttp.ClientSession,
    base_url: str,
    result: Result,
    prefix: str,
    args: argparse.Namespace,
) -> None:
    """Every document through the batch endpoint; 503 items are resubmitted until stored."""
    bodies = [document(f"{prefix}-{i}") for i in range(result.documents)]
    tally: Counter[str] = Counter()
    try:
        await submit_documents(session, base_url, bodies, args.batch_size, args.concurrency, tally)
    finally:  # the counts so far, also when the run's timeout cancels this
        tally.pop("accepted", None)
        result.resubmitted_503 = tally.pop("resubmitted_503", 0)
        result.transport_errors = tally.pop("transport_errors", 0)
        result.rejected.update(tally)


async def wait_submitted(conn: asyncpg.Connection, result: Result, began: float) -> None:
    """Poll until every document is SUBMITTED (or nothing more can move); sets the time."""
    while True:
        row = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE status = ANY($1::text[])) AS submitted,
                      count(*) FILTER (WHERE status = 'FAILED') AS failed
                 FROM documents""",
            DONE[0],
        )
        result.submitted, result.failed = row["submitted"], row["failed"]
        if result.submitted + result.failed >= result.documents:
            result.seconds = time.perf_counter() - began
            return
        await asyncio.sleep(POLL_INTERVAL_S)


async def measure(
    session: aiohttp.ClientSession,
    base_url: str,
    dsn: str,
    result: Result,
    prefix: str,
    args: argparse.Namespace,
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        began = time.perf_counter()
        watcher = asyncio.create_task(wait_submitted(conn, result, began))
        try:
            async with asyncio.timeout(args.timeout):
                await submit_all(session, base_url, result, prefix, args)
                result.intake_seconds = time.perf_counter() - began
                await watcher
        except TimeoutError:
            print(f"  timed out after {args.timeout:g} s", flush=True)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if result.seconds != result.seconds:  # nan: timed out; take the final counts
            row = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE status = ANY($1::text[])) AS submitted,
                          count(*) FILTER (WHERE status = 'FAILED') AS failed
                     FROM documents""",
                DONE[0],
            )
            result.submitted, result.failed = row["submitted"], row["failed"]
            result.seconds = time.perf_counter() - began
    finally:
        await conn.close()


async def read_sim_stats(session: aiohttp.ClientSession, sim_url: str, result: Result) -> None:
    stats = await sim_stats(session, sim_url)
    result.calls = dict(stats["calls"])
    result.transactions = stats["transactions"]
    result.duplicates = stats["duplicate_submissions"]


async def run_variant(
    variant: str,
    round_: int,
    admin_dsn: str,
    workdir: Path,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
) -> Result:
    database = f"bench_{variant}" if args.repeat == 1 else f"bench_{variant}_{round_}"
    dsn = await create_database(admin_dsn, database)
    result = Result(variant, round_, args.documents)
    sim, sim_url = simulator_child(SIM_CONFIG, workdir / f"sim-{variant}-{round_}.log")
    server, base_url = oms(
        dsn, sim_url, variant == "batched", workdir / f"oms-{variant}-{round_}.log"
    )
    print(
        f"[{variant} #{round_}] starting the simulator on {sim_url}, OMS on {base_url} "
        f"(database {database})",
        flush=True,
    )
    codes: dict[str, int | None] = {}
    try:
        await sim.start(session)
        try:
            await server.start(session)
            await add_api_key(dsn)
            print(
                f"[{variant} #{round_}] {args.documents} documents, {args.batch_size} per call, "
                f"{args.concurrency} calls at once",
                flush=True,
            )
            prefix = f"bench-{variant}-{round_}-{os.getpid()}"
            await measure(session, base_url, dsn, result, prefix, args)
            await read_sim_stats(session, sim_url, result)
        finally:
            codes["OMS"] = await server.stop()
    finally:
        codes["simulator"] = await sim.stop()
    print_result(result)
    for name, code in codes.items():
        if code not in (0, None):
            print(f"[{variant} #{round_}] {name} exited with {code}", flush=True)
    if not result.complete or result.duplicates or codes["OMS"] not in (0, None):
        tail = server.log_tail()
        if tail.strip():
            print(f"  OMS stderr (tail):\n{tail}", flush=True)
    return result


def print_result(r: Result) -> None:
    extra = ""
    if r.rejected:
        extra += "  rejected: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.rejected.items()))
    if r.transport_errors:
        extra += f"  transport errors: {r.transport_errors}"
    calls = " ".join(f"{k} {v}" for k, v in r.calls.items() if v)
    print(
        f"  {r.variant:<9} #{r.round}: {r.submitted}/{r.documents} {DONE[0][0]} "
        f"in {r.seconds:6.2f} s = {r.rate:8.1f} documents/s "
        f"(all accepted after {r.intake_seconds:5.2f} s)  FAILED {r.failed}  "
        f"submitBatch/doc {r.submit_calls_per_doc:.4f}  API calls/doc {r.api_calls_per_doc:.4f}  "
        f"duplicates {r.duplicates}  503 resubmissions {r.resubmitted_503}{extra}",
        flush=True,
    )
    if calls:
        print(f"    Thunderhead calls: {calls}; transactions {r.transactions}", flush=True)


async def main(args: argparse.Namespace) -> int:
    print_machine(
        f"documents: {args.documents}; "
        f"{args.batch_size} per call, {args.concurrency} at once; repeat {args.repeat}"
    )

    async def one(
        variant: str, round_: int, admin_dsn: str, workdir: Path, session: aiohttp.ClientSession
    ) -> Result:
        return await run_variant(variant, round_, admin_dsn, workdir, session, args)

    results = await run_rounds(VARIANTS, args.repeat, args.concurrency + 8, one)
    return report(results, args)


def ratio(a: float, b: float, spec: str = ".2f") -> str:
    return f"{a / b:{spec}}x" if b > 0 else "undefined"


def report(results: list[Result], args: argparse.Namespace) -> int:
    print(f"\nresults (documents {args.documents}, cores {os.cpu_count()}):", flush=True)
    for r in results:
        print_result(r)
    rate: dict[str, float] = {}
    submit_calls: dict[str, float] = {}
    api_calls: dict[str, float] = {}
    for variant in VARIANTS:
        runs = [r for r in results if r.variant == variant]
        rate[variant] = statistics.median(r.rate for r in runs)
        submit_calls[variant] = statistics.median(r.submit_calls_per_doc for r in runs)
        api_calls[variant] = statistics.median(r.api_calls_per_doc for r in runs)
        if len(runs) > 1:
            seconds = statistics.median(r.seconds for r in runs)
            print(
                f"  {variant:<9} median of {len(runs)}: {seconds:6.2f} s = "
                f"{rate[variant]:8.1f} documents/s  submitBatch/doc {submit_calls[variant]:.4f}  "
                f"API calls/doc {api_calls[variant]:.4f}",
                flush=True,
            )
    print(
        f"documents/s ratio batched/unbatched: {ratio(rate['batched'], rate['unbatched'])}",
        flush=True,
    )
    print(
        "calls per document ratio batched/unbatched: submitBatch "
        f"{ratio(submit_calls['batched'], submit_calls['unbatched'], '.4f')}, all API calls "
        f"{ratio(api_calls['batched'], api_calls['unbatched'], '.4f')}",
        flush=True,
    )
    problems = []
    for r in results:
        name = f"{r.variant} #{r.round}"
        if r.duplicates is None:
            problems.append(f"{name}: no simulator stats")
        elif r.duplicates:
            problems.append(f"{name}: {r.duplicates} duplicate submissions")
        if not r.complete:
            problems.append(f"{name}: {r.submitted}/{r.documents} SUBMITTED ({r.failed} FAILED)")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=5000, help="documents per run (5000)")
    parser.add_argument(
        "--until",
        choices=["submitted", "completed"],
        default="submitted",
        help="stop the clock at SUBMITTED (default) or end to end at COMPLETED",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="documents per call (500)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls at once (4)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds (300)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, variants alternating (1)")
    args = parser.parse_args()
    DONE[0] = ["COMPLETED"] if args.until == "completed" else ["SUBMITTED", "COMPLETED"]
    if (
        args.documents < 1
        or not 1 <= args.batch_size <= 1000
        or args.concurrency < 1
        or args.timeout <= 0
        or args.repeat < 1
    ):
        parser.error(
            "--documents, --concurrency and --repeat must be >= 1, --batch-size 1 to 1000, "
            "--timeout > 0"
        )
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
