"""DICOM over TLS: the TLS contexts of the listener and of the destinations.

DICOM secures an association by running it over TLS (PS3.15 Annex B; PS3.8 for the port,
2762 being registered as ``dicom-tls``). The node follows the BCP 195 Non-Downgrading TLS
Secure Transport Connection Profile (PS3.15 B.9): TLS 1.2 or later, never an older version
even when the peer offers only that, and for TLS 1.2 only the BCP 195 recommended AEAD
cipher suites with forward secrecy (ECDHE or DHE key exchange, AES-GCM). TLS 1.3 suites
are all AEAD with forward secrecy, so OpenSSL's defaults stand. DCMTK 3.6.7 offers exactly
this profile by default (``+py``), so ``storescu +tls`` and Orthanc connect without options.

Certificates are PEM files. Errors are :class:`TlsConfigError` with one line naming the file
and what is wrong with it; the caller adds the setting it came from. This module reads
files only when asked to build a context: the listener builds its context once at start-up,
a destination at every association, so a renewed client certificate is used without a
restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = [
    "BCP195_TLS12_CIPHERS",
    "HandshakeRecordingContext",
    "TlsConfigError",
    "client_context",
    "failure_reason",
    "server_context",
]

# BCP 195 (RFC 9325 4.2) recommended TLS 1.2 suites, in OpenSSL's names: the four of the
# DICOM profile (ECDHE/DHE RSA with AES-GCM), and their ECDSA twins for EC certificates.
BCP195_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


# OpenSSL reasons whose name does not say what the operator should look at.
_NOT_TLS = "the peer does not speak TLS: plain DICOM on a TLS port?"
_HINTS = {
    # The first bytes were not a TLS record, e.g. an A-ASSOCIATE-RQ.
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "UNKNOWN_PROTOCOL": _NOT_TLS,
    "HTTP_REQUEST": _NOT_TLS,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer wants our client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not accept our certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA of our certificate",
}


class TlsConfigError(ValueError):
    """A certificate, key or CA bundle that cannot be used; the message names the file.

    ``field`` is the setting at fault (``certificate``, ``private_key``,
    ``ca_certificates``), for the caller to name in full (``scp.tls.private_key``).
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class _EncryptedKeyError(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and a service would hang.
    raise _EncryptedKeyError


def _read_pem(path: Path, field: str, marker: str) -> None:
    """Fail early, with the file named, when ``path`` cannot be read or holds no PEM
    ``marker``: OpenSSL itself says only "PEM lib" and not which file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{path}: cannot read: {exc.strerror or exc}", field) from None
    if marker.encode() not in text:
        what = marker.strip("-").removeprefix("BEGIN ").lower()
        raise TlsConfigError(f"{path}: no PEM {what} in it", field)


def _load_chain(ctx: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    _read_pem(certificate, "certificate", "-----BEGIN CERTIFICATE-----")
    _read_pem(private_key, "private_key", "PRIVATE KEY-----")
    try:
        ctx.load_cert_chain(certificate, private_key, password=_no_password)
    except _EncryptedKeyError:
        raise TlsConfigError(
            f"{private_key} is encrypted: give the node an unencrypted key, readable by it only",
            "private_key",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                f"{private_key} is not the key of the certificate {certificate}", "private_key"
            ) from None
        raise TlsConfigError(
            f"{certificate} (with the key {private_key}) cannot be used: {failure_reason(exc)}",
            "certificate",
        ) from None


def _load_trust(ctx: ssl.SSLContext, ca_certificates: Path) -> None:
    _read_pem(ca_certificates, "ca_certificates", "-----BEGIN CERTIFICATE-----")
    try:
        ctx.load_verify_locations(cafile=ca_certificates)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"{ca_certificates} cannot be used: {failure_reason(exc)}", "ca_certificates"
        ) from None


def _bcp195(ctx: ssl.SSLContext) -> None:
    """The PS3.15 B.9 profile: TLS 1.2+, no downgrade, BCP 195 suites, no compression or
    renegotiation (RFC 9325 3.3, 3.5)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def server_context(
    certificate: Path,
    private_key: Path,
    *,
    ca_certificates: Path | None = None,
    require_client_certificate: bool = True,
) -> ssl.SSLContext:
    """The listener's context.

    Parameters
    ----------
    certificate, private_key
        The node's own certificate (chain, leaf first) and its unencrypted key, PEM.
    ca_certificates
        The CAs whose client certificates are trusted; None: client certificates are not
        asked for (TLS protects the wire, the calling AE and host lists decide who may send).
    require_client_certificate
        Refuse a client without a certificate (mutual TLS, PS3.15 B.9 peer authentication);
        False: a client certificate is still verified when one is presented.

    Raises
    ------
    TlsConfigError
        A file is missing, unreadable, not PEM, encrypted, or key and certificate differ;
        ``require_client_certificate`` without ``ca_certificates``.
    """
    if require_client_certificate and ca_certificates is None:
        raise TlsConfigError(
            "requiring client certificates needs a CA bundle to verify them", "ca_certificates"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _bcp195(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, certificate, private_key)
    if ca_certificates is not None:
        _load_trust(ctx, ca_certificates)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _RecordingSSLSocket(ssl.SSLSocket):
    """Keeps the first TLS error on its context: pynetdicom connects and reads in its own
    thread, logs the error and reports only "association failed".

    Reads count too: in TLS 1.3 the client's handshake is over before the server has
    checked the client's certificate, so a refusal arrives as an alert on the first read.
    """

    def _record(self, exc: OSError) -> None:
        context = self.context
        if (
            isinstance(exc, ssl.SSLError)
            and isinstance(context, HandshakeRecordingContext)
            and context.handshake_error is None
        ):
            context.handshake_error = failure_reason(exc)

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except OSError as exc:
            self._record(exc)
            raise

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        try:
            return super().recv_into(buffer, nbytes, flags)
        except OSError as exc:
            self._record(exc)
            raise


class HandshakeRecordingContext(ssl.SSLContext):
    """A client context for one association that remembers why its handshake failed.

    ``handshake_error`` is the one-line reason (None while none failed); a delivery shows
    it instead of pynetdicom's "association failed".
    """

    handshake_error: str | None = None
    sslsocket_class = _RecordingSSLSocket


def client_context(
    *,
    ca_certificates: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
) -> HandshakeRecordingContext:
    """A destination's context: verify the peer's certificate and host name, and present
    our own certificate when the peer asks for one (mutual TLS).

    Parameters
    ----------
    ca_certificates
        The CAs that sign the peer's certificate (a self-signed one is its own CA);
        None: the system's trusted CAs.
    certificate, private_key
        Our client certificate and unencrypted key, PEM; both or neither.

    Raises
    ------
    TlsConfigError
        As :func:`server_context`; one of ``certificate`` and ``private_key`` without the
        other.
    """
    if (certificate is None) != (private_key is None):
        raise TlsConfigError(
            "a client certificate needs its private key, and the key its certificate",
            "certificate" if certificate is None else "private_key",
        )
    ctx = HandshakeRecordingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
    _bcp195(ctx)
    if ca_certificates is not None:
        _load_trust(ctx, ca_certificates)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and private_key is not None:
        _load_chain(ctx, certificate, private_key)
    return ctx


def failure_reason(exc: BaseException) -> str:
    """One line saying why a TLS handshake or set-up failed, for the log and the admin page.

    OpenSSL's reason code says it best (``CERTIFICATE_VERIFY_FAILED``,
    ``PEER_DID_NOT_RETURN_A_CERTIFICATE``, ``WRONG_VERSION_NUMBER`` for plain DICOM on a
    TLS port, ``UNSUPPORTED_PROTOCOL``, ``NO_SHARED_CIPHER``); the verification message
    adds which certificate check failed.
    """
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message.rstrip('.')}"
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the time allowed"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        return "the peer closed the connection during the TLS handshake"
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        text = str(reason).replace("_", " ").lower()
        hint = _HINTS.get(str(reason))
        return f"{text} ({hint})" if hint else text
    return str(exc) or type(exc).__name__
