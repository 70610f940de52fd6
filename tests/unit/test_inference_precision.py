"""The half-precision check's arithmetic on a tiny model, fast and the same on every CPU.

float64 stands in for the half precision and a fault injected into one convolution's output
(one clip scaled by a known factor) is the only error of consequence: float64 against float32
differs by about 1e-7, so each measured error is known in advance, whatever bf16 kernels this
machine has. These tests are the `inference` row of `nox -s mutants` (docs/testing.md); the
bf16 tests in test_inference.py check the real kernels.
"""

import pytest
import torch

from soundnet_cli.students import ConvLayer, ConvStudent, HeadLayer, HeadSpec, PoolLayer, inference
from soundnet_cli.students.inference import (
    FastStudent,
    FusedConv,
    choose_precision,
    clip_errors,
    precision_error,
    probe_clips,
    relative_error,
    stage_errors,
)

HALF = torch.float64  # the stand-in half precision
RATE = 500  # a low sample rate: 5-s probe clips of 2,500 samples
ROUNDING = 1e-5  # float64 against float32, far below every injected fault


def tiny_student() -> ConvStudent:
    """Three convolutions of 4, 8 and 6 channels (the fault table's keys), two pools, a head."""
    torch.manual_seed(0)
    body = (
        ConvLayer("conv1", 4, 16, 2, 8),
        PoolLayer("pool1", 4),
        ConvLayer("conv2", 8, 8, 2, 4),
        PoolLayer("pool2", 4),
        ConvLayer("conv3", 6, 4, 2, 2),
    )
    model = ConvStudent("tiny", body, HeadLayer("conv4", 4, 2, 0), [HeadSpec("a", 3)], RATE)
    return model.eval()


CHANNELS = {"conv1": 4, "conv2": 8, "conv3": 6}


@pytest.fixture()
def fast():
    return FastStudent(tiny_student())


@pytest.fixture()
def faults(monkeypatch):
    """{conv name: factor}: in the stand-in half precision, that convolution's output for the
    last clip of a batch is scaled by the factor (a relative error of ``factor - 1`` there)."""
    table: dict[str, float] = {}
    by_channels = {channels: name for name, channels in CHANNELS.items()}
    original = FusedConv.forward

    def forward(self, x4):
        out = original(self, x4)
        name = by_channels.get(self.weight.shape[0])
        if x4.dtype == HALF and name in table:
            out[-1] *= table[name]
        return out

    monkeypatch.setattr(FusedConv, "forward", forward)
    monkeypatch.setattr(inference, "_DTYPES", {**inference._DTYPES, "bf16": HALF})
    monkeypatch.setattr(inference, "half_supported", lambda device, dtype: None)
    return table


def wave(batch: int = 3) -> torch.Tensor:
    return probe_clips(batch, 1.0, RATE)


class Memory:
    """A precision-check cache in a dict (the ``ProbeCache`` protocol), remembering its calls."""

    def __init__(self, store=None):
        self.store = dict(store or {})
        self.calls = []

    def get(self, precision, layers):
        self.calls.append(("get", precision, tuple(layers)))
        return self.store.get((precision, tuple(layers)))

    def put(self, precision, layers, value):
        self.calls.append(("put", precision, tuple(layers)))
        self.store[(precision, tuple(layers))] = value


def no_probe(*args, **kwargs):
    raise AssertionError("the check ran although its answer was remembered")


def test_relative_error_is_the_largest_difference_over_the_references_largest_magnitude():
    reference = torch.tensor([[1.0, -4.0], [2.0, 0.0]])
    ours = reference + torch.tensor([[0.1, 0.0], [0.0, -0.2]])
    assert relative_error(ours, reference) == pytest.approx(0.2 / 4.0, rel=1e-6)
    assert relative_error(ours.double(), reference.double()) == pytest.approx(0.05, rel=1e-6)
    # a silent reference: the absolute difference
    assert relative_error(torch.tensor([0.5, -1.5]), torch.zeros(2)) == pytest.approx(1.5)
    assert relative_error(reference, reference) == 0.0


def test_clip_errors_judge_each_clip_by_its_own_scale():
    reference = torch.stack([torch.full((2, 3), 1000.0), torch.full((2, 3), 1.0)])
    ours = reference.clone()
    ours[0, 1, 2] += 10.0  # 1% of the loud clip
    ours[1, 0, 0] -= 0.5  # 50% of the quiet one
    assert clip_errors(ours, reference) == pytest.approx([0.01, 0.5], rel=1e-6)
    with pytest.raises(ValueError):  # a batch against a reference of another size
        clip_errors(ours[:1], reference)


