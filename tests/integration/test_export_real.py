"""`soundnet export` of the official SoundNet-8 (pool5 and conv7): on real ESC-10 clips of
different lengths, onnxruntime and torch.jit.load give `soundnet extract`'s features within a
relative error of 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.cli.main import build_app
from soundnet_cli.media.audio import load_audio

from .conftest import esc_rows

TOLERANCE = 1e-4
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit is deprecated
]
LAYERS = ("pool5", "conv7")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(), list(args), catch_exceptions=False)


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    """Real ESC-10 audio at its own rate (44.1 kHz): a whole 5-s clip, a 2.5-s cut, an odd
    7.77-s join of two clips, and 12.5 s from three."""
    rows = [r for r in esc_rows("esc10") if r["esc10"] == "True"][:3]
    sounds = [sf.read(r["path"], dtype="float32", always_2d=True) for r in rows]
    rate = sounds[0][1]
    first, second, third = (s[:, 0] for s, _ in sounds)
    made = {
        "whole.flac": first,
        "cut.flac": second[: int(2.5 * rate)],
        "odd.flac": np.concatenate([third, first])[: int(7.77 * rate)],
        "joined.flac": np.concatenate([first, second, third[: int(2.5 * rate)]]),
    }
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, samples in made.items():
        sf.write(str(folder / name), samples, rate)
    return sorted(folder.iterdir())


def extracted(run, clips: list[Path], out: Path) -> dict[str, dict[str, np.ndarray]]:
    args = ["extract", str(clips[0].parent), "--out", str(out), "--json"]
    result = run(*args, *(arg for layer in LAYERS for arg in ("--layer", layer)))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["extracted"] == len(clips)
    return {
        clip.name: {layer: np.load(out / f"{clip.stem}.{layer}.npy") for layer in LAYERS}
        for clip in clips
    }


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_exported_model_equals_extract_on_real_clips(
    run, official_home, clips, tmp_path, fmt, suffix
):
    model_file = tmp_path / f"soundnet8.{suffix}"
    result = run(
        "export", "--format", fmt, "--layer", "pool5", "--layer", "conv7",
        "--out", str(model_file), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["verified"] and summary["max_relative_error"] <= TOLERANCE
    assert [o["name"] for o in summary["outputs"]] == list(LAYERS)

    features = extracted(run, clips, tmp_path / "features")
    lengths = set()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

        def infer(wave: np.ndarray) -> list[np.ndarray]:
            return session.run(list(LAYERS), {"waveform": wave})
    else:
        import torch

        module = torch.jit.load(str(model_file))

        def infer(wave: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                outputs = module(torch.from_numpy(wave))
            return [outputs[layer].numpy() for layer in LAYERS]

    for clip in clips:
        # what a user of the exported file does: decode, mono, 22,050 Hz, in [-1, 1]
        wave = load_audio(clip).samples / 256.0
        lengths.add(len(wave))
        outputs = infer(wave[None].astype(np.float32))
        for layer, ours in zip(LAYERS, outputs, strict=True):
            expected = features[clip.name][layer]  # (time, channels)
            assert ours.shape == (1, *expected.T.shape), (clip.name, layer)
            assert relative_error(ours[0].T, expected) <= TOLERANCE, (clip.name, layer)
    assert len(lengths) == len(clips)
