from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from oms import config, exceptions

ROOT = config.DEFAULT_CONFIG_PATH.parent


def _struct_keys() -> dict[str, set[str]]:
    return {
        section.name: {key.name for key in msgspec.structs.fields(section.type)}
        for section in msgspec.structs.fields(config.Settings)
    }


def test_shipped_config_toml_names_every_setting() -> None:
    """config.toml is the operator's documentation: a setting missing there is undocumented."""
    raw = msgspec.toml.decode(config.DEFAULT_CONFIG_PATH.read_bytes())
    in_file = {f"{section}.{key}" for section, keys in raw.items() for key in keys}
    in_structs = {f"{section}.{key}" for section, keys in _struct_keys().items() for key in keys}
    assert sorted(in_structs - in_file) == [], "settings missing from config.toml"
    assert sorted(in_file - in_structs) == [], "keys in config.toml that are no setting"


def test_shipped_config_toml_holds_every_default() -> None:
    """config.toml and the Struct defaults must agree, key for key."""
    assert config.load(environ={}) == config.Settings()


def test_docs_name_only_real_settings() -> None:
    """Every ``section.key`` and OMS_SECTION__KEY in the docs is a setting that exists."""
    keys = _struct_keys()
    named = re.compile(rf"`({'|'.join(keys)})\.([a-z0-9_*]+)|OMS_([A-Z]+)__([A-Z0-9_]+)")
    texts = [ROOT / "README.md", ROOT / "config.toml", *sorted((ROOT / "docs").glob("*.md"))]
    unknown = []
    for text in texts:
        for match in named.finditer(text.read_text()):
            section, key = (
                (match[1], match[2]) if match[1] else (match[3].lower(), match[4].lower())
            )
            pattern = re.compile(key.replace("*", "[a-z0-9_]+"))
            if not any(pattern.fullmatch(k) for k in keys.get(section, ())):
                unknown.append(f"{text.name}: {match[0]}")
    assert unknown == []


def test_monitoring_pool_has_its_own_supervision_settings() -> None:
    """Same defaults as processing's, but set apart from them."""
    defaults = config.Settings()
    for key in ("restart_backoff_s", "max_redeliveries", "drain_deadline_s"):
        assert getattr(defaults.monitoring, key) == getattr(defaults.processing, key)
    settings = config.load(environ={"OMS_MONITORING__DRAIN_DEADLINE_S": "3"})
    assert settings.monitoring.drain_deadline_s == 3.0
    assert settings.processing.drain_deadline_s == defaults.processing.drain_deadline_s


def test_environment_overrides_one_key_with_type_conversion() -> None:
    settings = config.load(
        environ={"OMS_SERVER__PORT": "9090", "OMS_INTAKE__GROUP_COMMIT": "false"}
    )
    assert settings.server.port == 9090
    assert settings.intake.group_commit is False


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OMS_SERVER__PORT": "eighty"}, "OMS_SERVER__PORT"),
        ({"OMS_SERVER__NOPE": "1"}, "server.nope"),
        ({"OMS_NOSECTION__PORT": "1"}, "nosection"),
        ({"OMS_SERVER": "1"}, "OMS_SERVER"),
        ({"OMS_LOGGING__LEVEL": "LOUD"}, "OMS_LOGGING__LEVEL"),
    ],
)
def test_bad_environment_value_names_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(exceptions.ConfigError, match=named):
        config.load(environ=environ)


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"OMS_PROCESSING__ACTORS": "0"}, ">= 1"),
        ({"OMS_SERVER__PORT": "70000"}, "<= 65535"),
        ({"OMS_DATABASE__COMMAND_TIMEOUT_S": "0"}, "> 0"),
        ({"OMS_PROCESSING__BACKOFF_BASE_S": "-1"}, ">= 0"),
        ({"OMS_MONITORING__POLL_GROWTH": "0.9"}, ">= 1"),
        # what the Thunderhead client and its rate limiter cannot work with
        ({"OMS_THUNDERHEAD__RATE_LIMIT_PER_S": "0"}, "> 0"),
        ({"OMS_THUNDERHEAD__RATE_LIMIT_PER_S": "-1"}, "> 0"),
        ({"OMS_THUNDERHEAD__RATE_LIMIT_BURST": "0"}, ">= 1"),
        ({"OMS_THUNDERHEAD__MAX_CONCURRENCY": "0"}, ">= 1"),
        ({"OMS_THUNDERHEAD__RATE_DECREASE_FACTOR": "0"}, "> 0"),
        ({"OMS_THUNDERHEAD__RATE_DECREASE_FACTOR": "1"}, "< 1"),
        ({"OMS_THUNDERHEAD__RATE_RECOVERY_S": "0"}, "> 0"),
        ({"OMS_THUNDERHEAD__RATE_MIN_PER_S": "0"}, "> 0"),
    ],
)
def test_out_of_range_environment_value_names_the_key_and_the_limit(
    environ: dict[str, str], reason: str
) -> None:
    with pytest.raises(exceptions.ConfigError, match=next(iter(environ))) as caught:
        config.load(environ=environ)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("toml", "named", "reason"),
    [
        ("[processing]\nsubmitters = 0\n", "processing.submitters", ">= 1"),
        ("[thunderhead]\nrate_decrease_factor = 1.5\n", "thunderhead.rate_decrease_factor", "< 1"),
        ("[relay]\nidle_poll_s = 0.0\n", "relay.idle_poll_s", "> 0"),
    ],
)
def test_out_of_range_value_in_file_names_the_key_and_the_limit(
    tmp_path: Path, toml: str, named: str, reason: str
) -> None:
    path = tmp_path / "oms.toml"
    path.write_text(toml)
    with pytest.raises(exceptions.ConfigError) as caught:
        config.load(path, environ={})
    assert caught.value.key == named
    assert reason in caught.value.reason


def test_unknown_key_in_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "oms.toml"
    path.write_text('[database]\ndsn = ""\npool_size = 3\n')
    with pytest.raises(exceptions.ConfigError, match=r"database\.pool_size"):
        config.load(path, environ={})


def test_wrong_type_in_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "oms.toml"
    path.write_text('[server]\nport = "high"\n')
    with pytest.raises(exceptions.ConfigError, match=r"server\.port"):
        config.load(path, environ={})


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "oms.toml"
    path.write_text("[server\n")
    with pytest.raises(exceptions.ConfigError, match="not valid TOML"):
        config.load(path, environ={})


def test_embedded_when_no_dsn() -> None:
    assert config.Settings().embedded
    assert not config.load(environ={"OMS_DATABASE__DSN": "postgresql://x/y"}).embedded
