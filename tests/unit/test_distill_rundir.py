"""A finished run is never overwritten without --overwrite; a damaged last.pt is one clear line
(issue 12, items 12 and 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.training.distillation import DistillConfig, distill
from soundnet_cli.training.rundir import read_metrics

from ..distill_helpers import register_tiny_student, tone_corpus
from .test_distill import FAST


@pytest.fixture
def corpus(tmp_path) -> Path:
    register_tiny_student()
    return tone_corpus(tmp_path / "corpus")


@pytest.fixture
def finished(tmp_path, corpus) -> Path:
    run = tmp_path / "run"
    distill(corpus, run, DistillConfig(steps=3, checkpoint_every=3, **FAST))
    return run


def test_a_finished_run_without_its_checkpoints_is_not_overwritten(finished, corpus):
    (finished / "checkpoints" / "last.pt").unlink()
    student = (finished / "student.safetensors").read_bytes()
    metrics = (finished / "metrics.jsonl").read_text()
    with pytest.raises(UsageProblem, match=r"already holds a run .*--overwrite"):
        distill(corpus, finished, DistillConfig(steps=2, **FAST))
    assert (finished / "student.safetensors").read_bytes() == student
    assert (finished / "metrics.jsonl").read_text() == metrics


def test_overwrite_replaces_the_run_whole(finished, corpus):
    distill(corpus, finished, DistillConfig(steps=2, **FAST), overwrite=True)
    assert [m["step"] for m in read_metrics(finished)] == [1, 2]


def test_the_cli_refuses_before_preparing_anything(finished, corpus):
    (finished / "checkpoints" / "last.pt").unlink()
    result = CliRunner().invoke(
        build_app(), ["distill", str(corpus), "--out", str(finished), "--student", "tiny-student"]
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())  # rich wraps usage errors in a box
    assert "already holds a run" in text and "--overwrite" in text
    assert not (finished / "corpus").exists()


@pytest.mark.parametrize("damage", ["empty", "missing-keys"])
def test_a_damaged_last_pt_is_one_clear_line(finished, corpus, damage):
    last = finished / "checkpoints" / "last.pt"
    if damage == "empty":
        last.write_bytes(b"")
        expected = "the file is empty"
    else:
        state = torch.load(last, weights_only=True)
        del state["optimizer"]
        torch.save(state, last)
        expected = "it lacks optimizer"
    with pytest.raises(SoundnetError, match=f"cannot resume from this checkpoint .*{expected}"):
        distill(corpus, finished, DistillConfig(steps=6, **FAST), resume=True)
