"""A plugin cannot take over the CLI: sys.exit() at import, builtin command names, partial
registrations of a failed plugin (issue 12, item 11)."""

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundnet_cli import plugins
from soundnet_cli.cli.main import build_app


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    eps: list[metadata.EntryPoint] = []
    own = plugins.installed_entry_points()
    monkeypatch.setattr(plugins, "installed_entry_points", lambda: own + eps)

    def add(name: str, source: str) -> None:
        module = f"containment_{name.replace('-', '_')}"
        (tmp_path / f"{module}.py").write_text(source)
        sys.modules.pop(module, None)
        eps.append(metadata.EntryPoint(name, module, plugins.ENTRY_POINT_GROUP))

    return add


def test_system_exit_at_import_is_contained(fake_plugin):
    fake_plugin("quitter", "import sys\nsys.exit(3)\n")
    loaded = plugins.load_plugins()
    assert loaded.infos["quitter"].status == "failed"
    assert "SystemExit" in loaded.infos["quitter"].errors[0]
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert "plugin 'quitter' skipped" in result.stderr
    assert "--disable-plugin quitter" in result.stderr


COMMAND_PLUGIN = """
import soundnet_cli

@soundnet_cli.hookimpl
def register_students(register):
    register("sneaky-student", lambda **kw: None, description="fake")

@soundnet_cli.hookimpl
def register_commands(app):
    @app.command("{command}")
    def replaced():
        print("hijacked")
"""


def test_a_plugin_cannot_replace_a_builtin_command(fake_plugin):
    fake_plugin("hijack", COMMAND_PLUGIN.format(command="extract"))
    result = CliRunner().invoke(build_app(), ["extract", "--help"])
    assert result.exit_code == 0
    assert "hijacked" not in result.output and "--layer" in result.output
    loaded = plugins.get_plugins()
    info = loaded.infos["hijack"]
    assert info.status == "failed" and "'extract', which is a builtin command" in info.errors[0]
    assert "sneaky-student" not in loaded.students  # a failed plugin registers nothing
    assert info.registered == {} and not info.adds_commands


def test_two_plugins_cannot_add_the_same_command(fake_plugin):
    fake_plugin("first", COMMAND_PLUGIN.format(command="same").replace("sneaky", "first"))
    fake_plugin("second", COMMAND_PLUGIN.format(command="same").replace("sneaky", "second"))
    app = build_app()
    loaded = plugins.get_plugins()
    assert loaded.infos["first"].status == "loaded"
    assert "plugin 'first' adds too" in loaded.infos["second"].errors[0]
    assert "second-student" not in loaded.students
    assert CliRunner().invoke(app, ["same"]).stdout.strip() == "hijacked"


def test_a_hook_failing_midway_leaves_no_commands_or_components(fake_plugin):
    fake_plugin(
        "halfway",
        """
import soundnet_cli

@soundnet_cli.hookimpl
def register_students(register):
    register("halfway-student", lambda **kw: None, description="fake")

@soundnet_cli.hookimpl
def register_commands(app):
    @app.command("halfway-cmd")
    def cmd():
        print("half")
    raise SystemExit("stop")
""",
    )
    app = build_app()
    loaded = plugins.get_plugins()
    assert loaded.infos["halfway"].status == "failed"
    assert "halfway-student" not in loaded.students
    assert CliRunner().invoke(app, ["halfway-cmd"]).exit_code == 2  # no such command


def test_a_plugin_failing_in_one_component_hook_keeps_nothing_from_another(fake_plugin):
    fake_plugin(
        "mixed",
        """
import soundnet_cli

@soundnet_cli.hookimpl
def register_students(register):
    register("mixed-student", lambda **kw: None, description="fake")

@soundnet_cli.hookimpl
def register_probes(register):
    raise RuntimeError("broken probe")
""",
    )
    loaded = plugins.load_plugins()
    assert loaded.infos["mixed"].status == "failed"
    assert "mixed-student" not in loaded.students


CHATTY_PLUGIN = """
import soundnet_cli

print("hello from a chatty plugin")

@soundnet_cli.hookimpl
def register_students(register):
    print("registering!")
    register("chatty-student", lambda **kw: None, description="fake")
"""


def test_a_plugin_that_prints_does_not_corrupt_json_stdout(fake_plugin, caplog):
    fake_plugin("chatty", CHATTY_PLUGIN)
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = {p["name"]: p for p in json.loads(result.stdout)}  # stdout is JSON alone
    assert listing["chatty"]["status"] == "loaded"
    warnings = " ".join(listing["chatty"]["warnings"])
    assert "hello from a chatty plugin" in warnings and "registering!" in warnings
    assert any("hello from a chatty plugin" in r.getMessage() for r in caplog.records)


def test_an_entry_point_named_like_a_builtin_is_listed_as_blocked_with_a_reason(
    fake_plugin, caplog
):
    fake_plugin("builtin-students", CHATTY_PLUGIN.replace("print(", "str("))
    loaded = plugins.load_plugins()
    assert loaded.infos["builtin-students"].builtin  # ours is untouched
    assert "chatty-student" not in loaded.students and "soundnet8" in loaded.students
    [blocked] = [i for i in loaded.infos.values() if i.name == "builtin-students" and not i.builtin]
    assert blocked.status == "blocked" and "name is taken" in blocked.errors[0]
    assert any("builtin-students" in r.getMessage() and "taken" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    rows = [p for p in json.loads(result.stdout) if p["name"] == "builtin-students"]
    assert sorted(p["status"] for p in rows) == ["blocked", "loaded"]
    table = CliRunner().invoke(build_app(), ["plugins"])
    assert "blocked" in table.stdout and "taken" in " ".join(table.stdout.split())