def test_precision_error_is_the_worst_clip_at_the_worst_layer(fast, faults):
    """conv2's output for the last clip is 50% off; conv1 is right: the error of conv1 and conv2
    together is conv2's, the last clip's; with conv2 kept in float32 it is rounding only."""
    faults["conv2"] = 1.5
    x = wave()
    assert precision_error(fast, ["conv1"], HALF, x) < ROUNDING
    assert precision_error(fast, ["conv1", "conv2"], HALF, x) == pytest.approx(0.5, rel=1e-4)
    assert precision_error(fast, ["conv2", "conv1"], HALF, x) == pytest.approx(0.5, rel=1e-4)
    assert precision_error(fast, ["conv1", "conv2"], HALF, x, keep_fp32=["conv2"]) < ROUNDING
    # the default wave: probe_clips (its length: see the last test)
    assert precision_error(fast, ["conv2"], HALF) == pytest.approx(0.5, rel=1e-4)


def test_precision_error_leaves_the_model_as_it_found_it(fast, faults):
    faults["conv1"] = 2.0
    fast.set_dtype(HALF, keep_fp32=["conv3"])
    precision_error(fast, ["pool2"], torch.float32, wave(), keep_fp32=["conv1"])
    assert (fast.dtype, fast.fp32_convs) == (HALF, ("conv3",))
    assert fast.conv("conv3").weight.dtype == torch.float32
    assert fast.conv("conv1").weight.dtype == HALF


