"""Typed settings for the node: ``config/node.toml`` plus environment overrides.

A node that starts with a wrong port or a route to a model that does not exist would accept
studies and then silently do nothing with them, so every value is validated at start-up and a
bad one stops the node with a message that names the file, the key and the problem.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Strict):
    ae_title: str = "DICOM_NODE"
    data_dir: Path = Path("data")

    _ae = field_validator("ae_title")(_check_ae)


class ScpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_called_ae: bool = True
    max_pdu_size: int = Field(4 * 1024 * 1024, ge=0)
    network_timeout: float = Field(60, gt=0)
    # A deflated dataset inflating past this is refused with 0xC210 (a decompression bomb).
    max_inflated_size: int = Field(256 * 1024 * 1024, ge=1024)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)


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

    @field_validator("spool_dir", "results_dir", mode="before")
    @classmethod
    def _empty_path(cls, value: Any) -> Any:
        return None if value == "" else value


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
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    max_attempts: int = Field(8, ge=1, le=1000)
    backoff_seconds: float = Field(5, ge=0)
    backoff_max: float = Field(600, ge=0)
    sr_class: Literal["comprehensive3d", "comprehensive", "enhanced"] = "comprehensive3d"
    timeout: float = Field(30, gt=0)
    # Associations to this destination at once; each destination has its own, so a dead
    # one never delays the others.
    concurrency: int = Field(1, ge=1, le=16)

    _ae = field_validator("ae_title")(_check_ae)


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
    cluster: ClusterSettings = ClusterSettings()
    # Where the settings came from, for messages; not a configuration key.
    source: str = Field("<defaults>", exclude=True)

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


def _format_error(source: str, exc: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc or '<top level>'}: {msg}{shown}")
    return "\n".join(lines)


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
    source = str(cfg_path)
    try:
        data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {source}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    models = data.get("models")
    if cfg_path.resolve() == DEFAULT_CONFIG.resolve() and isinstance(models, dict):
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
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None
