"""Configuration: embedded defaults, environment overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import DEFAULT_CONFIG, ConfigError, load_settings


def test_embedded_defaults_load() -> None:
    settings = load_settings(environ={})
    assert settings.source == str(DEFAULT_CONFIG)
    assert settings.node.ae_title == "DICOM_NODE"
    assert settings.scp.port == 11112
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("data/dicom-node.db")
    assert settings.spool_dir == Path("data/spool").resolve()
    assert settings.completion.quiet_seconds > 0


def test_environment_overrides() -> None:
    settings = load_settings(
        environ={
            "DICOM_NODE__SCP__PORT": "11113",
            "DICOM_NODE__NODE__AE_TITLE": "OTHER_AE",
            "DICOM_NODE__SCP__ALLOWED_CALLING_AES": '["PACS1", "PACS2"]',
            "DICOM_NODE__STORAGE__DATABASE_URL": "postgresql://u@h/db",
            "UNRELATED": "x",
        }
    )
    assert settings.scp.port == 11113
    assert settings.node.ae_title == "OTHER_AE"
    assert settings.scp.allowed_calling_aes == ("PACS1", "PACS2")
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.source.endswith("+ environment")


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message, "the message must name the file"
    return message


def test_ae_title_too_long(tmp_path: Path) -> None:
    message = _error(tmp_path, '[node]\nae_title = "A_VERY_LONG_AE_TITLE"\n')
    assert "node.ae_title" in message and "at most 16" in message


def test_port_out_of_range(tmp_path: Path) -> None:
    message = _error(tmp_path, "[scp]\nport = 70000\n")
    assert "scp.port" in message and "65535" in message


def test_association_limits_are_validated(tmp_path: Path) -> None:
    defaults = load_settings(environ={}).scp
    assert (defaults.max_associations, defaults.max_associations_per_host) == (32, 8)
    assert (defaults.acse_timeout, defaults.network_timeout) == (30, 60)
    message = _error(tmp_path, "[scp]\nmax_associations = 4\nmax_associations_per_host = 5\n")
    assert "scp" in message and "max_associations_per_host (5) is more than" in message
    message = _error(tmp_path, "[scp]\nmax_associations_per_host = 0\n")
    assert "scp.max_associations_per_host" in message


def test_env_port_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"DICOM_NODE__SCP__PORT": "0"})
    assert "scp.port" in str(info.value) and "environment" in str(info.value)


def test_route_with_unknown_destination(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        '[[routes]]\nname = "r1"\nforward = true\ndestinations = ["nowhere"]\n',
    )
    assert "routes[0] (r1).destinations" in message and "'nowhere'" in message


def test_route_with_unknown_model(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        '[[routes]]\nname = "r1"\nmodels = ["no-such-model"]\n',
    )
    assert "routes[0] (r1).models" in message and "no-such-model" in message


def test_unknown_key_and_bad_regex(tmp_path: Path) -> None:
    assert "scp.prot" in _error(tmp_path, "[scp]\nprot = 1\n")
    message = _error(
        tmp_path,
        '[[destinations]]\nname="p"\nae_title="P"\nhost="h"\nport=104\n'
        '[[routes]]\nname = "r"\nforward = true\ndestinations=["p"]\nmatch = { Modality = "(" }\n',
    )
    assert "routes.0.match" in message and "invalid regular expression" in message


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[scp\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_cli_reports_config_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[scp]\nport = -1\n")
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "scp.port" in err and str(path) in err


def test_malformed_manifest_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models" / "broken"
    models.mkdir(parents=True)
    (models / "model.toml").write_text('id = "broken"\nname = "x"\nversion = 1\n')
    config = tmp_path / "node.toml"
    config.write_text(f'[models]\ndir = "{tmp_path / "models"}"\n[web]\nenabled = false\n')
    assert main(["--config", str(config), "models", "list"]) == 2
    err = capsys.readouterr().err
    assert "broken/model.toml" in err and "version" in err
