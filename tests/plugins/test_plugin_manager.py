"""The plugin manager with plugins defined in the test (fake entry points)."""

import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from soundnet_cli import plugins
from soundnet_cli.errors import UnknownNameError

from ..conftest import REPO


def test_builtins_register_the_students():
    loaded = plugins.load_plugins()
    assert {"soundnet8", "soundnet5"} <= set(loaded.students.names())
    info = loaded.infos["builtin-students"]
    assert info.builtin and info.distribution == "soundnet-cli" and info.status == "loaded"
    assert info.registered == {"student": ["soundnet8", "soundnet5", "classifier:"]}


def test_builtins_are_declared_as_entry_points_in_pyproject():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][
        "soundnet"
    ]
    assert table == plugins.BUILTIN_PLUGINS


def _module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    eps: list[metadata.EntryPoint] = []
    builtin = [ep for ep in plugins.installed_entry_points()]
    monkeypatch.setattr(plugins, "installed_entry_points", lambda: builtin + eps)

    def add(name: str, source: str) -> None:
        module = f"fakeplugin_{name.replace('-', '_')}"
        _module(tmp_path, module, source)
        sys.modules.pop(module, None)
        eps.append(metadata.EntryPoint(name, module, plugins.ENTRY_POINT_GROUP))

    return add


STUDENT_PLUGIN = """
import soundnet_cli

@soundnet_cli.hookimpl
def register_students(register):
    register({name!r}, lambda **kw: {name!r}, description="fake")
"""


def test_third_party_student_is_registered(fake_entry_points):
    fake_entry_points("fake", STUDENT_PLUGIN.format(name="fake-student"))
    loaded = plugins.load_plugins()
    assert loaded.students.create("fake-student") == "fake-student"
    assert loaded.infos["fake"].registered == {"student": ["fake-student"]}
    assert not loaded.infos["fake"].builtin


def test_broken_plugin_is_reported_and_skipped(fake_entry_points):
    fake_entry_points("broken", "raise RuntimeError('kaboom at import')")
    fake_entry_points("fine", STUDENT_PLUGIN.format(name="fine-student"))
    loaded = plugins.load_plugins()
    assert loaded.infos["broken"].status == "failed"
    assert "kaboom at import" in loaded.infos["broken"].errors[0]
    assert "fine-student" in loaded.students and "soundnet8" in loaded.students
    assert [i.name for i in loaded.failures()] == ["broken"]


def test_hook_that_raises_is_reported(fake_entry_points):
    fake_entry_points(
        "raiser",
        """
import soundnet_cli

@soundnet_cli.hookimpl
def register_probes(register):
    register("ok-probe", dict)
    raise ValueError("half-way")
""",
    )
    loaded = plugins.load_plugins()
    assert loaded.infos["raiser"].status == "failed"
    assert "half-way" in loaded.infos["raiser"].errors[0]
    assert "ok-probe" not in loaded.probes  # all or nothing


def test_duplicate_name_names_both_plugins(fake_entry_points):
    fake_entry_points("copycat", STUDENT_PLUGIN.format(name="soundnet8"))
    loaded = plugins.load_plugins()
    error = loaded.infos["copycat"].errors[0]
    assert "builtin-students" in error and "copycat" in error
    assert loaded.students.get("soundnet8").plugin == "builtin-students"


def test_blocked_by_argument_and_environment(fake_entry_points, monkeypatch):
    fake_entry_points("one", STUDENT_PLUGIN.format(name="one-student"))
    fake_entry_points("two", STUDENT_PLUGIN.format(name="two-student"))
    monkeypatch.setenv("SOUNDNET_DISABLE_PLUGINS", "two")
    loaded = plugins.load_plugins(disabled=["one"])
    assert loaded.infos["one"].status == loaded.infos["two"].status == "blocked"
    assert "one-student" not in loaded.students and "two-student" not in loaded.students


def test_unknown_student_lists_close_matches():
    with pytest.raises(UnknownNameError, match="soundnet8"):
        plugins.get_plugins().students.get("soundnet-8")
