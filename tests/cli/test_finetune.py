import json
from pathlib import Path

import numpy as np
import pytest

from ..conftest import write_wav

FAST = [
    "--init", "scratch", "--student", "soundnet5", "--layer", "pool1", "--batch-size", "4",
    "--crop-seconds", "0.5", "--workers", "1", "--threads", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture
def sounds(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    t = np.arange(int(0.6 * 22050)) / 22050
    rows = ["filename,category,fold"]
    for i in range(8):
        label = "tone" if i % 2 else "noise"
        wave = np.sin(2 * np.pi * (250 + 50 * i) * t) / 2 if i % 2 else rng.normal(0, 0.3, len(t))
        write_wav(tmp_path / "audio" / f"{i}.wav", wave.astype(np.float32))
        rows.append(f"{i}.wav,{label},{1 if i < 2 else 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "audio", tmp_path / "labels.csv"


def test_labels_form_writes_the_run_and_a_json_summary(run, sounds, tmp_path):
    audio, labels = sounds
    out = tmp_path / "run"
    result = run(
        "finetune", str(audio), "--labels", str(labels), "--test-fold", "1", "--out", str(out),
        "--epochs", "2", "--json", *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["noise", "tone"] and summary["init"] == "scratch"
    assert summary["layer"] == "pool1" and summary["steps"] == 2 * 2
    assert summary["train_clips"] == 6 and summary["test_clips"] == 2
    assert summary["folds"][0]["fold"] == "1"
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["model"] == str(out / "model.safetensors")
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoints" / "last.pt").is_file()


def test_resumed_run_takes_only_harmless_options(run, sounds, tmp_path):
    audio, labels = sounds
    out = tmp_path / "run"
    first = run("finetune", str(audio), "--labels", str(labels), "-o", str(out), *FAST)
    assert first.exit_code == 0, first.stderr
    assert "no test clips" in first.stdout and "model.safetensors" in first.stdout
    again = run("finetune", str(audio), "--labels", str(labels), "-o", str(out), *FAST)
    assert again.exit_code == 2 and "--resume" in again.stderr
    changed = run("finetune", "--resume", str(out), "--lr", "0.1")
    assert changed.exit_code == 2 and "keeps its settings" in changed.stderr
    both = run("finetune", str(audio), "--resume", str(out))
    assert both.exit_code == 2 and "continues a run" in both.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["esc10", "--out", "r"], "give the folder of 'esc10'"),
        (["nosuchset", "/tmp", "--out", "r"], "unknown dataset 'nosuchset'"),
        (["--out", "r"], "give a DATASET and its ROOT"),
    ],
)
def test_usage_errors(run, args, message):
    result = run("finetune", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_init_is_checked(run, sounds, tmp_path):
    audio, labels = sounds
    result = run(
        "finetune", str(audio), "--labels", str(labels), "-o", str(tmp_path / "r"),
        "--init", "imagenet",
    )  # fmt: skip
    assert (
        result.exit_code == 2
        and "'--init': init must be one of pretrained, scratch" in result.stderr
    )


def test_test_accuracy_is_measured_on_the_test_clips(run, tmp_path):
    """Mutation guarded: `finetune` reporting training accuracy as test accuracy. The test fold
    holds the three training clips again, each under the other label, so whatever the model
    learnt, test accuracy is 1 - training accuracy (and three clips never give 0.5)."""
    rng = np.random.default_rng(2)
    t = np.arange(int(0.6 * 22050)) / 22050
    train = [
        ("noise", rng.normal(0, 0.3, len(t))),
        ("tone", np.sin(2 * np.pi * 300 * t) / 2),
        ("tone", np.sin(2 * np.pi * 450 * t) / 2),
    ]
    rows = ["filename,category,fold"]
    for i, (label, wave) in enumerate(train):
        write_wav(tmp_path / "audio" / f"train{i}.wav", wave.astype(np.float32))
        write_wav(tmp_path / "audio" / f"test{i}.wav", wave.astype(np.float32))
        flipped = "tone" if label == "noise" else "noise"
        rows += [f"train{i}.wav,{label},2", f"test{i}.wav,{flipped},1"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = run(
        "finetune", str(tmp_path / "audio"), "--labels", str(tmp_path / "labels.csv"),
        "--test-fold", "1", "--out", str(tmp_path / "run"), "--epochs", "2", "--json", *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train_clips"] == 3 and summary["test_clips"] == 3
    assert summary["train_accuracy"] in (0.0, 0.3333, 0.6667, 1.0)
    assert summary["test_accuracy"] == pytest.approx(1 - summary["train_accuracy"], abs=1e-4)
    assert summary["folds"][0]["test_accuracy"] == summary["test_accuracy"]
