import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["predict"],
    ["plugins"],
    ["weights"],
    ["weights", "fetch"],
    ["weights", "import"],
    ["weights", "list"],
    ["weights", "info"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "soundnet")
def test_every_help_has_examples(run, command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    if command != ["weights"]:
        assert "Example" in result.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom soundnet_cli.cli.main import build_app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(build_app(), ['predict', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules, 'soundfile' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_version(run):
    from soundnet_cli import __version__

    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "predict" in out.stdout


def _every_command(group, path=()):
    """Each command path of the click group (``("probe", "fit")`` ...), the root first."""
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from _every_command(command, (*path, name))


def test_flags_show_no_value_in_help(run):
    """Issue 25: Typer showed `--debug <bool>`, as if a flag took a value."""
    import typer

    from soundnet_cli.cli.main import build_app

    paths = list(_every_command(typer.main.get_command(build_app())))
    assert ("extract",) in paths and ("probe", "fit") in paths
    for path in paths:
        result = run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.stdout, path
    root = run("--help").stdout
    assert "--debug" in root and "--quiet" in root and "--verbose" in root
