"""Edit the routes and destinations of the node's configuration file from the admin page.

An edit is made to the TOML document with ``tomlkit``, which keeps every comment, blank
line and key order of the file the hospital wrote (a plain TOML writer would drop the
comments that explain why a route excludes localizers). The changed text is then
validated by ``config.settings_from_text``, the very code that reads the file at start-up,
with the same environment: an edit the page accepts is one the node would start with, and
a refused edit gets the start-up message (file, key, problem). Only then is the file
replaced (temporary file, fsync, rename, fsync of the folder: a crash leaves the old or
the new file, never half of one) and the new routes and destinations put in force
(``LiveSettings.replace``): no restart.

Edits are serialised (one lock per app) and carry the version (SHA-256) of the file they
were made on: an edit made on a page opened before someone else's change, or before a
change by hand in the file, is refused instead of silently undoing it.

A route or destination is identified by its name, which the page does not change: jobs
and deliveries refer to it. To rename, add one under the new name and disable the old.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomlkit
from tomlkit.items import AoT, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

from dicom_node.config import (
    ConfigError,
    Destination,
    LiveSettings,
    Route,
    Settings,
    settings_from_text,
)

Section = Literal["routes", "destinations"]
SECTIONS: tuple[Section, ...] = ("routes", "destinations")
# Keys of a new table, in the order a person would write them.
ROUTE_KEYS = (
    "name",
    "enabled",
    "match",
    "exclude",
    "models",
    "destinations",
    "forward",
    "pdf",
    "key_slices",
    "continue",
)
DESTINATION_KEYS = (
    "name",
    "enabled",
    "ae_title",
    "host",
    "port",
    "max_attempts",
    "backoff_seconds",
    "backoff_max",
    "sr_class",
    "timeout",
    "concurrency",
)
# Largest diff kept in an audit entry (an edit of one route is a few lines).
MAX_AUDIT_DIFF = 20_000


class EditError(ValueError):
    """An edit that cannot be made; the message is for the operator, as it is."""


def _defaults(model: type[Route] | type[Destination]) -> dict[str, Any]:
    """Default value of each optional key, under its name in the file (``continue``)."""
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        key = field.alias or name
        value = field.get_default(call_default_factory=True)
        defaults[key] = list(value) if isinstance(value, tuple) else value
    return defaults


ROUTE_DEFAULTS = _defaults(Route)
DESTINATION_DEFAULTS = _defaults(Destination)


def read_only_reason(settings: Settings) -> str | None:
    """Why routes and destinations cannot be edited on the page, or None when they can."""
    origin = settings.origin
    if origin is None:
        return "These settings were not read from a configuration file."
    if origin.embedded:
        return (
            "This node runs on the embedded default configuration, which is read-only (it "
            f"ships inside the package: {origin.path}). To edit routes and destinations "
            "here, copy it to a file of your own and start the node with it: "
            f"cp {origin.path} /etc/dicom-node.toml, then "
            "dicom-node --config /etc/dicom-node.toml serve."
        )
    taken = sorted(set(SECTIONS) & origin.overridden)
    if taken:
        return (
            f"{' and '.join(taken)} are set outside {origin.path} (by the environment or by "
            "the program that started the node), so the file's values are not the ones in "
            "force; change them where they are set."
        )
    if not os.access(origin.path.parent, os.W_OK):
        return f"The folder of {origin.path} is not writable by the node."
    return None


@dataclass(frozen=True)
class ConfigFile:
    """The configuration file's text as read, and its version (SHA-256 of the text)."""

    path: Path
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @classmethod
    def read(cls, path: Path) -> ConfigFile:
        try:
            return cls(path, path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise EditError(f"cannot read {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class EditOutcome:
    """An edit put in force: the unified diff of the file, and the settings now in force."""

    diff: str
    settings: Settings


# -- form values -------------------------------------------------------------------------------


def number(text: str) -> Any:
    """A form's number as TOML wants it (int, else float); text that is no number stays
    text, so the validation names the key and the value exactly as for the file."""
    stripped = text.strip()
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            continue
    return stripped


def patterns(text: str, what: str) -> dict[str, str]:
    """``Keyword = pattern`` lines (one per line; blank lines ignored) as a dict.

    Raises
    ------
    EditError
        A line without ``=``, or a keyword given twice.
    """
    result: dict[str, str] = {}
    for number_, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        keyword, sep, pattern = line.partition("=")
        if not sep:
            raise EditError(f"{what} line {number_}: write Keyword = pattern, got {line!r}")
        keyword = keyword.strip()
        if keyword in result:
            raise EditError(f"{what} line {number_}: {keyword} is given twice")
        result[keyword] = pattern.strip()
    return result


def pattern_lines(values: Mapping[str, str]) -> str:
    return "\n".join(f"{key} = {value}" for key, value in values.items())


# -- the TOML document -------------------------------------------------------------------------


def _tables(doc: TOMLDocument, section: Section, *, create: bool = False) -> AoT:
    if section not in doc:
        if not create:
            return tomlkit.aot()
        doc.append(section, tomlkit.aot())
    tables = doc[section]
    if not isinstance(tables, AoT):
        raise EditError(
            f"{section} in this file are not written as [[{section}]] tables; the page "
            "edits only that form"
        )
    return tables


def _find(tables: AoT, name: str) -> int:
    for index, table in enumerate(tables):
        if table.get("name") == name:
            return index
    raise EditError(f"no {name!r} in the file")


def _toml_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        inline.update(dict(value))
        return inline
    return value


def _unwrapped(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _set_key(table: Table, key: str, value: Any) -> None:
    """Set ``key``: in place when present (its comment stays), else after the table's
    last key, before any comment that trails the table (it introduces the next one)."""
    if key in table:
        table[key] = _toml_value(value)
        return
    keys = [k for k, _ in table.value.body if k is not None]
    if keys:
        # tomlkit has no public "insert after": Table.add would append after trailing
        # comments, which in node.toml describe the following [[routes]] table.
        table.value._insert_after(keys[-1], key, _toml_value(value))
    else:
        table.add(key, _toml_value(value))


def _update_table(
    table: Table, values: Mapping[str, Any], defaults: Mapping[str, Any], order: Iterable[str]
) -> None:
    """Write the changed values only: untouched keys keep their formatting and comments,
    and a key absent from the file stays absent while it holds its default."""
    for key in order:
        if key not in values:
            continue
        value = values[key]
        if key in table:
            if _unwrapped(table[key]) != value:
                _set_key(table, key, value)
        elif key not in defaults or defaults[key] != value:
            _set_key(table, key, value)


def _new_table(
    values: Mapping[str, Any], defaults: Mapping[str, Any], order: Iterable[str]
) -> Table:
    table = tomlkit.table()
    table.trivia.indent = "\n"  # a blank line before its [[header]], as in node.toml
    for key in order:
        if key in values and (key not in defaults or defaults[key] != values[key]):
            table.add(key, _toml_value(values[key]))
    return table


def put_entry(doc: TOMLDocument, section: Section, values: Mapping[str, Any], *, new: bool) -> None:
    """Add a route or destination (at the end: routes are evaluated in file order) or
    update the one named ``values["name"]``."""
    order, defaults = (
        (ROUTE_KEYS, ROUTE_DEFAULTS)
        if section == "routes"
        else (DESTINATION_KEYS, DESTINATION_DEFAULTS)
    )
    tables = _tables(doc, section, create=new)
    name = str(values.get("name", ""))
    if new:
        if any(t.get("name") == name for t in tables):
            raise EditError(f"{section}: {name!r} exists already; choose another name")
        table = _new_table(values, defaults, order)
        if len(tables):
            # The blank line that ends the last table separates it from what follows
            # ([web]...): it moves to the end of the new one.
            body = tables[-1].value.body
            if body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
                blank = body.pop()[1]
                assert isinstance(blank, Whitespace)
                table.add(blank)
        tables.append(table)
        return
    _update_table(tables[_find(tables, name)], values, defaults, order)


def move_route(doc: TOMLDocument, name: str, offset: int) -> None:
    """Move a route ``offset`` places (-1: evaluated earlier), keeping its comments."""
    tables = _tables(doc, "routes")
    index = _find(tables, name)
    target = index + offset
    if not 0 <= target < len(tables):
        raise EditError(f"route {name!r} is {'first' if offset < 0 else 'last'} already")
    items = list(tables)
    items.insert(target, items.pop(index))
    for i, table in enumerate(items):
        tables[i] = table


def set_enabled(doc: TOMLDocument, section: Section, name: str, enabled: bool) -> None:
    tables = _tables(doc, section)
    _set_key(tables[_find(tables, name)], "enabled", enabled)


def delete_entry(doc: TOMLDocument, section: Section, name: str) -> None:
    tables = _tables(doc, section)
    del tables[_find(tables, name)]


# -- apply -------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Replace the file so a crash leaves the old or the new text, with the old mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class ConfigEditor:
    """Applies edits to the node's configuration file, one at a time (see module doc)."""

    def __init__(self, live: LiveSettings, environ: Mapping[str, str] | None = None) -> None:
        self.live = live
        # The environment the node started with decides, as at start-up (None: os.environ).
        self.environ = environ
        self._lock = threading.Lock()

    def read_only_reason(self) -> str | None:
        return read_only_reason(self.live.current)

    def current(self) -> ConfigFile:
        """The file as it is now (its version goes into every edit form).

        Raises
        ------
        EditError
            The file cannot be edited here, or read.
        """
        reason = self.read_only_reason()
        if reason is not None:
            raise EditError(reason)
        origin = self.live.current.origin
        assert origin is not None
        return ConfigFile.read(origin.path)

    def apply(self, version: str, edit: Callable[[TOMLDocument], None]) -> EditOutcome:
        """Make ``edit`` to the file at ``version``, validate, write, put in force.

        Raises
        ------
        EditError
            Read-only configuration, a file changed since ``version``, an edit that does
            not apply, or one that fails validation (the start-up message).
        """
        with self._lock:
            before = self.current()
            if version != before.version:
                raise EditError(
                    f"{before.path} changed since this page was opened (by someone else, or "
                    "by hand); open the page again and redo the change"
                )
            doc = tomlkit.parse(before.text)
            edit(doc)
            text = tomlkit.dumps(doc)
            if text == before.text:
                raise EditError("nothing changed")
            try:
                edited = settings_from_text(text, before.path, environ=self.environ)
            except ConfigError as exc:
                raise EditError(str(exc)) from None
            try:
                _write_atomic(before.path, text)
            except OSError as exc:
                raise EditError(f"cannot write {before.path}: {exc.strerror or exc}") from exc
            # Only routes and destinations change while the node runs: a port or folder
            # edited in the file by hand meanwhile waits for the next start, as before.
            settings = self.live.current.model_copy(
                update={"routes": edited.routes, "destinations": edited.destinations}
            )
            self.live.replace(settings)
            diff = "".join(
                difflib.unified_diff(
                    before.text.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"{before.path} (before)",
                    tofile=f"{before.path} (after)",
                )
            )
            return EditOutcome(diff=diff, settings=settings)
