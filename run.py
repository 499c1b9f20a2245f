"""Start OMS: ``python run.py [--config FILE]``. With no DSN configured it runs
everything it needs itself (embedded PostgreSQL, the Reference Data simulator)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from oms import app, config, exceptions, logs
from oms.db.pool import redacted


async def main(settings: config.Settings) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def wait_for_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async def serve(*, task_status: TaskStatus[app.Started]) -> None:
            await app.run(settings, stop, task_status=task_status)
            tg.cancel_scope.cancel()  # shut down in full: now stop the signal listener

        tg.start_soon(wait_for_signal)
        _print_banner(await tg.start(serve))


def _print_banner(started: app.Started) -> None:
    database = redacted(started.dsn)  # never a password on screen or in a log
    lines = [f"OMS is listening on {started.base_url}", f"  database:       {database}"]
    lines.append(f"  reference data: {started.refdata_url}")
    lines.append(f"  thunderhead:    {started.thunderhead_url}")
    lines.append(f"  kafka:          {started.kafka_bootstrap}")
    if started.demo_keys:
        lines += [
            f"  demo source-system key (source system '{app.DEMO_SOURCE_SYSTEM}'): "
            f"{app.DEMO_SOURCE_KEY}",
            f"  demo admin key: {app.DEMO_ADMIN_KEY}",
            "  (demo keys are for this embedded database only)",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: config.toml)")
    args = parser.parse_args()
    try:
        settings = config.load(args.config)
    except exceptions.ConfigError as exc:
        print(f"oms: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.logging.level, settings.logging.format)
    failed = False
    try:
        anyio.run(main, settings)
    except* exceptions.OmsError as group:  # a start-up error, or a component that died
        for exc in group.exceptions:
            print(f"oms: {exc}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli())
