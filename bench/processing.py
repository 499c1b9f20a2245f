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
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
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
VARIANTS = ("batched", "unbatched")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2
RESUBMIT_WAIT_S = 0.1  # after a 503: short, so the wait is not what is measured
TRANSPORT_RETRIES = 3
RESUBMIT_LIMIT = 10_000  # calls for one chunk; the run's timeout comes first
SIM_CONFIG = '{"latency_s": 0, "processing_s_per_document": 0.01}'
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


class Child:
    """One subprocess; its output goes to a file so it can never block on a pipe."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], ready_url: str, log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._argv = argv
        self._env = env
        self._ready_url = ready_url
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                cwd=REPO_ROOT,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self._proc.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    self._ready_url, timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    async def stop(self) -> int | None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            print(
                f"  {self.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", flush=True
            )
            proc.kill()
            return await proc.wait()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def simulator(log_path: Path) -> tuple[Child, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "oms.sim.thunderhead", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--config", SIM_CONFIG]
    return Child("simulator", argv, dict(os.environ), f"{base_url}/_sim/stats", log_path), base_url


def oms(dsn: str, thunderhead_url: str, batched: bool, log_path: Path) -> tuple[Child, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OMS_DATABASE__DSN": dsn,
        "OMS_SERVER__HOST": "127.0.0.1",
        "OMS_SERVER__PORT": str(port),
        "OMS_KAFKA__EMBEDDED_PORT": str(free_port()),  # its own broker, never a shared port
        "OMS_LOGGING__LEVEL": "WARNING",
        "OMS_THUNDERHEAD__BASE_URL": thunderhead_url,
        **THUNDERHEAD_ENV,
    }
    if not batched:
        env["OMS_PROCESSING__BATCH_MAX_DOCUMENTS"] = "1"
    if DONE[0] == ["COMPLETED"]:
        # End to end: poll Thunderhead often enough that polling is not what is measured.
        env["OMS_MONITORING__POLL_INITIAL_S"] = "0.2"
        env["OMS_MONITORING__POLL_MAX_S"] = "1"
    argv = [sys.executable, "run.py"]
    return Child("OMS", argv, env, f"{base_url}/readyz", log_path), base_url


async def submit_all(
    session: aiohttp.ClientSession,
    base_url: str,
    result: Result,
    prefix: str,
    args: argparse.Namespace,
) -> None:
    """Every document through the batch endpoint; 503 items are resubmitted until stored."""
    url = f"{base_url}/v1/documents/batch"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    bodies = [document(f"{prefix}-{i}") for i in range(result.documents)]
    chunks: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for start in range(0, len(bodies), args.batch_size):
        chunks.put_nowait(bodies[start : start + args.batch_size])

    async def post(items: list[bytes]) -> list[bytes]:
        """One call; the items to send again (503s, or all of them after a transport error)."""
        payload = b'{"documents":[' + b",".join(items) + b"]}"
        for attempt in range(TRANSPORT_RETRIES + 1):
            try:
                async with session.post(url, data=payload, headers=headers, timeout=timeout) as r:
                    body = await r.read()
                    if r.status == 503:  # the whole call was refused: send it again
                        result.resubmitted_503 += len(items)
                        return items
                    if r.status != 200:
                        result.rejected[f"batch {r.status}"] += len(items)
                        print(f"  batch call answered {r.status}: {body[:300]!r}", flush=True)
                        return []
                    answer = msgspec.json.decode(body)
                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.transport_errors += 1
                if attempt == TRANSPORT_RETRIES:
                    raise RuntimeError(f"batch call failed {attempt + 1} times: {exc!r}") from exc
                await asyncio.sleep(0.2)
        again = []
        for item in answer["results"]:
            status = item["status"]
            if status == 503:
                again.append(items[item["index"]])
            elif status == 409 and (item.get("problem") or {}).get("document_id"):
                # Stored by a call whose answer was lost to a transport error.
                result.rejected["409 (stored earlier)"] += 1
            elif status != 202:
                result.rejected[str(status)] += 1
        result.resubmitted_503 += len(again)
        return again

    async def worker() -> None:
        while True:
            try:
                items = chunks.get_nowait()
            except asyncio.QueueEmpty:
                return
            for attempt in range(RESUBMIT_LIMIT):
                if attempt:
                    await asyncio.sleep(RESUBMIT_WAIT_S)
                items = await post(items)
                if not items:
                    break
            else:
                raise RuntimeError(f"{len(items)} items still refused after {RESUBMIT_LIMIT} calls")

    async with asyncio.TaskGroup() as tg:
        for _ in range(args.concurrency):
            tg.create_task(worker())


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


async def sim_stats(session: aiohttp.ClientSession, sim_url: str, result: Result) -> None:
    async with session.get(
        f"{sim_url}/_sim/stats", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        stats = msgspec.json.decode(await response.read())
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
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = with_database(admin_dsn, database)
    result = Result(variant, round_, args.documents)
    sim, sim_url = simulator(workdir / f"sim-{variant}-{round_}.log")
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
            conn = await asyncpg.connect(dsn)
            try:
                await api_keys.upsert(conn, API_KEY, "bench", "source")
            finally:
                await conn.close()
            print(
                f"[{variant} #{round_}] {args.documents} documents, {args.batch_size} per call, "
                f"{args.concurrency} calls at once",
                flush=True,
            )
            prefix = f"bench-{variant}-{round_}-{os.getpid()}"
            await measure(session, base_url, dsn, result, prefix, args)
            await sim_stats(session, sim_url, result)
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
