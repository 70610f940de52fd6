import pytest
import torch

from soundnet_cli.errors import AudioError, LayerError, SoundnetError
from soundnet_cli.students import HeadSpec, soundnet5, soundnet8

# PAPER.md, SoundNet-8: (out channels, kernel, stride, padding) per conv; pools kernel = stride.
PAPER_SOUNDNET8 = {
    "conv1": (16, 64, 2, 32),
    "conv2": (32, 32, 2, 16),
    "conv3": (64, 16, 2, 8),
    "conv4": (128, 8, 2, 4),
    "conv5": (256, 4, 2, 2),
    "conv6": (512, 4, 2, 2),
    "conv7": (1024, 4, 2, 2),
}
PAPER_POOLS8 = {"pool1": 8, "pool2": 8, "pool5": 4}


@pytest.fixture(scope="module")
def net8():
    torch.manual_seed(0)
    return soundnet8().eval()


def test_soundnet8_layers_match_the_paper(net8):
    for name, (out, k, s, p) in PAPER_SOUNDNET8.items():
        block = net8.blocks[name]
        conv = block.conv
        assert (conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]) == (
            out,
            k,
            s,
            p,
        )
        assert block.bn.eps == 1e-5
    for name, k in PAPER_POOLS8.items():
        pool = net8.blocks[name]
        assert isinstance(pool, torch.nn.MaxPool1d) and pool.kernel_size == k and pool.stride == k
    for head, size in (("objects", 1000), ("scenes", 401)):
        conv = net8.heads[head]
        assert (
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.stride[0],
            conv.padding[0],
        ) == (1024, size, 8, 2, 0)
    assert net8.layer_names == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "conv3",
        "conv4",
        "conv5",
        "pool5",
        "conv6",
        "conv7",
        "conv8",
    ]


def test_soundnet5_layers_match_the_paper():
    net = soundnet5()
    expected = {
        "conv1": (32, 64, 2, 32),
        "conv2": (64, 32, 2, 16),
        "conv3": (128, 16, 2, 8),
        "conv4": (256, 8, 2, 4),
    }
    for name, (out, k, s, p) in expected.items():
        conv = net.blocks[name].conv
        assert (conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]) == (
            out,
            k,
            s,
            p,
        )
    assert [net.blocks[p].kernel_size for p in ("pool1", "pool2", "pool3")] == [8, 8, 8]
    head = net.heads["objects"]
    assert (head.kernel_size[0], head.stride[0], head.padding[0]) == (16, 12, 4)
    assert net.layer_names[-1] == "conv5"


def test_twenty_seconds_give_four_conv8_steps(net8):
    with torch.inference_mode():
        out = net8(torch.randn(2, 441000))
    assert out["objects"].shape == (2, 1000, 4) and out["scenes"].shape == (2, 401, 4)
    # log-softmax per head and time step
    assert torch.allclose(out["scenes"].exp().sum(dim=1), torch.ones(2, 4), atol=1e-5)


@pytest.mark.parametrize("seconds", [1.0, 5.0, 10.0, 20.0, 33.3])
def test_output_length_predicts_every_tap(net8, seconds):
    n = int(seconds * 22050)
    layers = [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "conv3",
        "conv4",
        "conv5",
        "pool5",
        "conv6",
        "conv7",
    ]
    layers = [layer for layer in layers if net8.output_length(layer, n) > 0]
    with torch.inference_mode():
        taps = net8.forward_features(torch.randn(n), layers)
    for info in net8.feature_info:
        if info.name in taps:
            assert taps[info.name].shape == (1, info.channels, net8.output_length(info.name, n))


def test_feature_info_geometry(net8):
    info = {f.name: f for f in net8.feature_info}
    assert info["conv1"].stride == 2 and info["conv1"].receptive_field == 64
    assert info["pool5"].stride == 2 * 8 * 2 * 8 * 2 * 2 * 2 * 4
    assert info["conv8"].channels == 1401
    # receptive field grows monotonically and each step's centre advances by the stride
    fields = [f.receptive_field for f in net8.feature_info]
    assert fields == sorted(fields)
    centres = info["pool5"].step_centres(3)
    assert centres[1] - centres[0] == pytest.approx(info["pool5"].stride / 22050)


def test_min_samples_is_tight(net8):
    for layer in ("pool5", "conv7", "conv8"):
        need = net8.min_samples(layer)
        assert net8.output_length(layer, need) >= 1
        assert net8.output_length(layer, need - 1) == 0
    # PAPER.md "Edges": a 5-s clip has no conv8 output at all, and conv7 has 4 steps
    assert net8.output_length("conv8", 5 * 22050) == 0
    assert net8.output_length("conv7", 5 * 22050) == 4


