"""OMS settings for tests: small pools, short timeouts, the session's Kafka broker."""

from __future__ import annotations

import msgspec

from oms import config

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
