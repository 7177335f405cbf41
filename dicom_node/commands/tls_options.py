"""``--tls`` options of the commands that associate with a peer (``echo``, ``send``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dicom_node.config import ConfigError
from dicom_node.tls import HandshakeRecordingContext, TlsConfigError, client_context

_FLAGS = {"ca_certificates": "--tls-ca", "certificate": "--tls-cert", "private_key": "--tls-key"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the TLS options; any of them turns TLS on."""
    group = parser.add_argument_group(
        "DICOM over TLS (BCP 195 profile, PS3.15 B.9; any of these turns TLS on)"
    )
    group.add_argument(
        "--tls", action="store_true", help="associate over TLS, trusting the system's CAs"
    )
    group.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="CAs that sign the peer's certificate"
    )
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="our client certificate")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="its unencrypted private key")
    group.add_argument(
        "--tls-server-name", metavar="NAME", help="name in the peer's certificate (default: HOST)"
    )


def tls_args(args: argparse.Namespace, host: str) -> tuple[HandshakeRecordingContext, str] | None:
    """pynetdicom's ``tls_args`` from the options; None without any of them.

    Raises
    ------
    ConfigError
        A file cannot be used; one line naming the option and the file.
    """
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    try:
        context = client_context(
            ca_certificates=args.tls_ca, certificate=args.tls_cert, private_key=args.tls_key
        )
    except TlsConfigError as exc:
        raise ConfigError(f"{_FLAGS[exc.field]}: {exc}") from None
    return context, args.tls_server_name or host


def failure(tls: tuple[HandshakeRecordingContext, str] | None) -> str:
    """Why an association failed, when its TLS handshake did: ``": TLS handshake failed:
    ..."``, else an empty string."""
    if tls is not None and tls[0].handshake_error:
        return f": TLS handshake failed: {tls[0].handshake_error}"
    return ""