def test_forward_features_stops_after_the_last_tap(net8):
    ran = []
    hooks = [
        net8.blocks[name].register_forward_hook(lambda m, i, o, name=name: ran.append(name))
        for name in net8.blocks
    ]
    try:
        with torch.inference_mode():
            taps = net8.forward_features(torch.randn(1, 44100), ["conv2", "pool2"])
    finally:
        for hook in hooks:
            hook.remove()
    assert set(taps) == {"conv2", "pool2"}
    assert ran == ["conv1", "pool1", "conv2", "pool2"]


def test_conv8_tap_is_the_concatenated_head_logits(net8):
    wave = torch.randn(1, 441000)
    with torch.inference_mode():
        logits = net8.forward_features(wave, ["conv8"])["conv8"]
        log_probs = net8(wave)
    assert logits.shape == (1, 1401, 4)
    assert torch.allclose(torch.log_softmax(logits[:, :1000], 1), log_probs["objects"], atol=1e-5)


def test_unknown_layer_lists_valid_ones(net8):
    with pytest.raises(LayerError) as info:
        net8.forward_features(torch.randn(44100), ["pool4"])
    assert "pool4" in str(info.value) and "pool5" in str(info.value) and "conv1" in str(info.value)


def test_too_short_input_is_a_clear_error(net8):
    with pytest.raises(AudioError, match="too short for layer 'conv8'"):
        net8.forward_features(torch.randn(22050), ["conv8"])
    with pytest.raises(AudioError, match="too short"):
        net8(torch.randn(22050 * 5))


def test_any_length_input_any_batch_shape(net8):
    with torch.inference_mode():
        for shape in [(30000,), (3, 30000), (3, 1, 30000)]:
            out = net8.forward_features(torch.randn(*shape), ["pool5"])["pool5"]
            assert out.shape[0] == (shape[0] if len(shape) > 1 else 1)
    with pytest.raises(SoundnetError, match="expected a waveform"):
        net8.forward_features(torch.randn(2, 2, 30000), ["pool5"])


def test_paper_initialisation():
    torch.manual_seed(1)
    net = soundnet8()
    weights = torch.cat([net.blocks[n].conv.weight.flatten() for n in PAPER_SOUNDNET8])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert all((net.blocks[n].conv.bias == 0).all() for n in PAPER_SOUNDNET8)
    gammas = torch.cat([net.blocks[n].bn.weight for n in PAPER_SOUNDNET8])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.01)
    assert gammas.std().item() == pytest.approx(0.02, rel=0.15)


def test_heads_are_sized_at_build_time():
    net = soundnet8(heads=[HeadSpec("places365", 365), HeadSpec("imagenet", 1000)])
    assert net.feature("conv8").channels == 1365
    with torch.inference_mode():
        out = net(torch.randn(1, 441000))
    assert list(out) == ["places365", "imagenet"] and out["places365"].shape[1] == 365


def test_bad_heads_are_refused():
    with pytest.raises(SoundnetError, match="unique"):
        soundnet8(heads=[HeadSpec("a", 2), HeadSpec("a", 3)])
    with pytest.raises(SoundnetError, match="category names"):
        HeadSpec("a", 2, ("x",))
    with pytest.raises(SoundnetError, match="at least one"):
        soundnet8(heads=[])


def test_default_layers():
    from soundnet_cli.models import default_layer

    assert soundnet8().default_layer == "pool5" and default_layer(soundnet8()) == "pool5"
    assert default_layer(soundnet5()) == "pool3"
    with pytest.raises(LayerError):
        from soundnet_cli.students import ConvStudent
        from soundnet_cli.students.soundnet import SOUNDNET8_BODY, SOUNDNET8_HEAD

        ConvStudent("x", SOUNDNET8_BODY, SOUNDNET8_HEAD, [HeadSpec("a", 2)], default_layer="fc7")


def test_student_device_follows_parameters_or_buffers():
    from soundnet_cli.students import StudentBase

    class Empty(StudentBase):
        pass

    class BuffersOnly(StudentBase):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("window", torch.ones(4, dtype=torch.float64))

    assert Empty().device.type == "cpu"
    moved = BuffersOnly().to("meta")
    assert moved.device.type == "meta"  # a parameter-free student still knows where it runs
    assert soundnet8().to("meta").device.type == "meta"
