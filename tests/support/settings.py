"""OMS settings for tests: small pools, short timeouts, the session's Kafka broker."""

from __future__ import annotations

from typing import Any

import msgspec

from oms import config
from tests.support.sims import SimServer

# The session broker's address, filled in by conftest's autouse ``_session_kafka``.
KAFKA: dict[str, str] = {"bootstrap": ""}


def make_settings(
    dsn: str, refdata_url: str, thunderhead_url: str = "", **sections: dict[str, object]
) -> config.Settings:
    """Test settings; an empty ``thunderhead_url`` runs the simulator in-process.

    Kafka is the session's broker (see ``kafka_bootstrap``), set by the ``oms``
    fixtures through ``KAFKA``.
    """
    raw: dict[str, dict[str, object]] = {
        "kafka": {"bootstrap_servers": KAFKA["bootstrap"], "enable_idempotence": False},
        "server": {"port": 0},
        "database": {"dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "refdata": {"base_url": refdata_url, "timeout_s": 0.5},
        # Intake tests see documents as intake left them; processing tests resume.
        "processing": {"start_paused": True},
        "thunderhead": {"base_url": thunderhead_url},
        "logging": {"level": "WARNING"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return msgspec.convert(raw, config.Settings)


# Processing that runs at once and retries fast; Thunderhead waits that end fast.
FAST_RETRIES = {
    "start_paused": False,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "batch_max_age_s": 0.05,
}
FAST_WAITS = {"wait_429_s": 0.1, "wait_500_s": 0.1, "wait_503_s": 0.1, "submit_timeout_s": 0.5}


def pipeline_settings(
    database_dsn: str,
    refdata_sim: SimServer,
    thunderhead_sim: SimServer,
    processing: dict[str, Any] | None = None,
    thunderhead_settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> config.Settings:
    """Processing running with fast retries and waits, against the two simulators."""
    return make_settings(
        database_dsn,
        refdata_sim.url,
        thunderhead_sim.url,
        processing={**FAST_RETRIES, **(processing or {})},
        thunderhead={"base_url": thunderhead_sim.url, **FAST_WAITS, **(thunderhead_settings or {})},
        **sections,
    )
