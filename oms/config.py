"""Settings: ``config.toml`` holds every default; ``OMS_SECTION__KEY`` overrides one key.

The TOML is decoded into a tree of frozen msgspec Structs in one call. Overrides
from the environment are applied to the raw tree before decoding, so a bad value
from either place fails the same way: with a message naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from oms import exceptions

ENV_PREFIX = "OMS_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout_s: float = 10.0


class DatabaseSettings(_Section):
    dsn: str = ""
    data_dir: str = "var/pgdata"
    embedded_port: int = 0
    pool_min_size: int = 2
    pool_max_size: int = 10
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 10.0


class IntakeSettings(_Section):
    max_body_bytes: int = 262_144
    max_batch_body_bytes: int = 10_485_760
    max_data_bytes: int = 65_536
    max_batch_items: int = 1_000
    group_commit: bool = True
    commit_max_rows: int = 1_000
    commit_writers: int = 2
    idempotency_ttl_s: float = 86_400.0
    idempotency_purge_interval_s: float = 300.0
    page_size_default: int = 50
    page_size_max: int = 200
    requested_queue_capacity: int = 10_000
    api_key_cache_ttl_s: float = 30.0


class RefDataSettings(_Section):
    base_url: str = ""
    timeout_s: float = 2.0
    ttl_s: float = 60.0
    revalidate_window_s: float = 600.0


class ProcessingSettings(_Section):
    start_paused: bool = False
    actors: int = 8
    mailbox_capacity: int = 10_000
    lease_s: float = 120.0
    max_attempts: int = 10
    backoff_base_s: float = 2.0
    backoff_max_s: float = 900.0
    batch_max_documents: int = 100
    batch_max_age_s: float = 0.5
    batch_max_bytes: int = 8_000_000
    submitters: int = 4
    restart_backoff_s: float = 0.5
    max_redeliveries: int = 5
    drain_deadline_s: float = 10.0
    retry_schedule_max: int = 100_000
    deadline_s: float = 86_400.0
    wait_backoff_max_s: float = 60.0
    in_flight_window_s: float = 120.0
    reconcile_deadline_s: float = 21_600.0
    reconcile_interval_s: float = 1.0
    reconcilers: int = 2
    split_max_extra_calls: int = 32


class ThunderheadSettings(_Section):
    base_url: str = ""  # empty: the in-process simulator
    client_id: str = "oms"
    client_secret: str = "oms-simulator-secret"
    grant_type: Literal["client_credentials", "password"] = "client_credentials"
    client_auth: Literal["basic", "form"] = "basic"
    correlation_field: str = "correlationReference"
    project_id: int = 0
    username: str = ""
    password: str = ""
    token_path: str = "/one/oauth2Server/token"
    api_path: str = "/one/oauth2/api/v12/job"
    timeout_s: float = 10.0
    submit_timeout_s: float = 30.0
    rate_limit_per_s: float = 15.0
    rate_limit_burst: int = 4
    rate_min_per_s: float = 0.5
    rate_decrease_factor: float = 0.5
    rate_recovery_s: float = 30.0
    rate_ceiling_ttl_s: float = 600.0
    max_concurrency: int = 8
    token_refresh_margin_s: float = 60.0
    wait_429_s: float = 60.0
    wait_500_s: float = 5.0
    wait_503_s: float = 120.0
    max_request_bytes: int = 10_000_000


class KafkaSettings(_Section):
    bootstrap_servers: str = ""  # empty: the embedded Tansu broker
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 9092
    client_id: str = "oms"
    enable_idempotence: bool = True  # the embedded broker cannot: forced off there
    request_timeout_s: float = 10.0
    topic_partitions: int = 3
    topic_replication_factor: int = 1


class RelaySettings(_Section):
    enabled: bool = True
    batch_size: int = 500
    idle_poll_s: float = 0.5
    max_attempts: int = 10
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    leader_retry_s: float = 5.0


class PipelineSettings(_Section):
    mode: Literal["events", "scheduled"] = "events"
    scheduled_processing_interval_s: float = 1.0
    scheduled_monitoring_interval_s: float = 2.0


class MonitoringSettings(_Section):
    actors: int = 4
    mailbox_capacity: int = 100_000
    poll_initial_s: float = 1.0
    poll_max_s: float = 60.0
    poll_growth: float = 1.5
    job_deadline_s: float = 86_400.0
    schedule_max: int = 1_000_000


class SweeperSettings(_Section):
    interval_s: float = 10.0
    received_after_s: float = 30.0
    submitted_unpolled_after_s: float = 300.0
    batch_size: int = 1_000


class EventsSettings(_Section):
    source: str = "/oms"
    topic_requested: str = "oms.document.requested"
    topic_submitted: str = "oms.document.submitted"
    topic_status: str = "oms.document.status"


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    intake: IntakeSettings = IntakeSettings()
    refdata: RefDataSettings = RefDataSettings()
    processing: ProcessingSettings = ProcessingSettings()
    thunderhead: ThunderheadSettings = ThunderheadSettings()
    pipeline: PipelineSettings = PipelineSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    sweeper: SweeperSettings = SweeperSettings()
    kafka: KafkaSettings = KafkaSettings()
    relay: RelaySettings = RelaySettings()
    events: EventsSettings = EventsSettings()
    logging: LoggingSettings = LoggingSettings()

    @property
    def embedded(self) -> bool:
        """True when OMS runs its own database: the single-machine default."""
        return not self.database.dsn


_AT_PATH = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (default: the repo's config.toml), apply overrides, validate."""
    path = path or DEFAULT_CONFIG_PATH
    environ = os.environ if environ is None else environ
    try:
        raw = msgspec.toml.decode(path.read_bytes()) if path.exists() else {}
    except msgspec.DecodeError as exc:
        raise exceptions.ConfigError(str(path), f"not valid TOML: {exc}") from exc
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            _apply_override(raw, name, value)
    return _convert(raw)


def _apply_override(raw: dict[str, Any], env_name: str, value: str) -> None:
    parts = [p.lower() for p in env_name.removeprefix(ENV_PREFIX).split("__")]
    if len(parts) != 2 or not all(parts):
        raise exceptions.ConfigError(env_name, "expected OMS_<SECTION>__<KEY>")
    section, key = parts
    section_field = _field(Settings, section)
    if section_field is None:
        raise exceptions.ConfigError(env_name, f"unknown section {section!r}")
    key_field = _field(section_field.type, key)
    if key_field is None:
        raise exceptions.ConfigError(env_name, f"unknown key {section}.{key}")
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise exceptions.ConfigError(section, "must be a table")
    # Environment values are strings: decode them leniently ("8081" -> 8081) by
    # converting this one key now, so its error names the variable.
    try:
        target[key] = msgspec.convert(value, key_field.type, strict=False)
    except msgspec.ValidationError as exc:
        raise exceptions.ConfigError(env_name, str(exc).split(" - at ")[0]) from exc


def _field(struct_type: Any, name: str) -> msgspec.structs.FieldInfo | None:
    return next((f for f in msgspec.structs.fields(struct_type) if f.name == name), None)


def _convert(raw: dict[str, Any]) -> Settings:
    try:
        return msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT_PATH.search(message)
        key = at.group(1) if at else ""
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown:
            key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
            raise exceptions.ConfigError(key, "unknown key") from exc
        raise exceptions.ConfigError(key or "<root>", message.split(" - at ")[0]) from exc