def test_stage_errors_measure_each_convolution_alone_on_its_float32_input(fast, faults):
    """conv2 is 50% off for the last clip: its own error says so, and conv3, fed the float32
    run's input (not conv2's faulty output), is right. Each convolution's half-precision input
    is the float32 model's input to it: the wave, then pool1, then pool2."""
    faults["conv2"] = 1.5
    x = wave()
    seen = {}
    original = FusedConv.conv1d

    def conv1d(self, inputs):
        if inputs.dtype == HALF:
            seen[self.weight.shape[0]] = inputs.float().clone()
        return original(self, inputs)

    fast.set_dtype(HALF, keep_fp32=["conv1"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FusedConv, "conv1d", conv1d)
        errors = stage_errors(fast, HALF, x)
    assert list(errors) == ["conv1", "conv2", "conv3"]
    assert errors["conv2"] == pytest.approx(0.5, rel=1e-4)
    assert errors["conv1"] < ROUNDING and errors["conv3"] < ROUNDING
    assert (fast.dtype, fast.fp32_convs) == (HALF, ("conv1",))  # left as it was
    fast.set_dtype(torch.float32)
    taps = fast.forward_features(x, ["pool1", "pool2"])
    expected = {4: x[:, None], 8: taps["pool1"], 6: taps["pool2"]}
    for channels, inputs in expected.items():
        torch.testing.assert_close(seen[channels], inputs, rtol=1e-6, atol=1e-6 * inputs.max())


def test_no_native_half_precision_is_fp32_without_a_check(fast, monkeypatch):
    asked = []

    def half_supported(device, dtype):
        asked.append((device, dtype))
        return "no bf16 here"

    monkeypatch.setattr(inference, "half_supported", half_supported)
    monkeypatch.setattr(inference, "stage_errors", no_probe)
    memory = Memory()
    assert choose_precision(fast, "bf16", ["pool2"], 0.1, memory) == (
        None,
        float("inf"),
        "no bf16 here",
    )
    assert memory.calls == [] and asked == [(fast.device, torch.bfloat16)]  # the model's device


def test_every_convolution_right_runs_all_in_half_precision_and_is_remembered(fast, faults):
    memory = Memory()
    kept, error, note = choose_precision(fast, "bf16", ["pool2"], 1e-3, memory)
    assert (kept, note) == ((), "") and 0 < error < ROUNDING
    assert memory.store == {("bf16", ("pool2",)): {"error": error, "keep_fp32": [], "note": ""}}
    assert memory.calls == [("get", "bf16", ("pool2",)), ("put", "bf16", ("pool2",))]


def test_a_convolution_over_the_limit_alone_is_kept_in_fp32(fast, faults):
    faults["conv2"] = 1.5
    memory = Memory()
    kept, error, note = choose_precision(fast, "bf16", ["conv3"], 0.1, memory)
    assert kept == ("conv2",) and error < ROUNDING
    assert note == "conv2 kept in fp32 (wrong in bf16 here)"
    remembered = memory.store[("bf16", ("conv3",))]
    assert remembered == {"error": error, "keep_fp32": ["conv2"], "note": note}
    faults["conv1"] = 0.5
    kept, error, note = choose_precision(fast, "bf16", ["conv3"], 0.1)
    assert kept == ("conv1", "conv2") and error < ROUNDING
    assert note == "conv1, conv2 kept in fp32 (wrong in bf16 here)"


def test_every_convolution_over_the_limit_is_fp32_with_the_worst_error(fast, faults):
    faults.update(conv1=1.3, conv2=1.5, conv3=1.2)
    kept, error, note = choose_precision(fast, "bf16", ["conv3"], 0.1)
    assert kept is None and error == pytest.approx(0.5, rel=1e-4)
    assert note == "relative error 5.00e-01 exceeds the tolerance 1e-01"


def test_a_whole_model_over_the_limit_is_fp32_and_remembered_so(fast, faults):
    """Each convolution within 0.1 alone, 8% and 8% off in a row: the model's 17% is over."""
    faults.update(conv1=1.08, conv2=1.08)
    memory = Memory()
    kept, error, note = choose_precision(fast, "bf16", ["pool2"], 0.1, memory)
    assert kept is None and 0.1 < error < 0.2
    assert note == f"relative error {error:.2e} exceeds the tolerance 1e-01"
    assert memory.store[("bf16", ("pool2",))] == {"error": error, "keep_fp32": [], "note": ""}


def test_errors_equal_to_the_limit_pass(fast, faults, monkeypatch):
    monkeypatch.setattr(
        inference, "stage_errors", lambda fast, dtype, wave: {"conv1": 0.1, "conv2": 0.0}
    )
    monkeypatch.setattr(inference, "precision_error", lambda *args, **kwargs: 0.1)
    assert choose_precision(fast, "bf16", ["pool2"], 0.1) == ((), 0.1, "")
    memory = Memory({("bf16", ("pool2",)): {"error": 0.1, "keep_fp32": ["conv3"], "note": "n"}})
    monkeypatch.setattr(inference, "stage_errors", no_probe)
    assert choose_precision(fast, "bf16", ["pool2"], 0.1, memory) == (("conv3",), 0.1, "n")


def test_a_remembered_check_decides_without_probing(fast, faults, monkeypatch):
    monkeypatch.setattr(inference, "stage_errors", no_probe)
    monkeypatch.setattr(inference, "precision_error", no_probe)
    passed = {"error": 0.01, "keep_fp32": ["conv2"], "note": "conv2 kept"}
    memory = Memory({("bf16", ("conv3",)): passed})
    expected = (("conv2",), 0.01, "conv2 kept")
    assert choose_precision(fast, "bf16", ["conv3"], 0.1, memory) == expected
    memory = Memory({("bf16", ("conv3",)): {"error": 0.01, "keep_fp32": []}})  # no note
    assert choose_precision(fast, "bf16", ["conv3"], 0.1, memory) == ((), 0.01, "")
    memory = Memory({("bf16", ("conv3",)): {"error": 2, "keep_fp32": [], "note": ""}})
    assert choose_precision(fast, "bf16", ["conv3"], 0.1, memory) == (
        None,
        2.0,
        "relative error 2.00e+00 exceeds the tolerance 1e-01",
    )


@pytest.mark.parametrize(
    "remembered",
    [
        {"error": "0.01", "keep_fp32": []},
        {"keep_fp32": []},
        {"error": 0.01, "keep_fp32": None},
        {"error": 0.1, "keep_fp32": None},  # at the limit: passed, but nothing to reuse
    ],
)
def test_a_remembered_check_without_a_number_or_a_list_is_measured_again(fast, faults, remembered):
    faults["conv2"] = 1.5
    memory = Memory({("bf16", ("conv3",)): remembered})
    kept, error, _ = choose_precision(fast, "bf16", ["conv3"], 0.1, memory)
    assert kept == ("conv2",) and error < ROUNDING
    assert memory.store[("bf16", ("conv3",))]["keep_fp32"] == ["conv2"]


def test_a_device_that_cannot_run_the_precision_is_fp32_with_the_first_line(fast, faults):
    def unsupported(fast, dtype, wave):
        raise RuntimeError("no kernel for this dtype\nsecond line")

    memory = Memory()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "stage_errors", unsupported)
        result = choose_precision(fast, "bf16", ["pool2"], 0.1, memory)
    assert result == (None, float("inf"), "not supported here (no kernel for this dtype)")
    assert ("put", "bf16", ("pool2",)) not in memory.calls


@pytest.mark.parametrize("check", ["choose_precision", "precision_error"])
def test_the_check_runs_on_five_second_probe_clips_or_longer_for_deep_layers(
    fast, faults, monkeypatch, check
):
    """Both checks make their probe clips at the model's rate, 5 s long or 1 s more than the
    deepest layer needs. The clips asked for are recorded and short ones handed out, so that a
    wrong length fails fast instead of running on hours of audio."""
    asked = []

    def clips(count=4, seconds=5.0, sample_rate=None):
        asked.append((count, seconds, sample_rate))
        return probe_clips(count, 1.0, RATE)

    def run(layers):
        if check == "choose_precision":
            choose_precision(fast, "bf16", layers, 0.1)
        else:
            precision_error(fast, layers, HALF)

    monkeypatch.setattr(inference, "probe_clips", clips)
    run(["pool2"])
    needs = {"pool2": RATE, "conv3": 9 * RATE}  # conv3 needs 9 s: the clips last 10
    monkeypatch.setattr(fast, "min_samples", lambda layer: needs[layer])
    run(["conv3", "pool2"])
    assert asked == [(4, 5.0, RATE), (4, 10.0, RATE)]
