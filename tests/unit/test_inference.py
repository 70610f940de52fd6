"""The inference-only rewrites give the plain model's features within float tolerance."""

import pytest
import torch
import torch.nn.functional as F

from soundnet_cli.errors import AudioError, UsageProblem
from soundnet_cli.students import soundnet5, soundnet8
from soundnet_cli.students.base import ConvBlock, ConvLayer
from soundnet_cli.students.inference import (
    FastStudent,
    FusedConv,
    fold_batchnorm,
    optimise,
    precision_error,
    relative_error,
)

from ..numeric import assert_close_to_scale

TOLERANCE = 1e-5


def trained_like(model):
    """Non-trivial BatchNorm statistics, as after training (fresh ones would hide fold bugs)."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def sound8():
    torch.manual_seed(0)
    return trained_like(soundnet8())


def wave(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(seconds * 22050), generator=generator) * 60


def test_every_soundnet8_tap_matches_the_plain_model(sound8):
    fast = optimise(sound8, layers=sound8.layer_names)
    assert isinstance(fast, FastStudent)
    x = wave(10.3)
    with torch.inference_mode():
        plain = sound8.forward_features(x, sound8.layer_names)
    ours = fast.forward_features(x, sound8.layer_names)
    for name in sound8.layer_names:
        assert ours[name].shape == plain[name].shape, name
        assert relative_error(ours[name], plain[name]) <= TOLERANCE, name


@pytest.mark.parametrize("layers", [["pool5"], ["conv1", "pool1"], ["conv2", "conv7"], ["conv8"]])
def test_subsets_of_layers_stop_early_and_agree(sound8, layers):
    fast = optimise(sound8, layers=layers)
    x = wave(21.0, batch=1, seed=1)
    with torch.inference_mode():
        plain = sound8.forward_features(x, layers)
    ours = fast.forward_features(x, layers)
    assert list(ours) == layers
    for name in layers:
        assert relative_error(ours[name], plain[name]) <= TOLERANCE


def test_soundnet5_and_its_heads():
    torch.manual_seed(1)
    model = trained_like(soundnet5())
    fast = optimise(model, layers=["conv5"])
    x = wave(6.0, batch=1)
    with torch.inference_mode():
        plain_logp = model(x)
        plain = model.forward_features(x, model.layer_names)
    ours = fast.forward_features(x, model.layer_names)
    for name in model.layer_names:
        assert relative_error(ours[name], plain[name]) <= TOLERANCE
    ours_logp = fast(x)
    for head in plain_logp:
        assert relative_error(ours_logp[head], plain_logp[head]) <= TOLERANCE


@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 1001, 4097])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_polyphase_conv_equals_strided_conv(length, in_channels):
    torch.manual_seed(length)
    weight, bias = torch.randn(5, in_channels, 64), torch.randn(5)
    fused = FusedConv(weight, bias, stride=2, padding=32)
    assert fused.polyphase
    x = torch.randn(2, in_channels, length)
    expected = F.conv1d(x, weight, bias, 2, 32)
    assert_close_to_scale(fused(x), expected, 1e-5)


def test_batchnorm_folding_is_exact_in_float64():
    torch.manual_seed(2)
    block = trained_like(ConvBlock(4, ConvLayer("c", 6, 8, 2, 4)))
    weight, bias = fold_batchnorm(block)
    x = torch.randn(1, 4, 100)
    with torch.inference_mode():
        expected = block.bn(block.conv(x))
    assert_close_to_scale(F.conv1d(x, weight, bias, 2, 4), expected, 1e-5)


def test_too_short_input_raises_the_models_own_error(sound8):
    fast = optimise(sound8)
    with pytest.raises(AudioError, match="too short"):
        fast.forward_features(torch.zeros(1000), ["pool5"])


def test_unknown_precision_is_a_usage_error(sound8):
    with pytest.raises(UsageProblem):
        optimise(sound8, precision="fp8")


def test_bf16_passes_its_check_and_a_strict_tolerance_falls_back_to_fp32(sound8):
    fast = optimise(sound8, layers=["pool5"])
    error = precision_error(fast, ["pool5"], torch.bfloat16)
    assert 0 < error < 5e-2
    assert fast.dtype == torch.float32  # the check leaves the model as it found it
    said: list[str] = []
    strict = optimise(sound8, precision="bf16", tolerance=1e-9, announce=said.append)
    assert strict.dtype == torch.float32
    assert said and "exceeds the tolerance" in said[0]
    loose = optimise(sound8, precision="bf16", tolerance=1.0)
    assert loose.dtype == torch.bfloat16
    out = loose.forward_features(wave(5.0, batch=1), ["pool5"])["pool5"]
    assert out.dtype == torch.float32


def test_other_modules_are_returned_unchanged():
    module = torch.nn.Conv1d(1, 1, 3)
    assert optimise(module) is module
