"""A DSN as OMS shows it: never with its password (issue 8, item 11)."""

from __future__ import annotations

import pytest

from oms.db.pool import redacted


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://oms:s3cr%40t@db.example:5432/oms",
            "postgresql://oms:***@db.example:5432/oms",
        ),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?password=abc&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("host=h user=u password=abc dbname=x", "host=h user=u password=*** dbname=x"),
        ("postgresql://postgres@127.0.0.1:5432/oms", "postgresql://postgres@127.0.0.1:5432/oms"),
    ],
)
def test_a_dsn_is_shown_without_its_password(dsn: str, shown: str) -> None:
    assert redacted(dsn) == shown
