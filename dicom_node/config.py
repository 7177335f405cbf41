"""Typed settings for the node: ``config/node.toml`` plus environment overrides.

A node that starts with a wrong port or a route to a model that does not exist would accept
studies and then silently do nothing with them, so every value is validated at start-up and a
bad one stops the node with a message that names the file, the key and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "DICOM_NODE__"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PACKAGE_ROOT / "config" / "node.toml"

# PS3.5 6.2: AE titles are at most 16 characters of the default repertoire, no backslash or
# control characters; leading/trailing spaces are not significant.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(ValueError):
    """A configuration problem, with the source file and the key in the message."""


class OperatorError(RuntimeError):
    """A command cannot do what it was asked, and the operator can fix why: a file that is
    not DICOM, a folder that does not exist, a peer that refuses us, a model without weights.

    ``cli.main`` prints the message as one line, ``dicom-node COMMAND: ...``, without a
    traceback, and exits with ``exit_status``. The message says what is wrong, where, and
    what to change.
    """

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class StartupError(RuntimeError):
    """The node cannot start here and now: its data folder is in use, or a port is taken.

    Not a bug but the operator's to fix (stop the other node, pick another port), so the
    message is one line that names the folder or the setting, and ``serve`` prints it
    without a traceback and exits with status 2, like a :class:`ConfigError`.
    """


def env_var(key: str) -> str:
    """The environment variable that overrides a setting: ``scp.port`` ->
    ``DICOM_NODE__SCP__PORT`` (the reverse of :func:`_env_overrides`)."""
    return ENV_PREFIX + "__".join(part.upper() for part in key.split("."))


def cannot_listen(section: str, host: str, port: int, exc: OSError) -> StartupError:
    """Say in one line why ``[section] host:port`` cannot be bound, and which setting (file
    key or environment variable) changes it.

    Parameters
    ----------
    section
        The settings section that owns ``host`` and ``port``: ``scp`` or ``web``.
    host, port
        The address that failed.
    exc
        The error from ``bind``/``listen`` or from resolving the host name.
    """
    port_key, host_key = f"{section}.port", f"{section}.host"

    def change(key: str) -> str:
        return f"choose another with {key} in the configuration file or {env_var(key)}"

    if isinstance(exc, socket.gaierror):
        return StartupError(f"{host_key} {host!r} cannot be resolved; {change(host_key)}")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{port_key} {port} on {host} is already in use; {change(port_key)}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{host_key} {host} is not an address of this machine; {change(host_key)}"
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"{port_key} {port} on {host}: permission denied (ports below 1024 need "
            f"privileges); {change(port_key)}"
        )
    return StartupError(
        f"cannot listen on {host}:{port} ({host_key}, {port_key}): {exc.strerror or exc}"
    )


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("AE title must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"AE title {stripped!r} is {len(stripped)} characters; at most 16")
    if not _AE_RE.match(stripped):
        raise ValueError(f"AE title {stripped!r} contains a backslash or control character")
    return stripped


def check_ae_title(value: str) -> str:
    """An AE title as PS3.5 6.2 allows it, without its padding; ``ValueError`` otherwise.

    For the command line's ``--aet``/``--aec`` and ``AE@HOST:PORT``, so a wrong title is
    one line from the argument parser instead of an error from pynetdicom.
    """
    return _check_ae(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Strict):
    ae_title: str = "DICOM_NODE"
    data_dir: Path = Path("data")

    _ae = field_validator("ae_title")(_check_ae)


def _empty_path(value: Any) -> Any:
    """An empty string in TOML or the environment means "not set" for an optional path."""
    return None if value == "" else value


class ScpTlsSettings(_Strict):
    """``[scp.tls]``: a listener for DICOM over TLS (PS3.15 B.9), beside the plain one or
    instead of it (``only``).

    The files are read when the listener starts, where a missing or unusable one stops the
    node with one line naming the setting and the file (``receive.scp``).
    """

    enabled: bool = False
    # Empty: scp.host. 2762 is the port registered for DICOM over TLS.
    host: str = ""
    port: int = Field(2762, ge=1, le=65535)
    certificate: Path | None = None
    private_key: Path | None = None
    # The CAs whose client certificates are trusted (PEM bundle).
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    # No plain listener: every association must come over TLS.
    only: bool = False
    # A connection that has not finished its TLS handshake by then is closed and logged.
    handshake_timeout: float = Field(10, gt=0, le=300)

    _paths = field_validator("certificate", "private_key", "ca_certificates", mode="before")(
        _empty_path
    )

    @model_validator(mode="after")
    def _complete(self) -> ScpTlsSettings:
        if not self.enabled:
            if self.only:
                raise ValueError("only = true needs enabled = true (else nothing would listen)")
            return self
        missing = [key for key in ("certificate", "private_key") if getattr(self, key) is None]
        if missing:
            raise ValueError(f"enabled = true needs {' and '.join(missing)} (PEM files)")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError(
                "require_client_certificate = true needs ca_certificates (the CA bundle that "
                "signs the senders' certificates); or set it to false to accept senders "
                "without a certificate"
            )
        return self


class ScpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_called_ae: bool = True
    max_pdu_size: int = Field(4 * 1024 * 1024, ge=0)
    network_timeout: float = Field(60, gt=0)
    # ARTIM: how long a connection may take to deliver its whole A-ASSOCIATE-RQ.
    acse_timeout: float = Field(30, gt=0)
    # Association slots (each is two threads and up to max_pdu_size of buffer): in all,
    # and per peer address, so one host cannot take them all.
    max_associations: int = Field(32, ge=1, le=1000)
    max_associations_per_host: int = Field(8, ge=1, le=1000)
    # A deflated dataset inflating past this is refused with 0xC210 (a decompression bomb).
    max_inflated_size: int = Field(256 * 1024 * 1024, ge=1024)
    tls: ScpTlsSettings = ScpTlsSettings()

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)

    @property
    def tls_host(self) -> str:
        return self.tls.host or self.host

    @model_validator(mode="after")
    def _ports_differ(self) -> ScpSettings:
        tls = self.tls
        if tls.enabled and not tls.only and self.tls_host == self.host and tls.port == self.port:
            raise ValueError(
                f"tls.port {tls.port} is also the plain port (scp.port): the TLS listener "
                "needs its own port (2762 is registered for DICOM over TLS), or tls.only = true"
            )
        return self

    @model_validator(mode="after")
    def _limits(self) -> ScpSettings:
        if self.max_associations_per_host > self.max_associations:
            raise ValueError(
                f"max_associations_per_host ({self.max_associations_per_host}) is more than "
                f"max_associations ({self.max_associations})"
            )
        return self


class S3Settings(_Strict):
    """An S3-compatible bucket for the spool and the result objects (``backend = "s3"``)."""

    # Empty: the AWS endpoint of ``region``; a SeaweedFS, MinIO or Ceph gateway otherwise.
    endpoint_url: str = ""
    bucket: str = Field("dicom-node", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = "us-east-1"
    # Empty: boto3's own chain (environment, ~/.aws, instance role).
    access_key_id: str = ""
    secret_access_key: str = ""
    # Keys start with this (several nodes may share a bucket): "<prefix>spool/...".
    prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    # Create the bucket at start-up when it does not exist.
    create_bucket: bool = True
    timeout: float = Field(30, gt=0)


class StorageSettings(_Strict):
    spool_dir: Path | None = None
    # Result objects (SR, SC, PDF, heatmaps); default <data_dir>/results. In a cluster on
    # local storage this is a shared POSIX path (NFS, CephFS) that every role mounts.
    results_dir: Path | None = None
    database_url: str = ""
    # "local": spool and results in folders (the default; shared paths for a cluster);
    # "s3": received instances and result objects in an S3 bucket ([storage.s3]).
    backend: Literal["local", "s3"] = "local"
    s3: S3Settings = S3Settings()

    _paths = field_validator("spool_dir", "results_dir", mode="before")(_empty_path)


class CompletionSettings(_Strict):
    quiet_seconds: float = Field(30, ge=0)
    late_instances: Literal["rerun", "ignore"] = "rerun"
    scan_interval: float = Field(1.0, gt=0)
    # Calling AE titles that send whole series per association (a PACS forwarding a
    # study): their series are complete when the association is released cleanly, plus
    # release_grace_seconds, instead of after the quiet period.
    release_aes: tuple[str, ...] = ()
    release_grace_seconds: float = Field(1.0, ge=0, le=3600)

    @field_validator("release_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)


class WorkerSettings(_Strict):
    processes: int = Field(1, ge=0, le=16)
    inference_threads: int = Field(1, ge=1, le=64)
    poll_interval: float = Field(0.5, gt=0)
    # Hostile-input bounds of pixel decoding (inference.pixels.PixelLimits), checked on the
    # DICOM header and on each compressed frame's own header before anything is decoded.
    max_frame_pixels: int = Field(40_000_000, ge=1)
    max_frames: int = Field(5000, ge=1)


class ModelSettings(_Strict):
    dir: Path = Path("models")


class DestinationTls(_Strict):
    """``tls`` of a destination: associate over TLS (PS3.15 B.9), verifying the peer's
    certificate and host name, with our client certificate when the peer requires one."""

    # Empty: the system's trusted CAs. A self-signed PACS certificate is its own CA.
    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    # The name the peer's certificate must carry; empty: the destination's host.
    server_name: str = ""

    _paths = field_validator("certificate", "private_key", "ca_certificates", mode="before")(
        _empty_path
    )

    @model_validator(mode="after")
    def _pair(self) -> DestinationTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (both or neither)")
        return self


class ClusterSettings(_Strict):
    """Cluster mode: roles on several hosts, jobs carried by Celery on RabbitMQ.

    ``embedded`` (the default) is one ``serve`` with its worker processes and the database
    as the job queue. ``cluster`` writes every state to PostgreSQL as before, and publishes
    one Celery task per job, after the commit, on the queue of the job's model(s).
    """

    mode: Literal["embedded", "cluster"] = "embedded"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    # Queues and the exchange are named "<queue_prefix>.model.<id>", so several clusters
    # (a test and a production one) can share a broker.
    queue_prefix: str = Field("dicom-node", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Every role process writes a heartbeat row this often; a member not seen for
    # member_timeout seconds is gone, and the jobs it was running go back to their queue.
    heartbeat_seconds: float = Field(2.0, gt=0, le=60)
    member_timeout: float = Field(10.0, gt=0, le=3600)
    # How often the sweep (in receive and dispatch roles) requeues the jobs of members that
    # are gone and republishes queued jobs whose messages no broker holds.
    sweep_interval: float = Field(10.0, gt=0, le=3600)
    # A queued job younger than this is never republished (its message may be in flight).
    republish_after: float = Field(30.0, ge=0)
    # The role's own /healthz and /metrics (0: none). "serve" and "web" also have the
    # admin page's.
    health_host: str = "127.0.0.1"
    health_port: int = Field(0, ge=0, le=65535)

    @model_validator(mode="after")
    def _timeout_after_heartbeat(self) -> ClusterSettings:
        if self.member_timeout <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"member_timeout ({self.member_timeout}) must be more than twice "
                f"heartbeat_seconds ({self.heartbeat_seconds})"
            )
        return self


class Destination(_Strict):
    """Where results (or forwarded series) go: a DICOM AE over C-STORE (``kind = "dimse"``,
    the default) or a DICOMweb origin server over STOW-RS (``kind = "dicomweb"``). Both
    kinds share the delivery rows, retries, backoff and lanes (``dispatch.delivery``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["dimse", "dicomweb"] = "dimse"
    # kind = "dimse"
    ae_title: str = ""
    host: str = ""
    port: int = Field(0, ge=0, le=65535)
    # kind = "dicomweb": the service root, e.g. https://pacs.example.org/dicom-web (results
    # are POSTed to <url>/studies) and how we authenticate. An https server's certificate
    # is checked against the system's CAs, or tls.ca_certificates (tls.certificate and
    # private_key: our client certificate); verify = false turns the check off (tests).
    url: str = ""
    auth: Literal["none", "bearer", "basic"] = "none"
    token: SecretStr = SecretStr("")
    username: str = ""
    password: SecretStr = SecretStr("")
    verify: bool = True
    max_attempts: int = Field(8, ge=1, le=1000)
    backoff_seconds: float = Field(5, ge=0)
    backoff_max: float = Field(600, ge=0)
    sr_class: Literal["comprehensive3d", "comprehensive", "enhanced"] = "comprehensive3d"
    timeout: float = Field(30, gt=0)
    # Associations (or STOW-RS requests) to this destination at once; each destination
    # has its own, so a dead one never delays the others.
    concurrency: int = Field(1, ge=1, le=16)
    # Absent: plain DICOM. A table (even empty: the system's CAs): DICOM over TLS.
    tls: DestinationTls | None = None
    # A disabled destination is held: its deliveries wait (pending) until it is enabled.
    enabled: bool = True

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value) if value.strip() else ""

    @model_validator(mode="after")
    def _kind_fields(self) -> Destination:
        if self.kind == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if not getattr(self, k)]
            if missing:
                raise ValueError(f"a dimse destination needs {', '.join(missing)}")
            if self.url:
                raise ValueError('url is for kind = "dicomweb"; this destination is dimse')
            return self
        if self.ae_title or self.host or self.port:
            raise ValueError(
                'ae_title, host and port are for kind = "dimse"; a dicomweb destination has url'
            )
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.url):
            raise ValueError(
                f"a dicomweb destination needs url = http(s)://host[:port]/path (got {self.url!r})"
            )
        if self.auth == "bearer" and not self.token.get_secret_value():
            raise ValueError('auth = "bearer" needs token')
        if self.auth == "basic" and not (self.username and self.password.get_secret_value()):
            raise ValueError('auth = "basic" needs username and password')
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls is for an https:// url")
        if self.tls is not None and self.tls.server_name:
            raise ValueError("tls.server_name is for dimse destinations (https checks the url)")
        return self

    @property
    def where(self) -> str:
        """The peer, for messages: ``AE@host:port`` or the URL."""
        return self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"


