"""Real third-party DICOM peers for the tests: Orthanc (as the PACS) and DCMTK tools.

Each peer runs as its own process on 127.0.0.1 with free ports and its own folders, so the
tests exercise the same sockets and protocols a hospital network would.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pydicom
from pynetdicom import AE, _config

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
# Debian orthanc-dicomweb: QIDO-RS, WADO-RS and STOW-RS (server and client) under /dicom-web/.
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# DCMTK on loopback waits for Nagle's algorithm (40 ms per instance) unless told not to.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PeerExitedError(RuntimeError):
    """The peer process ended while we waited for its port."""


def wait_for_port(
    port: int,
    timeout: float = 20.0,
    host: str = "127.0.0.1",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until something accepts connections on ``host:port``; with ``process``, stop
    waiting (PeerExitedError) as soon as that process has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PeerExitedError(f"the process for {host}:{port} exited ({process.returncode})")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def have_orthanc() -> bool:
    return Path(ORTHANC).exists()


def have_orthanc_dicomweb() -> bool:
    return have_orthanc() and ORTHANC_DICOMWEB_PLUGIN.exists()


def have_dcmtk() -> bool:
    return shutil.which("storescu") is not None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for DICOM TLS tests: a CA, certificates it signed for a server (127.0.0.1
    and localhost) and a client, and a self-signed certificate nobody trusts.

    The server and client certificates carry both TLS purposes: Orthanc uses its one
    certificate as a listener and as a client.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    untrusted_cert: Path
    untrusted_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate :class:`TlsFiles` in ``folder`` (RSA 2048: DCMTK's BCP 195 profile
    negotiates RSA suites only), valid from an hour ago for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicom-node tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def write(stem: str, cert: x509.Certificate, private: rsa.RSAPrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    def certificate(
        subject: str, public: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(public.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public.public_key()), critical=False
            )
        )

    def leaf(
        subject: str, ca_name: x509.Name | None, ca_key: rsa.RSAPrivateKey | None
    ) -> tuple[Path, Path]:
        """A certificate for ``subject`` signed by the CA; self-signed without one."""
        private = key()
        issuer, signer = (ca_name, ca_key) if ca_name and ca_key else (name(subject), private)
        cert = (
            certificate(subject, private, issuer, signer)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )
        return write(subject, cert, private)

    ca_key = key()
    ca_name = name("dicom-node test CA")
    ca_cert = (
        certificate("dicom-node test CA", ca_key, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca_cert, ca_key)
    server = leaf("server", ca_name, ca_key)
    client = leaf("client", ca_name, ca_key)
    untrusted = leaf("untrusted", None, None)  # the client's purposes, self-signed
    return TlsFiles(ca_path, *server, *client, *untrusted)


@dataclass(frozen=True)
class OrthancTls:
    """Orthanc's DICOM TLS: its certificate and key, the CAs it trusts, and whether a
    peer must present a certificate (mutual TLS)."""

    certificate: Path
    private_key: Path
    trusted: Path
    require_client_certificate: bool = True


@dataclass
class Orthanc:
    """A running Orthanc with its REST API on 127.0.0.1."""

    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any, timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def delete(self, path: str) -> None:
        req = urllib.request.Request(self.url + path, method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.post("/instances", path.read_bytes()))

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for orthanc_id in self.instances():
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids

    def instance_tags(self) -> list[dict[str, Any]]:
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.instances()]

    def wait_for_instances(self, count: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while time.monotonic() < deadline:
            found = self.instances()
            if len(found) >= count:
                return found
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc holds {len(found)} instance(s), expected {count}")


def _start_orthanc(
    folder: Path, config: dict[str, Any], *, new_dicom_port: bool, new_http_port: bool = True
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start Orthanc and wait for its ports.

    ``free_port()`` finds a port free now; on a machine busy with other tests another
    process sometimes takes it before Orthanc binds it, and Orthanc exits ("already in
    use"). Then it starts again on new ports (each only if we chose it).
    """
    cfg_path, log_path = folder / "orthanc.json", folder / "orthanc.log"
    for attempt in range(3):
        cfg_path.write_text(json.dumps(config, indent=2))
        log = open(log_path, "wb")  # noqa: SIM115 - closed by run_orthanc
        proc = subprocess.Popen([ORTHANC, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(config["HttpPort"], timeout=30, process=proc)
            wait_for_port(config["DicomPort"], timeout=30, process=proc)
            return proc, log
        except PeerExitedError:
            log.close()
            if attempt == 2 or "already in use" not in log_path.read_text(errors="replace"):
                raise
        except BaseException:
            proc.kill()
            proc.wait()
            log.close()
            raise
        if new_http_port:
            config["HttpPort"] = free_port()
        if new_dicom_port:
            config["DicomPort"] = free_port()
    raise AssertionError("unreachable")


@contextmanager
def run_orthanc(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int] | dict[str, Any]] | None = None,
    lua: str | None = None,
    dicom_port: int | None = None,
    http_port: int | None = None,
    tls: OrthancTls | None = None,
    dicomweb: bool = False,
    extra: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc from a JSON configuration of our own (ports, storage, modalities).

    A modality is ``(AET, host, port)`` or Orthanc's object form, e.g. with
    ``"UseDicomTls": True``. With ``tls`` Orthanc's DICOM port speaks TLS only, and it uses
    the same certificate when it connects to a modality over TLS. ``dicomweb`` loads the
    DICOMweb plugin at ``/dicom-web/`` (and WADO-URI at ``/wado``) with full study and
    series metadata, so a viewer finds an SR's content tree in ``/metadata`` without
    fetching every instance; ``extra`` is merged into the configuration
    last (e.g. ``{"DicomWeb": {"Servers": ...}}``, whose keys are merged into the
    plugin's section, or ``RegisteredUsers``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "Name": "test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port or free_port(),
        "DicomPort": dicom_port or free_port(),
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {
            k: v if isinstance(v, dict) else list(v) for k, v in (modalities or {}).items()
        },
        "Plugins": [],
        "StableAge": 1,
        "OverwriteInstances": False,
        "DicomAlwaysAllowStore": True,
        "DicomScpTimeout": 30,
    }
    if tls is not None:
        config.update(
            {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(tls.certificate),
                "DicomTlsPrivateKey": str(tls.private_key),
                "DicomTlsTrustedCertificates": str(tls.trusted),
                "DicomTlsRemoteCertificateRequired": tls.require_client_certificate,
            }
        )
    if dicomweb:
        config["Plugins"] = [str(ORTHANC_DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if lua:
        script = folder / "forward.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    proc, log = _start_orthanc(
        folder, config, new_dicom_port=dicom_port is None, new_http_port=http_port is None
    )
    http_port, dicom_port = config["HttpPort"], config["DicomPort"]
    try:
        # The REST API answers a little after the port opens.
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers (401 when RegisteredUsers are set)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Orthanc(http_port, dicom_port, aet, folder, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def run_storescp(folder: Path, *, aet: str = "STORESCP") -> Iterator[int]:
    """DCMTK storescp as a destination PACS on a free port, writing what it receives
    (any SOP class, ``+xa``) into ``folder``; yields the port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", aet, "-od", str(folder), "+xa", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "STORESCU",
    aec: str = "DICOM_NODE",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu; ``-xs`` would force a syntax, by default it proposes the file's own."""
    cmd = ["storescu", "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1", str(port)]
    cmd += [str(f) for f in files]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=300)


def echoscu(port: int, *, aet: str = "ECHOSCU", aec: str = "DICOM_NODE") -> int:
    cmd = ["echoscu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, timeout=60).returncode


def pynetdicom_send(
    port: int,
    paths_or_datasets: list[Any],
    *,
    aet: str = "PYSCU",
    aec: str = "DICOM_NODE",
    chunked: bool = True,
    max_pdu: int | None = None,
    tls_args: tuple[Any, str] | None = None,
) -> list[int]:
    """Send with pynetdicom; chunked sending transmits the file's bytes exactly as stored.

    ``max_pdu`` is the largest PDU we accept (pynetdicom's default if None): a small one
    makes the receiver fragment its responses. ``tls_args`` (an ``ssl.SSLContext`` and the
    server name) sends over TLS.
    """
    ae = AE(ae_title=aet)
    for item in paths_or_datasets:
        ds = pydicom.dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item
        # pynetdicom sends a file under its File Meta SOP class: propose that one.
        sop_class = (
            ds.file_meta.MediaStorageSOPClassUID if isinstance(item, Path) else ds.SOPClassUID
        )
        ae.add_requested_context(sop_class, [ds.file_meta.TransferSyntaxUID])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        # A requestor's limit is associate()'s argument, not the AE's maximum_pdu_size.
        limit = {} if max_pdu is None else {"max_pdu": max_pdu}
        assoc = ae.associate("127.0.0.1", port, ae_title=aec, tls_args=tls_args, **limit)
        assert assoc.is_established, "association with the node failed"
        statuses = []
        for item in paths_or_datasets:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else -1)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses
