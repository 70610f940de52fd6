"""plugins/soundnet-mfcc installed with pip (into a target folder), as a user would: listed by
`soundnet plugins`, usable as a student, and gone without a trace once removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

PACKAGE = REPO / "plugins" / "soundnet-mfcc"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("src") / PACKAGE.name
    # Build from a copy: setuptools leaves build/ and *.egg-info/ beside the sources it builds.
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
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
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


def python(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=120,
    )


@pytest.mark.third_party_plugins
def test_installed_mfcc_is_listed_and_usable(site):
    result = python(site, "-m", "soundnet_cli", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    mfcc = listing["mfcc"]
    assert (mfcc["distribution"], mfcc["version"]) == ("soundnet-mfcc", "0.1.0")
    assert mfcc["status"] == "loaded" and mfcc["registered"] == {"student": ["mfcc"]}
    assert not mfcc["builtin"] and mfcc["errors"] == []

    code = (
        "import soundnet_cli, torch; m = soundnet_cli.load_student('mfcc'); "
        "print(tuple(m.forward_features(torch.zeros(44100), ['summary'])['summary'].shape))"
    )
    used = python(site, "-c", code)
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "(1, 26, 3)"


@pytest.mark.third_party_plugins
def test_removed_mfcc_leaves_the_listing_without_error(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    removed = [entry for entry in copy.iterdir() if entry.name.startswith("soundnet_mfcc")]
    assert len(removed) == 2  # the package and its .dist-info
    for entry in removed:
        shutil.rmtree(entry)
    result = python(copy, "-m", "soundnet_cli", "plugins", "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert "mfcc" not in {p["name"] for p in json.loads(result.stdout)}
    unknown = python(copy, "-c", "import soundnet_cli; soundnet_cli.load_student('mfcc')")
    assert unknown.returncode == 1 and "unknown student 'mfcc'" in unknown.stderr
