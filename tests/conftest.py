"""Shared fixtures. Every test gets its own SOUNDNET_HOME and runs offline; third-party plugins
installed in the environment are kept out unless a test asks for them
(``@pytest.mark.third_party_plugins``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli import plugins

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SOUNDNET_TEST_DATA", REPO.parent / "shared" / "data"))
REQUIRE_REAL = os.environ.get("SOUNDNET_REQUIRE_REAL_DATA", "") not in {"", "0"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "third_party_plugins: let installed plugins load")


def missing(reason: str) -> None:
    """Skip for absent real data or network, except where CI demands them (then fail)."""
    if REQUIRE_REAL:
        pytest.fail(f"{reason} (SOUNDNET_REQUIRE_REAL_DATA is set)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOUNDNET_HOME", str(tmp_path_factory.mktemp("soundnet-home")))
    monkeypatch.setenv("SOUNDNET_OFFLINE", "1")
    monkeypatch.delenv("SOUNDNET_DISABLE_PLUGINS", raising=False)
    if request.node.get_closest_marker("third_party_plugins") is None:
        own = [
            ep
            for ep in plugins.installed_entry_points()
            if getattr(ep, "dist", None) is not None
            and ep.dist.metadata["Name"] == plugins.CORE_DISTRIBUTION
        ]
        monkeypatch.setattr(plugins, "installed_entry_points", lambda: own)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def write_wav(path: Path, samples: np.ndarray, rate: int = 22050, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def tone(seconds: float, rate: int = 22050, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wav_factory(tmp_path: Path):
    def make(
        name: str = "clip.wav",
        seconds: float = 2.0,
        rate: int = 22050,
        freq: float = 440.0,
        channels: int = 1,
        subtype: str = "PCM_16",
    ) -> Path:
        mono = tone(seconds, rate, freq)
        data = (
            mono
            if channels == 1
            else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)
        )
        return write_wav(tmp_path / name, data, rate, subtype)

    return make


@pytest.fixture
def named_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialised SoundNet-8 with small named heads, saved natively (no network)."""
    import torch

    from soundnet_cli.students import HeadSpec, soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = soundnet8(
        heads=(
            HeadSpec("objects", 3, ("cat", "dog", "bird")),
            HeadSpec("scenes", 2, ("beach", "forest")),
        )
    )
    return save_checkpoint(model, tmp_path / "tiny.safetensors", provenance={"source": "test"})