class Route(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    enabled: bool = True
    match: dict[str, str] = Field(default_factory=dict)
    exclude: dict[str, str] = Field(default_factory=dict)
    models: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    forward: bool = False
    pdf: bool = False
    key_slices: int = Field(1, ge=1, le=50)
    continue_: bool = Field(False, alias="continue")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("match", "exclude")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for key, pattern in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
                raise ValueError(f"{key!r} is not a DICOM keyword")
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"{key}: invalid regular expression {pattern!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _does_something(self) -> Route:
        if not self.models and not self.forward:
            raise ValueError("a route needs at least one model or forward = true")
        if self.forward and not self.destinations:
            raise ValueError("forward = true needs at least one destination")
        return self


class WebSettings(_Strict):
    """The admin page (``dicom_node.web``): where it listens and how sessions behave."""

    enabled: bool = True
    # Loopback by default: the page shows patient data, so exposing it is a deliberate choice.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # Signs the session cookie. Empty: generated once and kept in the node_setting table.
    secret_key: str = ""
    session_max_age: int = Field(8 * 3600, ge=60)
    # Failed logins allowed per (client address, username) pair within the window; then that
    # pair gets 429 until the window slides on or `dicom-node users unlock NAME`. Per pair, not
    # per user, so nobody can lock a user out from another address by failing on purpose.
    login_rate_limit: int = Field(5, ge=1)
    # Failed logins allowed per client address, whatever the username (password spraying).
    login_address_limit: int = Field(50, ge=1)
    login_rate_window: float = Field(300, gt=0)
    # Pairs and addresses the login throttle remembers (the least recently failing is
    # forgotten first), so a flood of made-up names cannot grow memory without bound.
    login_throttle_entries: int = Field(10_000, ge=100, le=1_000_000)
    # /healthz runs its checks (database query, spool write with fsync, node status) at most
    # once per this many seconds; calls in between get the cached answer.
    health_cache_seconds: float = Field(5.0, gt=0, le=300)
    # Set when the page is served over TLS (directly or by a proxy): cookie gets "Secure".
    https_only: bool = False
    # Addresses of reverse proxies whose X-Forwarded-For is believed; empty = none.
    forwarded_allow_ips: tuple[str, ...] = ()
    page_size: int = Field(50, ge=5, le=500)


class DicomwebSettings(_Strict):
    """The DICOMweb door on the admin app's address: STOW-RS at ``/dicomweb/studies``."""

    enabled: bool = True
    # A request whose body is larger is refused whole with 413: declared (Content-Length)
    # before anything is read, or counted while it streams (chunked), nothing stored.
    max_request_size: int = Field(2 * 1024**3, ge=1024)
    # Parts (instances) in one request; each is a temporary file until the request ends.
    max_instances: int = Field(10_000, ge=1, le=1_000_000)
    # A body must keep moving: each MiB of it (and its end) within this many seconds of
    # the previous one, else 408 and nothing stored (a trickling client holds nothing).
    body_timeout: float = Field(30.0, gt=0, le=3600)
    # The calling AE title of instances stored over STOW-RS: routes (CallingAETitle) and
    # completion.release_aes match it like a DIMSE sender's; the user is in the events.
    calling_ae: str = "STOW"

    _ae = field_validator("calling_ae")(_check_ae)


class UploadSettings(_Strict):
    """The upload door on the admin app's address: the upload page and ``POST /api/predict``
    (``dicom_node.web.upload``), for users with the role ``uploader`` or ``admin``."""

    enabled: bool = True
    # One uploaded file (a DICOM file or a picture) larger than this refuses the request
    # whole (413), nothing stored; counted while it streams.
    max_file_size: int = Field(512 * 1024**2, ge=1024)
    # The whole request body: declared (Content-Length) before anything is read, or
    # counted while it streams.
    max_request_size: int = Field(2 * 1024**3, ge=1024)
    # Files in one upload; more is refused whole (413).
    max_files: int = Field(1000, ge=1, le=100_000)
    # A body must keep moving: each MiB of it (and its end) within this many seconds of
    # the previous one, else 408 and nothing stored.
    body_timeout: float = Field(30.0, gt=0, le=3600)
    # Pictures and DICOM images with fewer rows or columns are refused (422), as are any
    # smaller than the input of a model their route runs: a model would only enlarge them.
    min_image_size: int = Field(64, ge=1, le=4096)
    # Seconds POST /api/predict waits for the result before it answers 202 with a link
    # to poll; 0 answers at once.
    predict_timeout: float = Field(60, ge=0, le=3600)
    # The calling AE title recorded for uploaded instances: routes (CallingAETitle) can
    # match it like a DIMSE sender's AE title; the user is in the events.
    calling_ae: str = "UPLOAD"

    _ae = field_validator("calling_ae")(_check_ae)

    @model_validator(mode="after")
    def _file_fits_request(self) -> UploadSettings:
        if self.max_file_size > self.max_request_size:
            raise ValueError("max_file_size must not be larger than max_request_size")
        return self


@dataclass(frozen=True)
class ConfigOrigin:
    """Where settings were read from, for the admin page's editor.

    ``overridden`` names the top-level keys (``routes``, ``scp``...) that the environment
    or the caller replaced, whose values in the file are therefore not the ones in force.
    """

    path: Path
    embedded: bool
    overridden: frozenset[str] = frozenset()


class Settings(_Strict):
    node: NodeSettings = NodeSettings()
    scp: ScpSettings = ScpSettings()
    storage: StorageSettings = StorageSettings()
    completion: CompletionSettings = CompletionSettings()
    workers: WorkerSettings = WorkerSettings()
    models: ModelSettings = ModelSettings()
    destinations: tuple[Destination, ...] = ()
    routes: tuple[Route, ...] = ()
    web: WebSettings = WebSettings()
    dicomweb: DicomwebSettings = DicomwebSettings()
    upload: UploadSettings = UploadSettings()
    cluster: ClusterSettings = ClusterSettings()
    # Where the settings came from, for messages; not a configuration key.
    source: str = Field("<defaults>", exclude=True)
    # The file and what overrode it (``load_settings``); not a key either, hence private.
    _origin: ConfigOrigin | None = PrivateAttr(None)

    @property
    def origin(self) -> ConfigOrigin | None:
        """The configuration file these settings were read from (None: built in code)."""
        return self._origin

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destinations: duplicate name(s) {sorted(dupes)}")
        route_names = [r.name for r in self.routes]
        dupes = {n for n in route_names if route_names.count(n) > 1}
        if dupes:
            raise ValueError(f"routes: duplicate name(s) {sorted(dupes)}")
        if self.cluster.mode == "cluster" and not self.database_url.startswith("postgresql"):
            raise ValueError(
                "cluster.mode = 'cluster' needs storage.database_url = 'postgresql://...' "
                "(every role on every host shares that database)"
            )
        known_models = available_model_ids(self.models_dir)
        for i, route in enumerate(self.routes):
            for dest in route.destinations:
                if dest not in names:
                    raise ValueError(
                        f"routes[{i}] ({route.name}).destinations: unknown destination "
                        f"{dest!r}; configured: {names or 'none'}"
                    )
            for model in route.models:
                if model not in known_models:
                    raise ValueError(
                        f"routes[{i}] ({route.name}).models: unknown model {model!r}; "
                        f"found in {self.models_dir}: {sorted(known_models) or 'none'}"
                    )
        return self

    # -- derived paths -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.node.data_dir.resolve()

    @property
    def spool_dir(self) -> Path:
        return (self.storage.spool_dir or self.node.data_dir / "spool").resolve()

    @property
    def results_dir(self) -> Path:
        return (self.storage.results_dir or self.node.data_dir / "results").resolve()

    @property
    def clustered(self) -> bool:
        """True in cluster mode (Celery on RabbitMQ carries the jobs)."""
        return self.cluster.mode == "cluster"

    @property
    def models_dir(self) -> Path:
        return self.models.dir.resolve()

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{self.data_dir / 'dicom-node.db'}"

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)

    def route(self, name: str) -> Route:
        for route in self.routes:
            if route.name == name:
                return route
        raise KeyError(name)


