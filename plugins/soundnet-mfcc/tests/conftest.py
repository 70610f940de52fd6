"""Run with the core installed: `python -m pytest plugins/soundnet-mfcc/tests` (or `nox -s
plugins`). The plugin is loaded whether or not this package is installed yet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundnet_cli import plugins, testing
from soundnet_cli.testing import sound_wave, soundnet_home  # noqa: F401  (fixtures)

try:
    import soundnet_mfcc  # noqa: F401
except ImportError:  # a plain checkout: use the sources beside these tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(autouse=True)
def mfcc_plugin(soundnet_home: Path) -> Iterator[plugins.Plugins]:  # noqa: F811
    with testing.with_plugin("soundnet_mfcc", "mfcc") as loaded:
        yield loaded
