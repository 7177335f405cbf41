"""Typed settings for the node: ``config/node.toml`` plus environment overrides.

A node that starts with a wrong port or a route to a model that does not exist would accept
studies and then silently do nothing with them, so every value is validated at start-up and a
bad one stops the node with a message that names the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
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
    # ARTIM: how long a connection may take to deliver its whole A-ASSOCIATE-RQ.
    acse_timeout: float = Field(30, gt=0)
    # Association slots (each is two threads and up to max_pdu_size of buffer): in all,
    # and per peer address, so one host cannot take them all.
    max_associations: int = Field(32, ge=1, le=1000)
    max_associations_per_host: int = Field(8, ge=1, le=1000)
    # A deflated dataset inflating past this is refused with 0xC210 (a decompression bomb).
    max_inflated_size: int = Field(256 * 1024 * 1024, ge=1024)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)

    @model_validator(mode="after")
    def _limits(self) -> ScpSettings:
        if self.max_associations_per_host > self.max_associations:
            raise ValueError(
                f"max_associations_per_host ({self.max_associations_per_host}) is more than "
                f"max_associations ({self.max_associations})"
            )
        return self


class StorageSettings(_Strict):
    spool_dir: Path | None = None
    database_url: str = ""

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _empty_path(cls, value: Any) -> Any:
        return None if value == "" else value


class CompletionSettings(_Strict):
    quiet_seconds: float = Field(30, ge=0)
    late_instances: Literal["rerun", "ignore"] = "rerun"
    scan_interval: float = Field(1.0, gt=0)


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
    # Failed logins allowed per client address and per username within the window (then 429).
    login_rate_limit: int = Field(5, ge=1)
    login_rate_window: float = Field(300, gt=0)
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
        return self.data_dir / "results"

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
