import json

import numpy as np

from ..conftest import tone, write_wav


def test_extracts_a_folder_and_reports_json(run, named_checkpoint, tmp_path):
    write_wav(tmp_path / "in" / "a" / "x.wav", tone(2.0))
    write_wav(tmp_path / "in" / "b" / "x.wav", tone(2.0, freq=880))
    out = tmp_path / "out"
    args = [
        "extract",
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--checkpoint",
        str(named_checkpoint),
    ]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["extracted"], summary["failed"]) == (2, 2, 0)
    assert np.load(out / "a" / "x.pool5.npy").shape[1] == 256
    assert (out / "b" / "x.pool5.npy").is_file() and (out / "manifest.jsonl").is_file()
    again = run(*args)
    assert again.exit_code == 0
    assert "skipped" in again.stdout and "extracted" in again.stdout


def test_bad_files_give_exit_1_and_a_summary_naming_them(run, named_checkpoint, tmp_path):
    write_wav(tmp_path / "in" / "good.wav", tone(2.0))
    (tmp_path / "in" / "bad.wav").write_text("not audio")
    write_wav(tmp_path / "in" / "tiny.wav", tone(0.05))
    out = tmp_path / "out"
    result = run(
        "extract", str(tmp_path / "in"), "-o", str(out), "--checkpoint", str(named_checkpoint)
    )
    assert result.exit_code == 1
    assert "bad.wav" in result.stderr and "cannot read audio" in result.stderr
    assert "tiny.wav" in result.stderr and "too short" in result.stderr
    assert (out / "good.pool5.npy").is_file()
    quiet = run(
        "extract", str(tmp_path / "in"), "-o", str(out), "--checkpoint", str(named_checkpoint), "-q"
    )
    assert quiet.exit_code == 1 and quiet.stdout == ""
    assert "bad.wav" in quiet.stderr  # failures are listed even when quiet


def test_several_layers_npz_and_pooling(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(3.0))
    out = tmp_path / "out"
    result = run(
        "extract", str(clip), "-o", str(out), "--checkpoint", str(named_checkpoint),
        "-l", "conv5", "-l", "pool5", "--format", "npz", "--pool", "max", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    with np.load(out / "clip.npz") as data:
        assert data["conv5"].shape == (256,) and data["pool5"].shape == (256,)


def test_usage_errors_exit_2(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(1.0))
    base = [
        "extract",
        str(clip),
        "-o",
        str(tmp_path / "out"),
        "--checkpoint",
        str(named_checkpoint),
    ]
    assert run(*base, "--layer", "pool9").exit_code == 2
    assert run(*base, "--pool", "median").exit_code == 2
    assert run(*base, "--format", "csv").exit_code == 2
    assert run(*base, "--precision", "fp8").exit_code == 2
    missing = run(
        "extract",
        str(tmp_path / "nope"),
        "-o",
        str(tmp_path / "o"),
        "--checkpoint",
        str(named_checkpoint),
    )
    assert missing.exit_code == 2


def test_plain_model_gives_the_same_features(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(4.0))
    for name, extra in (("fast", []), ("plain", ["--plain"])):
        result = run(
            "extract",
            str(clip),
            "-o",
            str(tmp_path / name),
            "--checkpoint",
            str(named_checkpoint),
            *extra,
        )
        assert result.exit_code == 0
    fast, plain = (
        np.load(tmp_path / "fast" / "clip.pool5.npy"),
        np.load(tmp_path / "plain" / "clip.pool5.npy"),
    )
    assert np.abs(fast - plain).max() <= 1e-4 * np.abs(plain).max()


def test_threads_option_reaches_the_model(run, named_checkpoint, tmp_path, monkeypatch):
    import torch

    from soundnet_cli.students import ConvStudent

    seen: list[int] = []
    original = ConvStudent.forward_features

    def recording(self, wave, layers):
        seen.append(torch.get_num_threads())
        return original(self, wave, layers)

    monkeypatch.setattr(ConvStudent, "forward_features", recording)
    write_wav(tmp_path / "in" / "x.wav", tone(2.0))
    before = torch.get_num_threads()
    for threads in ("1", "2"):
        result = run(
            "extract",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / f"out{threads}"),
            "--checkpoint",
            str(named_checkpoint),
            "--plain",
            "--threads",
            threads,
        )
        assert result.exit_code == 0, result.stderr
        assert seen and set(seen) == {int(threads)}, seen
        seen.clear()
    assert torch.get_num_threads() == before  # restored after the run
