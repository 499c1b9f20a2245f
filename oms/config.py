"""Settings: ``config.toml`` holds every default; ``OMS_SECTION__KEY`` overrides one key.

The TOML is decoded into a tree of frozen msgspec Structs in one call. Overrides
from the environment are applied to the raw tree before decoding, so a bad value
from either place fails the same way: with a message naming the key.

The Structs repeat the defaults so code and tests can build settings without the
file; tests/unit/test_config.py keeps both key for key equal, and config.toml's
comments stay the operator's documentation of each key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from oms import exceptions

ENV_PREFIX = "OMS_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


# Value limits live in the types, so a bad value fails at load naming its key
# rather than deep in some constructor (or, worse, spins a loop at 0).
Positive = Annotated[float, msgspec.Meta(gt=0)]  # timeouts, intervals, rates, deadlines
NonNegative = Annotated[float, msgspec.Meta(ge=0)]  # waits and windows: 0 means none
Count = Annotated[int, msgspec.Meta(ge=1)]  # sizes, capacities, workers
NonNegativeCount = Annotated[int, msgspec.Meta(ge=0)]  # 0 means none
Port = Annotated[int, msgspec.Meta(ge=0, le=65_535)]  # 0: a free port
Fraction = Annotated[float, msgspec.Meta(gt=0, lt=1)]
Growth = Annotated[float, msgspec.Meta(ge=1)]


# msgspec passes ``frozen`` and the other options on to subclasses, but type
# checkers only see them where they are written: each subclass repeats frozen=True.
class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class PoolSection(_Section, frozen=True):
    """An actor pool's supervision: replacing a crashed actor, waiting at shutdown."""

    restart_backoff_s: NonNegative = 0.5
    max_redeliveries: NonNegativeCount = 5
    drain_deadline_s: NonNegative = 10.0


class ServerSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    shutdown_timeout_s: Positive = 10.0


class DatabaseSettings(_Section, frozen=True):
    dsn: str = ""
    data_dir: str = "var/pgdata"
    embedded_port: Port = 0
    pool_min_size: NonNegativeCount = 2
    pool_max_size: Count = 10
    connect_timeout_s: Positive = 5.0
    command_timeout_s: Positive = 10.0


class IntakeSettings(_Section, frozen=True):
    max_body_bytes: Count = 262_144
    max_batch_body_bytes: Count = 10_485_760
    max_data_bytes: Count = 65_536
    max_batch_items: Count = 1_000
    group_commit: bool = True
    commit_max_rows: Count = 1_000
    commit_writers: Count = 2
    idempotency_ttl_s: Positive = 86_400.0
    idempotency_purge_interval_s: Positive = 300.0
    page_size_default: Count = 50
    page_size_max: Count = 200
    api_key_cache_ttl_s: NonNegative = 30.0


class RefDataSettings(_Section, frozen=True):
    base_url: str = ""
    timeout_s: Positive = 2.0
    ttl_s: NonNegative = 60.0
    revalidate_window_s: NonNegative = 600.0


class ProcessingSettings(PoolSection, frozen=True):
    start_paused: bool = False
    actors: Count = 8
    mailbox_capacity: Count = 10_000
    lease_s: Positive = 120.0
    max_attempts: Count = 10
    backoff_base_s: NonNegative = 2.0
    backoff_max_s: NonNegative = 900.0
    batch_max_documents: Count = 100
    batch_max_age_s: NonNegative = 0.5
    batch_max_bytes: Count = 8_000_000
    submitters: Count = 4
    retry_schedule_max: Count = 100_000
    deadline_s: Positive = 86_400.0
    wait_backoff_max_s: Positive = 60.0
    in_flight_window_s: NonNegative = 120.0
    reconcile_deadline_s: Positive = 21_600.0
    reconcile_interval_s: Positive = 1.0
    reconcilers: Count = 2
    split_max_extra_calls: NonNegativeCount = 32


class ThunderheadSettings(_Section, frozen=True):
    base_url: str = ""  # empty: the in-process simulator
    client_id: str = "oms"
    client_secret: str = "oms-simulator-secret"
    grant_type: Literal["client_credentials", "password"] = "client_credentials"
    client_auth: Literal["basic", "form"] = "basic"
    correlation_field: str = "correlationReference"
    project_id: NonNegativeCount = 0
    username: str = ""
    password: str = ""
    token_path: str = "/one/oauth2Server/token"
    api_path: str = "/one/oauth2/api/v12/job"
    timeout_s: Positive = 10.0
    submit_timeout_s: Positive = 30.0
    rate_limit_per_s: Positive = 15.0
    rate_limit_burst: Count = 4
    rate_min_per_s: Positive = 0.5
    rate_decrease_factor: Fraction = 0.5
    rate_recovery_s: Positive = 30.0
    rate_ceiling_ttl_s: NonNegative = 600.0
    max_concurrency: Count = 8
    token_refresh_margin_s: NonNegative = 60.0
    wait_429_s: NonNegative = 60.0
    wait_500_s: NonNegative = 5.0
    wait_503_s: NonNegative = 120.0
    max_request_bytes: Count = 10_000_000


class KafkaSettings(_Section, frozen=True):
    bootstrap_servers: str = ""  # empty: the embedded Tansu broker
    embedded_host: str = "127.0.0.1"
    embedded_port: Port = 9092
    client_id: str = "oms"
    enable_idempotence: bool = True  # the embedded broker cannot: forced off there
    request_timeout_s: Positive = 10.0
    topic_partitions: Count = 3
    topic_replication_factor: Count = 1


class RelaySettings(_Section, frozen=True):
    enabled: bool = True
    batch_size: Count = 500
    idle_poll_s: Positive = 0.5
    max_attempts: Count = 10
    backoff_base_s: NonNegative = 0.5
    backoff_max_s: NonNegative = 60.0
    leader_retry_s: Positive = 5.0


class PipelineSettings(_Section, frozen=True):
    mode: Literal["events", "scheduled"] = "events"
    scheduled_processing_interval_s: Positive = 1.0
    scheduled_monitoring_interval_s: Positive = 2.0


class MonitoringSettings(PoolSection, frozen=True):
    actors: Count = 4
    mailbox_capacity: Count = 100_000
    poll_initial_s: Positive = 1.0
    poll_max_s: Positive = 60.0
    poll_growth: Growth = 1.5
    job_deadline_s: Positive = 86_400.0
    schedule_max: Count = 1_000_000


class SweeperSettings(_Section, frozen=True):
    interval_s: Positive = 10.0
    received_after_s: NonNegative = 30.0
    submitted_unpolled_after_s: NonNegative = 300.0
    batch_size: Count = 1_000


class EventsSettings(_Section, frozen=True):
    source: str = "/oms"
    topic_requested: str = "oms.document.requested"
    topic_submitted: str = "oms.document.submitted"
    topic_status: str = "oms.document.status"


class LoggingSettings(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(_Section, frozen=True):
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
