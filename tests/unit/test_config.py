from __future__ import annotations

from pathlib import Path

import pytest

from oms import config, exceptions


def test_shipped_config_toml_holds_every_default() -> None:
    """config.toml and the Struct defaults must agree, key for key."""
    assert config.load(environ={}) == config.Settings()


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
