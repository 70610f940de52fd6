import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated


def test_torchscript_export_reports_outputs_and_error_as_json(run, named_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    result = run(
        "export", "--checkpoint", str(named_checkpoint), "--layer", "conv3", "--heads",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "torchscript" and summary["path"] == str(out)
    assert [o["name"] for o in summary["outputs"]] == ["conv3", "objects", "scenes"]
    assert summary["outputs"][1]["shape"] == ["batch", 3, "time"]
    assert summary["verified"] and 0 <= summary["max_relative_error"] < 1e-4
    assert set(summary["relative_error"]) == {"conv3", "objects", "scenes"}
    assert summary["size_bytes"] == out.stat().st_size > 0


def test_table_shows_each_output_and_the_largest_error(run, named_checkpoint, tmp_path):
    out = tmp_path / "model.ts"
    result = run("export", "--checkpoint", str(named_checkpoint), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "pool5" in result.stdout and "(batch, 256, time)" in result.stdout
    assert "largest relative error against PyTorch" in result.stdout


def test_no_verify_says_so(run, named_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    result = run("export", "--checkpoint", str(named_checkpoint), "-o", str(out), "--no-verify")
    assert result.exit_code == 0, result.stderr
    assert "not verified" in result.stdout and out.is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "model.bin"], "'--format' / '-f': cannot tell the export format"),
        (["--out", "m.onnx", "--format", "tflite"], "'--format' / '-f': the export format must"),
        (["--out", "m.pt", "--layer", "conv9"], "no layer 'conv9'"),
    ],
)
def test_bad_options_are_usage_errors(run, named_checkpoint, args, message):
    result = run("export", "--checkpoint", str(named_checkpoint), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.replace("│", " ").split())


HEADLESS_PLUGIN = """
import torch
import soundnet_cli
from soundnet_cli.students import FeatureInfo, StudentBase


class Frames(StudentBase):
    \"\"\"A student with one feature tap (frame statistics) and no output heads.\"\"\"

    architecture = "frames"
    feature_info = [FeatureInfo("stats", 2, 2205, 4410, 0)]
    default_layer = "stats"

    def output_length(self, layer, samples):
        return max(0, (samples - 4410) // 2205 + 1)

    def min_samples(self, layer):
        return 4410

    def forward_features(self, wave, layers):
        batch, layers = self.forward_inputs(wave, layers)
        frames = batch.unfold(-1, 4410, 2205)
        return {"stats": torch.stack([frames.mean(-1), frames.std(-1)], 1)}


@soundnet_cli.hookimpl
def register_students(register):
    register("frames", lambda heads=None: Frames(), description="no heads")
"""


def test_heads_on_a_model_without_heads_is_a_usage_error(run, tmp_path, monkeypatch):
    """A real student without output heads (a plugin's, registered here), not a mocked check."""
    from soundnet_cli import testing

    (tmp_path / "soundnet_headless.py").write_text(HEADLESS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with testing.with_plugin("soundnet_headless", "headless"):
        result = run("export", "--student", "frames", "--heads", "-o", str(tmp_path / "m.pt"))
        assert result.exit_code == 2, (result.stdout, result.stderr)
        assert "frames has no output heads to export" in result.stderr
        # the same student exports its layer: the refusal is about the heads alone
        result = run("export", "--student", "frames", "-o", str(tmp_path / "m.pt"))
        assert result.exit_code == 0, result.stderr