def available_model_ids(models_dir: Path) -> set[str]:
    """Model ids are the names of ``models/<id>/`` folders that hold a ``model.toml``.

    Only the presence is checked here; the manifest itself is validated by
    ``inference.registry`` when the workers load models.
    """
    if not models_dir.is_dir():
        return set()
    return {p.parent.name for p in models_dir.glob("*/model.toml")}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``DICOM_NODE__SCP__PORT=11113`` into ``{"scp": {"port": "11113"}}``.

    Values are parsed as TOML when they parse (numbers, booleans, arrays), else kept as
    strings, so ``DICOM_NODE__SCP__ALLOWED_CALLING_AES='["PACS"]'`` works too.
    """
    result: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if len(parts) < 2:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_error(source: str, exc: ValidationError, env: Mapping[str, Any]) -> str:
    """One line per invalid value: the key, the problem, the value, and how to change it.

    A single mistake (the usual case) makes a one-line message, so the command line prints
    it as one line; a value that came from the environment names its variable, since the
    file does not show it.
    """
    items = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        loc = ".".join(parts)
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = err["msg"].removeprefix("Value error, ")
        item = f"{loc or '<top level>'}: {msg}{shown}"
        if len(parts) == 2 and all(p.isidentifier() for p in parts):
            node: Any = env
            for part in parts:
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                item += f"; it comes from {env_var(loc)} in the environment"
            else:
                item += f"; change {loc} in the file or set {env_var(loc)}"
        items.append(item)
    if len(items) == 1:
        return f"invalid configuration in {source}: {items[0]}"
    return "\n".join([f"invalid configuration in {source}:", *(f"  {i}" for i in items)])


def load_settings(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read a TOML file (default: the embedded ``config/node.toml``), apply environment and
    explicit overrides, and validate.

    Raises
    ------
    ConfigError
        The file is unreadable or not TOML, or a value is invalid; the message names the file
        and the key.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {cfg_path}: {exc.strerror}") from exc
    return settings_from_text(text, cfg_path, environ=environ, overrides=overrides)


def settings_from_text(
    text: str,
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Validate the text of the configuration file at ``path`` as :func:`load_settings`
    would read it: the admin page's editor checks a changed file with this before it
    writes it, so an edit is held to exactly the rules of the file.

    Raises
    ------
    ConfigError
        The text is not TOML, or a value is invalid; the message names the file and key.
    """
    source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    embedded = path.resolve() == DEFAULT_CONFIG.resolve()
    models = data.get("models")
    if embedded and isinstance(models, dict):
        # The embedded configuration's model folder is the one shipped with the code, from
        # whatever directory the node is started; relative paths from a user's own file or
        # the environment stay relative to the working directory.
        folder = Path(str(models.get("dir", "models")))
        models["dir"] = str(folder if folder.is_absolute() else PACKAGE_ROOT / folder)
    env = _env_overrides(os.environ if environ is None else environ)
    if env:
        source += " + environment"
    data = _merge(data, env)
    if overrides:
        data = _merge(data, overrides)
    try:
        settings = Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc, env)) from None
    settings._origin = ConfigOrigin(
        path=path.resolve(), embedded=embedded, overridden=frozenset(env) | set(overrides or ())
    )
    return settings


