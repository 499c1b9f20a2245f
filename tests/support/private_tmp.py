"""A pytest plugin: each session's temporary files in a directory of its own.

PostgreSQL runs as another user (``oms.db.embedded``), so its data directory's
parents must be traversable by that user. Every pytest session starting on the
machine resets the shared ``/tmp/pytest-of-<user>`` to mode 0700, which cuts the
servers of sessions already running off their data: they crash mid-run. A
session's own ``mkdtemp`` directory is not shared, so nothing else resets it.
An explicit ``--basetemp`` is kept.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

_CREATED = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        path = tempfile.mkdtemp(prefix="oms-tests-")
        config.option.basetemp = path
        config.stash[_CREATED] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_CREATED, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
