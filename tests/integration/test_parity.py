"""The official SoundNet-8 against an independent computation from PAPER.md's layer table,
written with plain torch.nn.functional calls in float64 on the release's raw arrays, fed input
decoded, resampled and scaled here (soundfile, soxr, x256), not by the product's load_audio."""

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from soundnet_cli.media.audio import load_audio, tile

from .conftest import esc_rows

# (layer, kernel, stride, padding, max-pool after it) -- PAPER.md, "SoundNet-8"
TABLE = [
    ("conv1", 64, 2, 32, 8),
    ("conv2", 32, 2, 16, 8),
    ("conv3", 16, 2, 8, None),
    ("conv4", 8, 2, 4, None),
    ("conv5", 4, 2, 2, 4),
    ("conv6", 4, 2, 2, None),
    ("conv7", 4, 2, 2, None),
]


def independent_input(path) -> np.ndarray:
    """What SoundNet takes, written out without the product: the file's first channel as float
    in [-1, 1] (soundfile), resampled to 22,050 Hz by libsoxr's HQ setting, times 256."""
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    mono = data[:, 0]
    if rate != 22050:
        mono = soxr.resample(mono, rate, 22050, quality="HQ")
    return mono * 256.0


def circular(wave: np.ndarray, samples: int) -> np.ndarray:
    """``wave`` repeated end to start until it is ``samples`` long (PAPER "Edges")."""
    return np.tile(wave, -(-samples // len(wave)))[:samples]


def t64(array):
    return torch.from_numpy(np.asarray(array, dtype=np.float64))


def kernel(w):  # release layout (kernel, 1, in, out) -> (out, in, kernel)
    return t64(w[:, 0]).permute(2, 1, 0).contiguous()


def reference(params, wave: np.ndarray) -> dict[str, torch.Tensor]:
    x = t64(wave)[None, None]
    taps = {}
    for name, _kernel, s, p, pool in TABLE:
        layer = params[name]
        x = F.conv1d(x, kernel(layer["weights"]), t64(layer["biases"]), stride=s, padding=p)
        x = F.batch_norm(
            x,
            t64(layer["mean"]),
            t64(layer["var"]),
            t64(layer["gamma"]),
            t64(layer["beta"]),
            training=False,
            eps=1e-5,
        )
        x = F.relu(x)
        if pool:
            x = F.max_pool1d(x, pool, pool)
        taps["pool5" if name == "conv5" else name] = x
    for head, key in (("objects", "conv8"), ("scenes", "conv8_2")):
        taps[head] = F.conv1d(
            x, kernel(params[key]["weights"]), t64(params[key]["biases"]), stride=2
        )
    return taps


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("index", [0, 97, 213, 399])
def test_official_model_matches_the_paper_table(official_model, release_params, index):
    """The product's whole path (load_audio, tile, model) against the independent one."""
    row = esc_rows("esc50-fold4")[index]
    wave = tile(load_audio(row["path"]).samples, 441000)
    ref = reference(release_params, circular(independent_input(row["path"]), 441000))
    with torch.inference_mode():
        ours = official_model.forward_features(torch.from_numpy(wave), ["pool5", "conv7", "conv8"])
        log_probs = official_model(torch.from_numpy(wave))
    assert ours["pool5"].shape == ref["pool5"].shape == (1, 256, 54)
    assert relative_error(ours["pool5"], ref["pool5"]) <= 1e-4
    assert relative_error(ours["conv7"], ref["conv7"]) <= 1e-4
    logits = {"objects": ours["conv8"][:, :1000], "scenes": ours["conv8"][:, 1000:]}
    for head in ("objects", "scenes"):
        assert logits[head].shape == ref[head].shape
        assert relative_error(logits[head], ref[head]) <= 1e-4
        assert relative_error(log_probs[head].exp(), torch.softmax(ref[head], dim=1)) <= 1e-4