class LiveSettings:
    """The node's settings in force, replaced as a whole when an admin edits routes or
    destinations on the admin page, so an edit takes effect without a restart.

    Components that route, run jobs or deliver read ``current`` once per unit of work (a
    scan, a job, a batch) and use that one snapshot throughout: a ``Settings`` is frozen,
    so a reader sees either the old or the new configuration, never half of each.
    ``replace`` tells the subscribers first (the node forwards the settings to its worker
    processes), then swaps the reference, under a lock that orders concurrent edits.
    """

    def __init__(self, settings: Settings, *, version: int = 0) -> None:
        self._current = settings
        self._version = version
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Settings, int], None]] = []

    @classmethod
    def of(cls, settings: Settings | LiveSettings) -> LiveSettings:
        """``settings`` itself when live already, else a holder of it (tests, tools)."""
        return settings if isinstance(settings, LiveSettings) else cls(settings)

    @property
    def current(self) -> Settings:
        return self._current

    @property
    def version(self) -> int:
        """How often the settings were replaced since start."""
        return self._version

    @contextlib.contextmanager
    def held(self) -> Iterator[tuple[Settings, int]]:
        """The settings in force and their version, with no ``replace`` until the block
        ends: a worker process spawned in the block gets these settings and is
        subscribed before the next edit (between a replacement's subscribers and its swap,
        ``current`` is still the old one, which the new worker would never hear about)."""
        with self._lock:
            yield self._current, self._version

    def subscribe(self, callback: Callable[[Settings, int], None]) -> None:
        """Call ``callback(settings, version)`` on every later ``replace``, before the swap."""
        with self._lock:
            self._subscribers.append(callback)

    def replace(self, settings: Settings, *, version: int | None = None) -> int:
        """Put ``settings`` in force; returns the new version.

        ``version`` is given by a worker process that receives the node's replacements
        (``process.worker``), so both count alike.
        """
        with self._lock:
            new_version = self._version + 1 if version is None else version
            for callback in self._subscribers:
                callback(settings, new_version)
            self._current = settings
            self._version = new_version
            return new_version
