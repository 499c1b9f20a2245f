"""Thunderhead fault scenarios, each run for real: what OMS makes of a misbehaving tenant.

Usage: .venv/bin/python bench/thunderhead_faults.py
       .venv/bin/python bench/thunderhead_faults.py --only chaos --documents 500

One embedded PostgreSQL serves the whole run. For each scenario a fresh database
is created, the Thunderhead simulator is started as its own process with the
scenario's knobs (``python -m oms.sim.thunderhead --config JSON``, docs/thunderhead.md)
and OMS as a real ``run.py`` process with the scenario's ``OMS_*`` settings. N
documents are then submitted through ``POST /v1/documents/batch``, and the script
waits (bounded by ``--timeout``) until every accepted document is COMPLETED or
FAILED, reading the documents' final states (status, ``last_error->>'reason'``)
from PostgreSQL. OMS is then stopped with SIGTERM and the simulator's
``/_sim/stats`` gives the calls made by endpoint, the 429s it refused and any
document submitted twice.

Scenarios (the same faults as tests/integration/test_thunderhead_faults.py):
  tenant_limit       the tenant allows 10 calls/s and its 429 has no Retry-After; OMS
                     keeps its defaults (15/s, burst 4, wait_429_s 60), one document per
                     submitBatch so the calls are many
  chaos              each API call answers 500 (20 %), 503 without Retry-After (20 %),
                     hangs (20 %) or 401 (5 %); 5 % of transactions fail composition
  hung_submit        the first submitBatch hangs and creates nothing: reconciled, then
                     sent again once the in-flight window (5 s) has passed
  wrong_credentials  the token endpoint refuses OMS's secret until it is put back after
                     --credentials-outage-s; max_attempts 2 shows waits use no attempts
  too_large          the tenant caps a request at 5 MB; documents carry ~60 KB of data,
                     100 to a batch: 413s split batches in halves
  bad_transaction    the tenant refuses a whole batch holding a poisoned transaction;
                     one document in every 100 is poisoned, 100 to a batch

The exit status is non-zero if a document was submitted twice, was not final in
time, or FAILED for a reason other than the scenario's expected verdict of
Thunderhead's (generation_failed under chaos, thunderhead_rejected for a poisoned
document).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from common import (  # bench/ is on sys.path
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

SIM_BASE = {"latency_s": 0, "processing_s_per_document": 0.01}
OMS_BASE = {
    "logging.level": "INFO",  # the logs are kept: they are what a surprise is explained from
    "monitoring.poll_initial_s": "0.2",
    "monitoring.poll_max_s": "1",
}
SIM_SECRET = "oms-simulator-secret"  # what OMS sends (config.toml's default)
PER_CALL = 100  # documents per intake call
CONCURRENCY = 2  # intake calls at once
POLL_INTERVAL_S = 0.5
ENDPOINTS = ("token", "submitBatch", "jobStatus", "findByReference")

Data = Callable[[int], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    sim: Mapping[str, Any]  # simulator knobs at start, over SIM_BASE
    oms: Mapping[str, str]  # "section.key" settings, over OMS_BASE
    data: Data = lambda _: None  # the template data of document i (None: the default)
    expected: frozenset[str] = frozenset()  # FAILED reasons that are Thunderhead's verdict
    later: Mapping[str, Any] | None = None  # knobs set --credentials-outage-s after the start


@dataclass
class Row:
    scenario: str
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # intake answers other than 202
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # reason → count
    not_final: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    rejected_429: int | None = None
    duplicates: int | None = None
    max_attempts: int | None = None
    max_waits: int | None = None
    seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def scenarios() -> dict[str, Scenario]:
    big = {"statement": "x" * 60_000}  # intake caps data at 65,536 bytes
    batches_of_100 = {"processing.batch_max_documents": "100", "processing.batch_max_age_s": "2"}
    all_ = [
        Scenario(
            "tenant_limit",
            {"rate_limit_per_s": 10, "rate_limit_retry_after": False},
            {"processing.batch_max_documents": "1"},
        ),
        Scenario(
            "chaos",
            {
                "chaos": {
                    "error_500": 0.2,
                    "error_503": 0.2,
                    "hang": 0.2,
                    "unauthorized": 0.05,
                    "seed": 7,
                },
                "failure_ratio": 0.05,
            },
            {
                "thunderhead.timeout_s": "2",
                "thunderhead.submit_timeout_s": "2",
                "thunderhead.wait_500_s": "1",
                "thunderhead.wait_503_s": "1",
                "processing.in_flight_window_s": "5",
            },
            expected=frozenset({"generation_failed"}),
        ),
        Scenario(
            "hung_submit",
            {"hang": {"count": 1, "endpoint": "submitBatch"}},
            {"processing.in_flight_window_s": "5", "thunderhead.submit_timeout_s": "2"},
        ),
        Scenario(
            "wrong_credentials",
            {"client_secret": "rotated-by-someone"},
            {"processing.max_attempts": "2"},
            later={"client_secret": SIM_SECRET},
        ),
        Scenario(
            "too_large",
            {"max_request_bytes": 5_000_000},
            batches_of_100,
            data=lambda _: big,
        ),
        Scenario(
            "bad_transaction",
            {"reject_marker": "POISON"},
            batches_of_100,
            data=lambda i: {"note": "POISON"} if i % 100 == 37 else None,
            expected=frozenset({"thunderhead_rejected"}),
        ),
    ]
    return {s.name: s for s in all_}


def oms_env(settings: Mapping[str, str]) -> dict[str, str]:
    """``{"processing.max_attempts": "2"}`` → ``{"OMS_PROCESSING__MAX_ATTEMPTS": "2"}``."""
    env = {}
    for name, value in settings.items():
        section, key = name.split(".")
        env[f"OMS_{section.upper()}__{key.upper()}"] = value
    return env


async def set_knobs(session: aiohttp.ClientSession, sim_url: str, knobs: Mapping[str, Any]) -> None:
    async with session.post(
        f"{sim_url}/_sim/config",
        data=msgspec.json.encode(knobs),
        timeout=aiohttp.ClientTimeout(total=5),
    ) as response:
        response.raise_for_status()


async def final_counts(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED')) AS final,
                  count(*) AS stored
             FROM documents"""
    )
    return row["final"], row["stored"]


