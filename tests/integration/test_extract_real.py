"""`soundnet extract` with the official SoundNet-8 on real ESC-50 audio, against the independent
float64 computation of test_parity (PAPER.md's layer table on the release's raw arrays, fed input
decoded, resampled and scaled by the test itself: soundfile, soxr, x256)."""

import json

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.cli.main import build_app

from .conftest import esc_rows
from .test_parity import TABLE, independent_input, kernel, t64

TOLERANCE = 1e-4


@pytest.fixture
def run():
    from typer.testing import CliRunner

    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(), list(args), catch_exceptions=False)


def reference(params, wave: np.ndarray) -> dict[str, np.ndarray]:
    """test_parity's float64 body computation (conv1..conv7 taps), (time, channels) each."""
    import torch.nn.functional as F

    x = t64(wave)[None, None]
    taps = {}
    for name, _kernel, stride, pad, pool in TABLE:
        layer = params[name]
        x = F.conv1d(x, kernel(layer["weights"]), t64(layer["biases"]), stride=stride, padding=pad)
        x = F.batch_norm(
            x, t64(layer["mean"]), t64(layer["var"]), t64(layer["gamma"]), t64(layer["beta"]),
            training=False, eps=1e-5,
        )  # fmt: skip
        x = F.relu(x)
        if pool:
            x = F.max_pool1d(x, pool, pool)
        taps["pool5" if name == "conv5" else name] = x[0].T.numpy()
    return taps


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_whole_files_match_the_independent_computation(
    run, official_home, release_params, tmp_path
):
    rows = esc_rows("esc50-fold4")[:12]
    folder = tmp_path / "in"
    for row in rows:
        target = folder / row["category"] / row["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(row["path"])
    out = tmp_path / "out"
    result = run("extract", str(folder), "--out", str(out), "-l", "pool5", "-l", "conv7", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["extracted"] == len(rows)
    setup = json.loads((out / "features.json").read_text())
    assert setup["checkpoint_sha256"] and setup["architecture"] == "soundnet8"
    for row in rows:
        ref = reference(release_params, independent_input(row["path"]))
        stem = out / row["category"] / row["filename"].removesuffix(".flac").removesuffix(".wav")
        for layer in ("pool5", "conv7"):
            ours = np.load(f"{stem}.{layer}.npy")
            expected = ref[layer]
            assert ours.shape == expected.shape
            assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("chunk_seconds", [30])
def test_a_long_file_in_chunks_matches_the_whole_file(
    run, official_home, release_params, tmp_path, chunk_seconds
):
    rows = esc_rows("esc50-fold4")[:36]  # 36 clips x 5 s = 3 minutes at 44.1 kHz
    clips = [sf.read(row["path"], dtype="float32", always_2d=True) for row in rows]
    rate = clips[0][1]
    long_file = tmp_path / "in" / "three minutes.flac"
    long_file.parent.mkdir()
    sf.write(str(long_file), np.concatenate([c[:, 0] for c, _ in clips]), rate)
    out = tmp_path / "out"
    result = run(
        "extract", str(long_file), "-o", str(out), "-l", "pool5", "-l", "conv7",
        "--chunk-seconds", str(chunk_seconds), "--format", "npz", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ref = reference(release_params, independent_input(long_file))
    with np.load(out / "three minutes.npz") as data:
        for layer in ("pool5", "conv7"):
            expected = ref[layer]
            assert data[layer].shape == expected.shape
            assert relative_error(data[layer], expected) <= TOLERANCE
