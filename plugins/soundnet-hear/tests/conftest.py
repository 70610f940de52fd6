"""Run from the repository root with the core installed: `python -m pytest
plugins/soundnet-hear/tests` (or `nox -s plugins`). Tests on the official weights reuse the core's
integration fixtures, which download the authors' release once into pytest's cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from soundnet_cli.testing import sound_wave, soundnet_home  # noqa: F401  (fixtures)
from tests.conftest import named_checkpoint  # noqa: F401  (fixture)
from tests.integration.conftest import (  # noqa: F401  (fixtures)
    official_checkpoint,
    official_home,
    official_sdist,
)

PLUGINS = Path(__file__).resolve().parents[2]
for package, module in (("soundnet-hear", "soundnet_hear"), ("soundnet-mfcc", "soundnet_mfcc")):
    try:
        __import__(module)
    except ImportError:  # a plain checkout: use the sources beside these tests
        sys.path.insert(0, str(PLUGINS / package / "src"))


@pytest.fixture(autouse=True)
def _isolated(soundnet_home: Path) -> Path:  # noqa: F811
    return soundnet_home
