"""Real plugin packages installed with pip (into a target folder) and used through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    for package in ("soundnet-tiny", "soundnet-broken"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(FIXTURES / package),
            ],
            check=True,
            capture_output=True,
        )
    return target


def soundnet(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run(
        [sys.executable, "-m", "soundnet_cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


@pytest.mark.third_party_plugins
def test_installed_plugin_is_listed_and_usable(site):
    result = soundnet(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    assert listing["tiny"]["distribution"] == "soundnet-tiny"
    assert listing["tiny"]["version"] == "0.3.1"
    assert listing["tiny"]["registered"] == {"student": ["tiny-student"]}
    assert listing["tiny"]["adds_commands"] is True
    assert listing["builtin-students"]["registered"]["student"] == [
        "soundnet8",
        "soundnet5",
        "classifier:",
    ]
    # the broken one is reported, on stderr and in the listing, and breaks nothing
    assert listing["broken"]["status"] == "failed"
    assert "a_module_that_does_not_exist" in listing["broken"]["errors"][0]
    assert "plugin 'broken' skipped" in result.stderr

    hello = soundnet(site, "tiny-hello")
    assert hello.returncode == 0 and "hello from soundnet-tiny" in hello.stdout

    code = (
        "import soundnet_cli, torch; m = soundnet_cli.load_student('tiny-student'); "
        "print(tuple(m.forward_features(torch.zeros(4000), ['conv2'])['conv2'].shape))"
    )
    used = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=120,
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip().startswith("(1, 8,")


@pytest.mark.third_party_plugins
def test_disabled_plugin_adds_nothing(site):
    result = soundnet(site, "--disable-plugin", "tiny", "plugins", "--json")
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    assert listing["tiny"]["status"] == "blocked"
    gone = soundnet(site, "tiny-hello", SOUNDNET_DISABLE_PLUGINS="tiny")
    assert gone.returncode == 2 and "No such command" in gone.stderr


@pytest.mark.third_party_plugins
def test_uninstalled_plugin_disappears(site, tmp_path):
    import shutil

    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    for entry in copy.iterdir():
        if entry.name.startswith(("soundnet_tiny", "soundnet_broken")):
            shutil.rmtree(entry)
    result = soundnet(copy, "plugins", "--json")
    assert result.returncode == 0 and result.stderr == ""
    listing = json.loads(result.stdout)
    assert listing and all(p["builtin"] for p in listing)