async def restore_later(
    session: aiohttp.ClientSession,
    sim_url: str,
    oms_url: str,
    dsn: str,
    knobs: Mapping[str, Any],
    after_s: float,
    row: Row,
) -> None:
    """After ``after_s``: note readiness and any FAILED document, then set ``knobs``."""
    await asyncio.sleep(after_s)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(
            f"{oms_url}/readyz", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            checks = msgspec.json.decode(await response.read()).get("checks", {})
            row.notes.append(
                f"/readyz before the fix: {response.status}, thunderhead "
                f"{checks.get('thunderhead')!r}"
            )
    conn = await asyncpg.connect(dsn)
    try:
        states = await conn.fetch("SELECT status, count(*) AS n FROM documents GROUP BY status")
    finally:
        await conn.close()
    row.notes.append(
        f"at {after_s:g} s, before the fix: "
        + ", ".join(f"{r['status']} {r['n']}" for r in sorted(states, key=lambda r: r["status"]))
    )
    await set_knobs(session, sim_url, knobs)
    row.notes.append(f"knobs set at {after_s:g} s: {dict(knobs)}")


async def read_outcomes(dsn: str, row: Row) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for r in await conn.fetch(
            """SELECT status, last_error->>'reason' AS reason, count(*) AS n
                 FROM documents GROUP BY 1, 2"""
        ):
            if r["status"] == "COMPLETED":
                row.completed += r["n"]
            elif r["status"] == "FAILED":
                row.failed[r["reason"] or "?"] += r["n"]
            else:
                row.not_final += r["n"]
        most = await conn.fetchrow("SELECT max(attempts) AS a, max(waits) AS w FROM documents")
        row.max_attempts, row.max_waits = most["a"], most["w"]
        batches = await conn.fetch(
            "SELECT status, count(*) AS n FROM thunderhead_batches GROUP BY 1 ORDER BY 1"
        )
        row.notes.append(
            "batches: " + (", ".join(f"{b['status']} {b['n']}" for b in batches) or "none")
        )
    finally:
        await conn.close()


async def run_scenario(
    scenario: Scenario,
    admin_dsn: str,
    log_dir: Path,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
) -> Row:
    row = Row(scenario.name)
    dsn = await create_database(admin_dsn, f"faults_{scenario.name}")
    sim, sim_url = simulator_child(
        {**SIM_BASE, **scenario.sim}, log_dir / f"sim-{scenario.name}.log"
    )
    # /healthz: the HTTP server is the last thing OMS starts. Not /readyz, which is 503
    # while Thunderhead refuses OMS's credentials (and then OMS never looks ready).
    server, oms_url = oms_child(
        dsn,
        sim_url,
        oms_env({**OMS_BASE, **scenario.oms}),
        log_dir / f"oms-{scenario.name}.log",
        ready_path="/healthz",
    )
    print(f"[{scenario.name}] simulator {sim_url}, OMS {oms_url}", flush=True)
    codes: dict[str, int | None] = {}
    try:
        await sim.start(session)
        try:
            await server.start(session)
            await add_api_key(dsn)
            bodies = [
                document(f"{scenario.name}-{i}", scenario.data(i)) for i in range(args.documents)
            ]
            began = time.perf_counter()
            later = None
            if scenario.later is not None:
                later = asyncio.create_task(
                    restore_later(
                        session,
                        sim_url,
                        oms_url,
                        dsn,
                        scenario.later,
                        args.credentials_outage_s,
                        row,
                    )
                )
            try:
                await wait_final(session, oms_url, dsn, bodies, row, began, args)
            finally:
                if later is not None:
                    if not later.done():
                        row.problems.append("every document was final before the fix")
                    later.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await later
            stats = await sim_stats(session, sim_url)
        finally:
            codes["OMS"] = await server.stop()
    finally:
        codes["simulator"] = await sim.stop()
    row.calls = {name: stats["calls"].get(name, 0) for name in ENDPOINTS}
    if stats["calls"].get("generateDocument"):
        row.calls["generateDocument"] = stats["calls"]["generateDocument"]
    row.rejected_429 = stats["rejected_429"]
    row.duplicates = stats["duplicate_submissions"]
    await read_outcomes(dsn, row)
    if stats["rejected_413"] or stats["rejected_400"]:
        row.notes.append(
            f"simulator refused: 413 x{stats['rejected_413']}, 400 x{stats['rejected_400']}"
        )
    if any(stats["chaos"].values()):
        row.notes.append("chaos drawn: " + ", ".join(f"{k} {v}" for k, v in stats["chaos"].items()))
    row.notes.append(f"peak rate {stats['peak_rate_per_s']}/s")
    if row.duplicates:
        row.notes.append(f"duplicates: {stats['duplicates']}")
    check(row, scenario, codes)
    print_row_summary(row)
    return row


async def wait_final(
    session: aiohttp.ClientSession,
    oms_url: str,
    dsn: str,
    bodies: list[bytes],
    row: Row,
    began: float,
    args: argparse.Namespace,
) -> None:
    """Submit everything, then poll until every accepted document is final (bounded)."""
    tally: Counter[str] = Counter()
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(args.timeout):
            try:
                await submit_documents(session, oms_url, bodies, PER_CALL, CONCURRENCY, tally)
            finally:
                row.accepted = tally.pop("accepted", 0)
                tally.pop("resubmitted_503", None)
                row.refused.update(tally)
            while True:
                final, _ = await final_counts(conn)
                if final >= row.accepted:
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        final, stored = await final_counts(conn)
        row.problems.append(f"only {final} of {stored} final after {args.timeout:g} s")
    finally:
        row.seconds = time.perf_counter() - began
        await conn.close()


def check(row: Row, scenario: Scenario, codes: Mapping[str, int | None]) -> None:
    if row.refused:
        row.problems.append(f"intake refused: {dict(row.refused)}")
    unexpected = {k: v for k, v in row.failed.items() if k not in scenario.expected}
    if unexpected:
        row.problems.append(f"FAILED for other reasons: {unexpected}")
    if row.duplicates:
        row.problems.append(f"{row.duplicates} duplicate submissions")
    if row.not_final:
        row.problems.append(f"{row.not_final} not final")
    for name, code in codes.items():
        if code not in (0, None):
            row.problems.append(f"{name} exited with {code}")


def failed_text(failed: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "0"


def print_row_summary(row: Row) -> None:
    print(
        f"[{row.scenario}] accepted {row.accepted}, COMPLETED {row.completed}, "
        f"FAILED {failed_text(row.failed)}, calls {row.calls}, 429s {row.rejected_429}, "
        f"duplicates {row.duplicates}, {row.seconds:.1f} s",
        flush=True,
    )
    for note in row.notes:
        print(f"  {note}", flush=True)
    for problem in row.problems:
        print(f"  PROBLEM: {problem}", flush=True)


def table(rows: list[Row]) -> str:
    header = [
        "scenario",
        "sent(202)",
        "COMPLETED",
        "FAILED by reason",
        "token",
        "submitBatch",
        "jobStatus",
        "findByRef",
        "429s",
        "dups",
        "max att/waits",
        "wall s",
    ]
    lines = [header]
    for r in rows:
        lines.append(
            [
                r.scenario,
                str(r.accepted),
                str(r.completed),
                failed_text(r.failed),
                *(str(r.calls.get(name, "-")) for name in ENDPOINTS),
                str(r.rejected_429),
                str(r.duplicates),
                f"{r.max_attempts}/{r.max_waits}",
                f"{r.seconds:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 3}  # text columns; the rest are numbers
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    chosen = scenarios()
    if args.only:
        chosen = {args.only: chosen[args.only]}
    log_dir = Path(tempfile.mkdtemp(prefix="oms-thunderhead-faults-"))
    print_machine(
        f"documents: {args.documents} per scenario; scenarios: {', '.join(chosen)}; "
        f"logs in {log_dir}"
    )

    async def one(
        name: str, _round: int, admin_dsn: str, _workdir: Path, session: aiohttp.ClientSession
    ) -> Row:
        try:
            return await run_scenario(chosen[name], admin_dsn, log_dir, session, args)
        except Exception as exc:  # one scenario's breakage must not hide the others
            print(f"[{name}] could not run: {exc!r}", flush=True)
            row = Row(name)
            row.problems.append(f"could not run: {exc!r}")
            return row

    rows = await run_rounds(tuple(chosen), 1, 16, one)
    print(f"\nThunderhead fault scenarios ({args.documents} documents each):", flush=True)
    print(table(rows), flush=True)
    for row in rows:
        for note in row.notes:
            print(f"  {row.scenario}: {note}", flush=True)
    problems = [f"{r.scenario}: {p}" for r in rows for p in r.problems]
    for problem in problems:
        print(f"  PROBLEM {problem}", flush=True)
    print(f"OMS and simulator logs: {log_dir}", flush=True)
    print(f"command: {shlex.join(sys.orig_argv)}", flush=True)
    return 1 if problems else 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(scenarios()), help="one scenario")
    parser.add_argument("--documents", type=int, default=200, help="per scenario (200)")
    parser.add_argument(
        "--credentials-outage-s",
        type=float,
        default=120.0,
        help="wrong_credentials: seconds until the right secret is back (120)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="per scenario, seconds until final (600)"
    )
    args = parser.parse_args()
    if args.documents < 1 or args.credentials_outage_s < 0 or args.timeout <= 0:
        parser.error("--documents must be >= 1, --credentials-outage-s >= 0, --timeout > 0")
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
