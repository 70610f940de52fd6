"""`soundnet extract` checks its settings before it makes anything (issue 24)."""

from ..conftest import tone, write_wav


def test_a_bad_precision_exits_2_and_leaves_no_folder(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    args = ["extract", str(clip.parent), "--out", str(out), "--precision", "nonsense"]
    result = run(*args, "--checkpoint", str(named_checkpoint))
    assert result.exit_code == 2, result.output
    assert "precision" in result.stderr and not out.exists()


def test_bf16_into_an_fp32_folder_is_refused_naming_the_precision(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    args = ["extract", str(clip.parent), "--out", str(out), "--checkpoint", str(named_checkpoint)]
    assert run(*args).exit_code == 0
    refused = run(*args, "--precision", "bf16")
    assert refused.exit_code == 2
    assert "precision was 'fp32', now 'bf16'" in refused.stderr and "--out" in refused.stderr
