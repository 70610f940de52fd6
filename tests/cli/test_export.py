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


def test_heads_on_a_model_without_heads_is_a_usage_error(run, tmp_path, monkeypatch):
    from soundnet_cli.export import module

    monkeypatch.setattr(module, "_conv_student", lambda model: None)
    result = run("export", "--student", "soundnet5", "--heads", "-o", str(tmp_path / "m.pt"))
    assert result.exit_code == 2
    assert "no output heads to export" in result.stderr
