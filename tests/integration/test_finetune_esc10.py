"""`soundnet finetune` from the official SoundNet-8 on real ESC-10 (fold 1 held out), briefly:
two epochs already classify far above chance, and the model it writes is an ordinary checkpoint
that `predict` (with the ESC-10 class names) and `extract` take. The full 20-epoch run and its
accuracy are on docs/reproduce.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.cli.main import build_app

from ..conftest import SHARED_DATA
from .conftest import esc_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(), list(args), catch_exceptions=False)


def test_two_epochs_on_esc10_and_the_model_serves_predict_and_extract(run, official_home, tmp_path):
    rows = [r for r in esc_rows("esc10") if r["esc10"] == "True"]
    classes = sorted({r["category"] for r in rows})
    result = run(
        "finetune", "esc10", str(SHARED_DATA / "esc10"), "--test-fold", "1",
        "--epochs", "2", "--out", "run", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["classes"] == classes and summary["test_clips"] == 80
    assert summary["train_clips"] == 320 and summary["steps"] == 40
    assert summary["frozen"] == ["conv1", "pool1", "conv2", "pool2"]
    assert summary["test_accuracy"] >= 0.6  # chance is 0.1

    clip = next(r for r in rows if r["fold"] == "1")
    predicted = run("predict", clip["path"], "--checkpoint", "run/model.safetensors", "--json")
    assert predicted.exit_code == 0, predicted.stderr
    (item,) = json.loads(predicted.stdout)["results"]
    head = item["summary"][0]
    assert head["head"] == "esc10" and {t["label"] for t in head["top"]} <= set(classes)

    extracted = run(
        "extract", clip["path"], "--checkpoint", "run/model.safetensors", "-l", "pool5",
        "-l", "classifier", "--out", "features", "--json",
    )  # fmt: skip
    assert extracted.exit_code == 0, extracted.stderr
    stem = Path("features") / Path(clip["filename"]).stem
    logits = np.load(f"{stem}.classifier.npy")
    assert logits.shape[1] == len(classes) and np.load(f"{stem}.pool5.npy").shape[1] == 256
