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


def test_release_aes_are_checked_like_other_ae_titles(tmp_path: Path) -> None:
    message = _error(tmp_path, '[completion]\nrelease_aes = ["PACS\\\\1"]\n')
    assert "completion.release_aes" in message and "backslash" in message
    message = _error(tmp_path, "[completion]\nrelease_grace_seconds = -1\n")
    assert "completion.release_grace_seconds" in message
    settings = load_settings(
        environ={"DICOM_NODE__COMPLETION__RELEASE_AES": '["PACS1 "]'},
    )
    assert settings.completion.release_aes == ("PACS1",)
    assert settings.completion.release_grace_seconds == 1.0


def test_destination_fields_by_kind(tmp_path: Path) -> None:
    """A dimse destination needs an AE, host and port; a dicomweb one a URL and, for its
    auth, a token or a username and password; each message names the destination."""
    cases = {
        'name="p"\nhost="h"\nport=104': "a dimse destination needs ae_title",
        'name="w"\nkind="dicomweb"': "a dicomweb destination needs url = http(s)://",
        'name="w"\nkind="dicomweb"\nurl="ftp://x/dicom-web"': "needs url = http(s)://",
        'name="w"\nkind="dicomweb"\nurl="https://x/dw"\nhost="h"': "ae_title, host and port "
        'are for kind = "dimse"',
        'name="w"\nkind="dicomweb"\nurl="https://x/dw"\nauth="bearer"': '"bearer" needs token',
        'name="w"\nkind="dicomweb"\nurl="https://x/dw"\nauth="basic"\nusername="u"': (
            '"basic" needs username and password'
        ),
        'name="w"\nkind="dicomweb"\nurl="http://x/dw"\ntls={}': "tls is for an https:// url",
        'name="w"\nkind="dicomweb"\nurl="https://x/dw"\ntls={server_name="x"}': (
            "tls.server_name is for dimse destinations"
        ),
        'name="p"\nae_title="P"\nhost="h"\nport=104\nurl="http://x"': (
            'url is for kind = "dicomweb"'
        ),
    }
    for body, expected in cases.items():
        message = _error(tmp_path, f"[[destinations]]\n{body}\n")
        assert expected in message, body
        assert "destinations.0" in message


def test_dicomweb_destination_keeps_its_secrets_out_of_messages(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[[destinations]]\nname = "cloud"\nkind = "dicomweb"\n'
        'url = "https://archive.example.org/dicom-web"\nauth = "bearer"\ntoken = "s3cr3t"\n'
        '[[destinations]]\nname = "pacs"\nkind = "dicomweb"\nurl = "http://127.0.0.1:8042/dw"\n'
        'auth = "basic"\nusername = "node"\npassword = "hunter22"\n'
    )
    settings = load_settings(path, environ={}, overrides={"routes": []})
    cloud, pacs = settings.destinations
    assert cloud.token.get_secret_value() == "s3cr3t" and cloud.where.startswith("https://")
    assert pacs.password.get_secret_value() == "hunter22"
    shown = repr(settings) + str(settings.model_dump())
    assert "s3cr3t" not in shown and "hunter22" not in shown


def test_dicomweb_door_settings(tmp_path: Path) -> None:
    assert load_settings(environ={}).dicomweb.max_request_size == 2 * 1024**3
    message = _error(tmp_path, '[dicomweb]\ncalling_ae = "A\\\\B"\n')
    assert "dicomweb.calling_ae" in message and "backslash" in message
