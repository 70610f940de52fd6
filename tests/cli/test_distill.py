"""`soundnet distill`: a corpus or videos in; a student out that extract, predict, evaluate load."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.plugins import get_plugins

from ..conftest import write_wav
from ..distill_helpers import register_tiny_student, tone_corpus
from ..videos import grey_level_teacher, make_video

FAST = [
    "--crop-seconds",
    "4",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--log-every",
    "1",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    register_tiny_student()
    return tone_corpus(tmp_path / "corpus", videos=6)


def test_distill_a_corpus(run, corpus, tmp_path):
    out = tmp_path / "run"
    result = run(
        "distill", str(corpus), "--student", "tiny-student", "--out", str(out), *FAST,
        "--steps", "6", "--eval-every", "3", "--held-out", "0.34", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 6 and summary["student"] == str(out / "student.safetensors")
    assert set(summary["agreement"]) == {"tones"} and summary["chance"]["tones"] > 0
    assert (out / "checkpoints" / "last.pt").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "agreement" in json.loads(lines[2])
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["batch_size"] == 4 and config["config"]["beta1"] == 0.9
    assert config["corpus"] == str(corpus.resolve())


def test_resume_extends_a_run(run, corpus, tmp_path):
    out = tmp_path / "run"
    run("distill", str(corpus), "--student", "tiny-student", "-o", str(out), *FAST, "--steps", "2")
    result = run("distill", "--resume", str(out), "--steps", "4", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    refused = run("distill", "--resume", str(out), "--lr", "0.1")
    assert refused.exit_code == 2 and "keeps its settings" in refused.stderr
    again = run("distill", str(corpus), "--student", "tiny-student", "-o", str(out), *FAST)
    assert again.exit_code == 2 and "--resume" in again.stderr


def test_config_file_and_flags(run, corpus, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[distill]\nstudent = "tiny-student"\nlr = 0.002\nsteps = 2\nloss = "l2"\n')
    out = tmp_path / "run"
    result = run(
        "distill", str(corpus), "--config", str(toml), "-o", str(out), *FAST, "--steps", "3"
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert recorded["lr"] == 0.002 and recorded["loss"] == "l2" and recorded["steps"] == 3


def test_usage_errors(run, corpus, tmp_path):
    assert run("distill", str(corpus)).exit_code == 2
    result = run("distill", str(corpus), "-o", str(tmp_path / "r"), "--teacher", "vgg16-places")
    assert result.exit_code == 2 and "tone-teacher" in result.stderr
    result = run("distill", str(corpus), "-o", str(tmp_path / "r"), "--loss", "ce")
    assert result.exit_code == 2 and "--loss" in result.stderr
    result = run("distill", str(tmp_path / "nothing"), "-o", str(tmp_path / "r"))
    assert result.exit_code == 2 and "--teacher" in result.stderr


def test_videos_to_student_in_one_command(run, tmp_path):
    register_tiny_student()
    get_plugins().teachers.add(
        "grey-level", lambda **kw: grey_level_teacher(), description="test", plugin="test"
    )
    videos = tmp_path / "videos"
    for i in range(3):
        make_video(videos / f"v{i}.webm", 5.5, freq=300 + 100 * i)
    out = tmp_path / "run"
    result = run(
        "distill", str(videos), "--teacher", "grey-level", "--student", "tiny-student",
        "-o", str(out), "--steps", "2", "--batch-size", "2", "--workers", "0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "corpus" / "manifest.json").is_file() and (out / "student.safetensors").is_file()
    from soundnet_cli.corpus.format import Corpus

    assert len(Corpus(out / "corpus").videos) == 3


@pytest.fixture(scope="module")
def soundnet8_student(tmp_path_factory) -> Path:
    """A real SoundNet-8 distilled for two steps on a tiny corpus, exported natively."""
    from soundnet_cli.training.distillation import DistillConfig, distill

    root = tmp_path_factory.mktemp("s8")
    corpus = tone_corpus(root / "corpus", videos=3)
    config = DistillConfig(
        steps=2, batch_size=2, workers=0, device="cpu", held_out=0.0, crop_seconds=20.0
    )
    result = distill(corpus, root / "run", config)
    assert result.student is not None
    return result.student


def test_exported_student_loads_in_predict_extract_and_evaluate(run, soundnet8_student, tmp_path):
    from soundnet_cli.weights.checkpoints import read_info

    info = read_info(soundnet8_student)
    assert info.architecture == "soundnet8"
    assert [(h.name, h.categories) for h in info.heads] == [("tones", ("low", "middle", "high"))]
    assert info.provenance["steps"] == 2 and info.provenance["teachers"] == ["tone-teacher"]

    clip = write_wav(tmp_path / "clip.wav", 0.3 * np.sin(np.arange(22050 * 3) / 10))
    predicted = run("predict", str(clip), "--checkpoint", str(soundnet8_student), "--json")
    assert predicted.exit_code == 0, predicted.output
    top = json.loads(predicted.stdout)["results"][0]["summary"][0]
    assert top["head"] == "tones" and top["top"][0]["label"] in {"low", "middle", "high"}

    features = tmp_path / "features"
    extracted = run(
        "extract", str(clip), "--checkpoint", str(soundnet8_student), "--out", str(features)
    )
    assert extracted.exit_code == 0, extracted.output
    assert list(features.rglob("*.npy"))

    esc = tmp_path / "esc"
    rows = []
    for fold in range(1, 6):
        for target, category in ((0, "dog"), (1, "rain")):
            name = f"{fold}-{target}.wav"
            wave = 0.3 * np.sin(np.arange(22050 * 5) * (0.05 + 0.2 * target + 0.01 * fold))
            write_wav(esc / "audio" / name, wave)
            rows.append([name, fold, target, category, "True", f"src{fold}{target}", "A"])
    (esc / "meta").mkdir()
    with open(esc / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    evaluated = run("evaluate", "esc10", str(esc), "--checkpoint", str(soundnet8_student), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "accuracy" in evaluated.stdout


def test_help_has_examples(run):
    result = run("distill", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout
