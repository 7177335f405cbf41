"""Editing routes and destinations in the configuration file: comments kept, validated as
at start-up, refused on a stale version or a read-only configuration, put in force live."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import re
from pathlib import Path

import pytest
import tomlkit

from dicom_node.config import DEFAULT_CONFIG, PACKAGE_ROOT, LiveSettings, load_settings
from dicom_node.process.worker import SettingsChannel
from dicom_node.web import config_edit
from dicom_node.web.config_edit import ConfigEditor, EditError


def write_config(folder: Path) -> Path:
    """The embedded node.toml (every comment, every route) with this test's folders."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    text = text.replace('data_dir = "data"', f'data_dir = "{folder / "data"}"')
    text = text.replace('[models]\ndir = "models"', f'[models]\ndir = "{PACKAGE_ROOT / "models"}"')
    path = folder / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def editor(config: Path) -> ConfigEditor:
    return ConfigEditor(LiveSettings(load_settings(config, environ={})), environ={})


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_disable_a_route_keeps_every_comment(editor: ConfigEditor, config: Path) -> None:
    before = config.read_text()
    version = editor.current().version
    outcome = editor.apply(
        version, lambda d: config_edit.set_enabled(d, "routes", "brain-mri", False)
    )
    after = config.read_text()
    assert comment_lines(after) == comment_lines(before)
    added = [line for line in outcome.diff.splitlines() if line.startswith("+")][1:]
    assert added == ["+enabled = false"] and "\n-" not in outcome.diff.split("@@", 1)[1]
    # The new key sits with its route, before the comment that introduces the next ones.
    assert re.search(r"key_slices = 1  # occlusion[^\n]*\nenabled = false\n\n# Seed models", after)
    assert editor.live.current.route("brain-mri").enabled is False
    assert editor.live.version == 1
    # What the node reads at its next start is what is in force now.
    assert load_settings(config, environ={}).routes == editor.live.current.routes


def test_add_a_route_and_move_it_first(editor: ConfigEditor, config: Path) -> None:
    values = {
        "name": "ct-forward",
        "enabled": True,
        "match": {"Modality": "^CT$"},
        "exclude": {},
        "models": [],
        "destinations": ["pacs"],
        "forward": True,
        "pdf": False,
        "key_slices": 1,
        "continue": True,
    }
    editor.apply(
        editor.current().version, lambda d: config_edit.put_entry(d, "routes", values, new=True)
    )
    text = config.read_text()
    assert text.endswith(
        '\n\n[[routes]]\nname = "ct-forward"\nmatch = {Modality = "^CT$"}\n'
        'destinations = ["pacs"]\nforward = true\ncontinue = true\n'
    )
    names = [r.name for r in editor.live.current.routes]
    assert names[-1] == "ct-forward"
    for _ in range(len(names) - 1):
        editor.apply(
            editor.current().version, lambda d: config_edit.move_route(d, "ct-forward", -1)
        )
    assert [r.name for r in editor.live.current.routes] == ["ct-forward", *names[:-1]]
    with pytest.raises(EditError, match="first already"):
        editor.apply(
            editor.current().version, lambda d: config_edit.move_route(d, "ct-forward", -1)
        )
    route = load_settings(config, environ={}).routes[0]
    assert (route.name, route.forward, route.continue_) == ("ct-forward", True, True)
    assert comment_lines(config.read_text()) == comment_lines(DEFAULT_CONFIG.read_text())


def test_a_new_table_before_another_section_keeps_the_blank_lines(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[web]\nport = 8081\n")
    editor = ConfigEditor(LiveSettings(load_settings(config, environ={})), environ={})
    values = {"name": "ct", "forward": True, "destinations": ["pacs"]}
    editor.apply(
        editor.current().version, lambda d: config_edit.put_entry(d, "routes", values, new=True)
    )
    assert config.read_text().endswith(
        'key_slices = 3\n\n[[routes]]\nname = "ct"\ndestinations = ["pacs"]\n'
        "forward = true\n\n[web]\nport = 8081\n"
    )
    assert editor.live.current.web.port == 8081


def test_invalid_edits_get_the_start_up_message_and_change_nothing(
    editor: ConfigEditor, config: Path
) -> None:
    before = config.read_text()
    version = editor.current().version
    bad_model = {"name": "x", "models": ["no-such-model"], "destinations": ["pacs"]}
    with pytest.raises(EditError) as refused:
        editor.apply(version, lambda d: config_edit.put_entry(d, "routes", bad_model, new=True))
    message = str(refused.value)
    assert message.startswith(f"invalid configuration in {config}:")
    assert "routes[8] (x).models: unknown model 'no-such-model'" in message
    with pytest.raises(
        EditError,
        match=r"destinations\.0\.port: Input should be less than or equal to 65535 \(got 70000\)",
    ):
        editor.apply(
            version,
            lambda d: config_edit.put_entry(
                d, "destinations", {"name": "pacs", "port": 70000}, new=False
            ),
        )
    with pytest.raises(EditError, match="unknown destination 'pacs'"):
        editor.apply(version, lambda d: config_edit.delete_entry(d, "destinations", "pacs"))
    with pytest.raises(EditError, match="'chest-xray' exists already"):
        editor.apply(
            version,
            lambda d: config_edit.put_entry(d, "routes", {"name": "chest-xray"}, new=True),
        )
    with pytest.raises(EditError, match="nothing changed"):
        editor.apply(
            version,
            lambda d: config_edit.put_entry(
                d, "destinations", {"name": "pacs", "port": 4242}, new=False
            ),
        )
    assert config.read_text() == before
    assert editor.live.version == 0


def test_a_stale_version_is_refused(editor: ConfigEditor, config: Path) -> None:
    version = editor.current().version
    config.write_text(config.read_text() + "\n# changed by hand\n")
    with pytest.raises(EditError, match="changed since this page was opened"):
        editor.apply(version, lambda d: config_edit.set_enabled(d, "routes", "chest-xray", False))
    assert "# changed by hand" in config.read_text()


def test_destination_edit_changes_only_what_changed(editor: ConfigEditor, config: Path) -> None:
    values = {
        "name": "pacs",
        "enabled": False,
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": 4243,
        "max_attempts": 8,
        "backoff_seconds": 5,
        "backoff_max": 600,
        "sr_class": "comprehensive3d",
        "timeout": 30,
        "concurrency": 1,
    }
    outcome = editor.apply(
        editor.current().version,
        lambda d: config_edit.put_entry(d, "destinations", values, new=False),
    )
    changed = [
        line
        for line in outcome.diff.splitlines()
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    comment = "# false holds the destination: its deliveries wait (pending)"
    assert changed == [
        "-port = 4242",
        "+port = 4243",
        f"-enabled = true            {comment}",
        f"+enabled = false            {comment}",
    ]
    dest = editor.live.current.destination("pacs")
    assert (dest.port, dest.enabled) == (4243, False)
    # The trailing comments of the destination's keys are kept.
    assert "max_attempts = 8          # then the delivery is marked failed" in config.read_text()


def test_read_only_configurations(tmp_path: Path, config: Path) -> None:
    embedded = config_edit.read_only_reason(load_settings(environ={}))
    assert embedded is not None and "embedded default configuration" in embedded
    assert "--config" in embedded
    overridden = load_settings(config, environ={}, overrides={"routes": []})
    reason = config_edit.read_only_reason(overridden)
    assert reason is not None and reason.startswith(f"routes are set outside {config}")
    not_a_file = load_settings(config, environ={}).model_validate({})
    assert config_edit.read_only_reason(not_a_file) == (
        "These settings were not read from a configuration file."
    )
    assert config_edit.read_only_reason(load_settings(config, environ={})) is None
    editor = ConfigEditor(LiveSettings(load_settings(environ={})), environ={})
    with pytest.raises(EditError, match="embedded default configuration"):
        editor.current()


def test_settings_keep_their_origin_through_copies_and_processes(config: Path) -> None:
    settings = load_settings(config, environ={"DICOM_NODE__SCP__PORT": "11113"})
    assert settings.origin is not None
    assert settings.origin.path == config.resolve() and not settings.origin.embedded
    assert settings.origin.overridden == {"scp"}
    for copy in (settings.model_copy(update={"routes": ()}), pickle.loads(pickle.dumps(settings))):
        assert copy.origin == settings.origin


def test_live_settings_tell_subscribers_before_the_swap(config: Path) -> None:
    first = load_settings(config, environ={})
    live = LiveSettings(first)
    assert LiveSettings.of(live) is live and LiveSettings.of(first).current is first
    seen: list[tuple[str, int, bool]] = []
    live.subscribe(lambda s, v: seen.append((s.routes[0].name, v, live.current is first)))
    second = first.model_copy(update={"routes": first.routes[1:]})
    assert live.replace(second) == 1
    assert seen == [(first.routes[1].name, 1, True)]
    assert live.current is second and live.version == 1


def test_settings_channel_brings_a_worker_up_to_date(config: Path) -> None:
    """What a worker process does before each claim, here in one process: it waits for
    the settings the node announced, in order."""
    settings = load_settings(config, environ={})
    channel = SettingsChannel(mp.get_context("spawn"), 0)
    worker = LiveSettings(settings, version=channel.version)
    channel.refresh(worker)  # nothing announced: nothing to wait for
    assert worker.version == 0
    edits = [settings.model_copy(update={"routes": settings.routes[:n]}) for n in (3, 2)]
    for version, edit in enumerate(edits, start=1):
        channel.publish(edit, version)
    channel.refresh(worker)
    assert worker.version == 2 and len(worker.current.routes) == 2
    channel.close()


def test_form_helpers() -> None:
    assert config_edit.patterns("Modality = ^CR$\n\n BodyPartExamined=CHEST ", "match") == {
        "Modality": "^CR$",
        "BodyPartExamined": "CHEST",
    }
    assert config_edit.patterns("A = x=y", "match") == {"A": "x=y"}
    with pytest.raises(EditError, match="match line 1: write Keyword = pattern"):
        config_edit.patterns("Modality", "match")
    with pytest.raises(EditError, match="line 2: Modality is given twice"):
        config_edit.patterns("Modality = a\nModality = b", "match")
    assert config_edit.number("104") == 104 and config_edit.number("2.5") == 2.5
    assert config_edit.number(" abc ") == "abc"
    assert config_edit.ROUTE_DEFAULTS["continue"] is False
    assert config_edit.DESTINATION_DEFAULTS["enabled"] is True
    doc = tomlkit.parse('routes = [{name = "a", models = ["m"]}]\n')
    with pytest.raises(EditError, match=r"not written as \[\[routes\]\] tables"):
        config_edit.set_enabled(doc, "routes", "a", False)
