"""TLS settings and certificate files: every mistake is one line naming the key and file.

The settings are checked when they load (``[scp.tls]`` incomplete, a port shared with the
plain listener, a destination's certificate without its key); the files when a context is
built (missing, not PEM, an encrypted key, a key of another certificate).
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_settings
from dicom_node.tls import BCP195_TLS12_CIPHERS, TlsConfigError, client_context, server_context
from tests.peers import TlsFiles


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    return str(info.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[scp.tls]\nenabled = true\n",
            "scp.tls: enabled = true needs certificate and private_key (PEM files)",
        ),
        (
            '[scp.tls]\nenabled = true\ncertificate = "c.pem"\nprivate_key = "k.pem"\n',
            "scp.tls: require_client_certificate = true needs ca_certificates",
        ),
        ("[scp.tls]\nonly = true\n", "scp.tls: only = true needs enabled = true"),
        (
            '[scp]\nport = 2762\n[scp.tls]\nenabled = true\ncertificate = "c.pem"\n'
            'private_key = "k.pem"\nrequire_client_certificate = false\n',
            "scp: tls.port 2762 is also the plain port (scp.port)",
        ),
        (
            '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
            'tls = { certificate = "c.pem" }\n',
            "destinations.0.tls: certificate and private_key go together",
        ),
    ],
    ids=["no-files", "no-ca", "only-alone", "same-port", "cert-without-key"],
)
def test_incomplete_settings_are_named(tmp_path: Path, toml: str, expected: str) -> None:
    prefix = "routes = []\n" + ("" if "[[destinations]]" in toml else "destinations = []\n")
    message = _error(tmp_path, prefix + toml)
    assert expected in message
    assert str(tmp_path / "node.toml") in message


def test_environment_turns_tls_on(tls_files: TlsFiles) -> None:
    settings = load_settings(
        environ={
            "DICOM_NODE__SCP__TLS__ENABLED": "true",
            "DICOM_NODE__SCP__TLS__CERTIFICATE": str(tls_files.server_cert),
            "DICOM_NODE__SCP__TLS__PRIVATE_KEY": str(tls_files.server_key),
            "DICOM_NODE__SCP__TLS__REQUIRE_CLIENT_CERTIFICATE": "false",
        }
    )
    assert settings.scp.tls.enabled and settings.scp.tls.port == 2762
    assert settings.scp.tls.certificate == tls_files.server_cert
    assert settings.scp.tls.ca_certificates is None  # "" in node.toml means unset


def test_profile_is_bcp195_non_downgrading(tls_files: TlsFiles) -> None:
    for context in (
        server_context(tls_files.server_cert, tls_files.server_key, ca_certificates=tls_files.ca),
        client_context(ca_certificates=tls_files.ca),
    ):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 == set(BCP195_TLS12_CIPHERS.split(":"))
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION


def test_file_errors_name_the_file_and_the_setting(tls_files: TlsFiles, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(tls_files.server_key), "-aes256", "-passout", "pass:x"],
        stdout=encrypted.open("wb"),
        check=True,
    )
    cases = [
        (
            lambda: server_context(tls_files.server_cert, encrypted, ca_certificates=tls_files.ca),
            "private_key",
            f"{encrypted} is encrypted: give the node an unencrypted key, readable by it only",
        ),
        (
            lambda: server_context(
                tls_files.server_key, tls_files.server_key, ca_certificates=tls_files.ca
            ),
            "certificate",
            f"{tls_files.server_key}: no PEM certificate in it",
        ),
        (
            lambda: client_context(certificate=tls_files.client_cert),
            "private_key",
            "a client certificate needs its private key, and the key its certificate",
        ),
        (
            lambda: server_context(tls_files.server_cert, tls_files.server_key),
            "ca_certificates",
            "requiring client certificates needs a CA bundle to verify them",
        ),
    ]
    for build, field, message in cases:
        with pytest.raises(TlsConfigError) as info:
            build()
        assert (info.value.field, str(info.value)) == (field, message)
