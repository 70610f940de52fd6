"""soundnet_cli.export on a randomly initialised SoundNet-8: the written ONNX and TorchScript
files, run in their own runtimes, give the student's forward_features for any batch and length.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.errors import LayerError, UsageProblem
from soundnet_cli.export import ExportError, export_model, format_for, read_metadata

CATEGORIES = {"objects": ("cat", "dog", "bird"), "scenes": ("beach", "forest")}


@pytest.fixture(scope="module")
def student():
    """SoundNet-8 with small named heads and non-trivial BatchNorm statistics (a fresh model's
    are 0 and 1, which would hide a scaling or normalisation mistake)."""
    from soundnet_cli.students import HeadSpec, soundnet8

    torch.manual_seed(0)
    model = soundnet8(heads=tuple(HeadSpec(n, len(c), c) for n, c in CATEGORIES.items()))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.05, 0.05)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def noise(batch: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, samples)).astype(np.float32)


def expected(
    student, wave: np.ndarray, layers: list[str], heads: bool = False
) -> dict[str, np.ndarray]:
    """What the student itself gives for the scaled waveform (and its heads' probabilities)."""
    x = torch.from_numpy(wave) * 256
    with torch.no_grad():
        taps = student.forward_features(x, layers)
        probs = {name: lp.exp() for name, lp in student(x).items()} if heads else {}
    return {k: v.numpy() for k, v in {**taps, **probs}.items()}


def relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def onnx_file(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "student.onnx"
    result = export_model(student, out, layers=["pool5", "conv7"], heads=True)
    return out, result


@pytest.fixture(scope="module")
def torchscript_file(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "student.pt"
    result = export_model(student, out, layers=["conv2", "pool5"])
    return out, result


def test_onnx_outputs_equal_forward_features_for_any_batch_and_length(student, onnx_file):
    import onnxruntime as ort

    path, result = onnx_file
    assert result.format == "onnx" and result.plan.names == ["pool5", "conv7", "objects", "scenes"]
    assert 0 <= result.max_error < 1e-4  # the export's own check ran
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (signature,) = session.get_inputs()
    assert signature.name == "waveform" and signature.shape == ["batch", "samples"]
    assert [o.name for o in session.get_outputs()] == result.plan.names
    for batch, samples, seed in ((1, 215_000, 1), (4, 240_017, 2)):
        wave = noise(batch, samples, seed)
        outputs = dict(zip(result.plan.names, session.run(None, {"waveform": wave}), strict=True))
        reference = expected(student, wave, ["pool5", "conv7"], heads=True)
        for name, ours in outputs.items():
            assert ours.shape == reference[name].shape
            assert ours.shape[0] == batch
            assert relative(ours, reference[name]) < 1e-4, name
        np.testing.assert_allclose(outputs["objects"].sum(axis=1), 1.0, rtol=1e-5)


def test_onnx_file_describes_its_outputs(student, onnx_file):
    path, _ = onnx_file
    meta = read_metadata(path)
    assert meta["architecture"] == "soundnet8"
    assert meta["input"]["sample_rate"] == 22050 and meta["input"]["range"] == [-1.0, 1.0]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["pool5"]["shape"] == ["batch", 256, "time"]
    assert outputs["pool5"]["stride"] == 8192 == student.feature("pool5").stride
    assert outputs["conv7"]["receptive_field"] == student.feature("conv7").receptive_field
    assert tuple(outputs["scenes"]["categories"]) == CATEGORIES["scenes"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_returns_named_outputs(student, torchscript_file):
    path, result = torchscript_file
    assert result.format == "torchscript" and result.max_error < 1e-4
    module = torch.jit.load(str(path))
    for batch, samples in ((1, 5000), (3, 66_151)):
        wave = noise(batch, samples, samples)
        with torch.no_grad():
            outputs = module(torch.from_numpy(wave))
        reference = expected(student, wave, ["conv2", "pool5"])
        assert set(outputs) == {"conv2", "pool5"}
        for name, ours in outputs.items():
            assert tuple(ours.shape) == reference[name].shape
            assert relative(ours.numpy(), reference[name]) < 1e-4
    assert read_metadata(path)["outputs"][0]["name"] == "conv2"


def test_default_output_is_the_default_layer(student, tmp_path):
    result = export_model(student, tmp_path / "m.ts", check=False)
    assert result.plan.names == ["pool5"] and result.errors == {}


def test_bad_requests_are_usage_errors(student, tmp_path):
    with pytest.raises(LayerError, match="no layer 'pool9'"):
        export_model(student, tmp_path / "m.onnx", layers=["pool9"])
    with pytest.raises(UsageProblem, match="cannot tell the export format"):
        format_for(tmp_path / "m.bin")
    with pytest.raises(UsageProblem, match="export format must be one of"):
        format_for(tmp_path / "m.onnx", "tflite")
    assert format_for("m.onnx") == "onnx" and format_for("m.ts") == "torchscript"
    assert not list(tmp_path.iterdir())


def test_a_file_that_disagrees_with_pytorch_is_not_written(student, tmp_path, monkeypatch):
    import soundnet_cli.export as export

    target = tmp_path / "m.pt"
    target.write_bytes(b"previous")
    monkeypatch.setattr(export, "verify", lambda *a, **k: {"pool5": 0.5})
    with pytest.raises(ExportError, match="pool5 has a relative error of 5.00e-01"):
        export_model(student, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_onnx_without_onnxscript_says_what_to_install(student, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"soundnet-cli\[onnx\]"):
        export_model(student, tmp_path / "m.onnx")
    assert not Path(tmp_path / "m.onnx").exists()
