"""soundnet_cli.training.finetune on a tiny labelled set (tones against noise): the network,
the run folder the distillation loop keeps, exact resume, and the exported classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.errors import UsageProblem
from soundnet_cli.training.finetune import (
    FinetuneConfig,
    finetune,
    labels_task,
    resume_settings,
)
from soundnet_cli.training.finetune.model import build_model
from soundnet_cli.training.rundir import read_metrics

from ..conftest import write_wav

# small and quick: SoundNet-5 from scratch, classifier on pool1, half-second crops
FAST = dict(
    init="scratch",
    student="soundnet5",
    layer="pool1",
    batch_size=4,
    crop_seconds=0.5,
    log_every=1,
    lr=3e-3,
    workers=1,
    threads=1,
    device="cpu",
)


@pytest.fixture
def sounds(tmp_path: Path) -> tuple[Path, Path]:
    """Ten 0.6-s clips, tones and noise; fold 1 (one of each) is the test fold."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    rows = ["path,label,fold"]
    t = np.arange(int(0.6 * 22050)) / 22050
    for i in range(10):
        label = "tone" if i % 2 == 0 else "noise"
        if label == "tone":
            wave = 0.5 * np.sin(2 * np.pi * (300 + 40 * i) * t)
        else:
            wave = 0.3 * rng.standard_normal(len(t))
        write_wav(folder / f"{label}{i}.wav", wave.astype(np.float32))
        rows.append(f"{label}{i}.wav,{label},{1 if i < 2 else 2}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels


def test_task_from_a_labels_file(sounds):
    folder, labels = sounds
    task = labels_task(folder, labels, "1")
    assert task.classes == ("noise", "tone") and task.head == "classes"
    assert len(task.train) == 8 and len(task.test) == 2
    assert {Path(p).name for p, _ in task.test} == {"tone0.wav", "noise1.wav"}
    assert len(labels_task(folder, labels).train) == 10
    with pytest.raises(UsageProblem, match="no row has fold '7'"):
        labels_task(folder, labels, "7")


def test_network_is_the_student_cut_at_the_layer_with_pretrained_weights(sounds, monkeypatch):
    from soundnet_cli import models
    from soundnet_cli.students import soundnet8

    torch.manual_seed(3)
    pretrained = soundnet8()
    monkeypatch.setattr(models, "load_student", lambda *a, **k: pretrained)
    task = labels_task(*sounds)
    model = build_model(FinetuneConfig(layer="conv3"), task)
    assert model.architecture == "classifier:soundnet8@conv3"
    assert model.layer_names == ["conv1", "pool1", "conv2", "pool2", "conv3", "classifier"]
    assert model.head_specs[0].categories == ("noise", "tone")
    for name in ("conv1", "conv3"):
        assert torch.equal(model.blocks[name].conv.weight, pretrained.blocks[name].conv.weight)
        assert torch.equal(
            model.blocks[name].bn.running_var, pretrained.blocks[name].bn.running_var
        )
    scratch = build_model(FinetuneConfig(init="scratch", layer="conv3"), task)
    assert not torch.equal(
        scratch.blocks["conv1"].conv.weight, pretrained.blocks["conv1"].conv.weight
    )
    with pytest.raises(UsageProblem, match="freeze below must be auto, none or a layer"):
        build_model(FinetuneConfig(init="scratch", layer="conv3", freeze_below="conv7"), task)


def test_training_learns_and_leaves_a_loadable_classifier(sounds, tmp_path):
    from soundnet_cli.media.audio import load_audio
    from soundnet_cli.models import load_student
    from soundnet_cli.students.predict import predict_waveform

    folder, labels = sounds
    task = labels_task(folder, labels, "1")
    result = finetune(task, tmp_path / "run", FinetuneConfig(epochs=12, **FAST))
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 12 * 2
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert result.train_accuracy == 1.0 and result.accuracy == 1.0
    summary = result.as_dict()
    assert summary["folds"] == [{"fold": "1", "test_accuracy": 1.0, "clips": 2}]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["init"] == "scratch" and config["task"]["classes"] == ["noise", "tone"]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert "test" in metrics[-1]["agreement"]  # what `visualize curves` plots
    model = load_student(run / "model.safetensors")
    assert model.architecture == "classifier:soundnet5@pool1"
    assert model.checkpoint_info.provenance["source"] == "soundnet finetune"
    prediction = predict_waveform(model, load_audio(folder / "tone0.wav"), top_k=1)
    assert prediction.summary[0].labels == ["tone"]


def test_freezing_keeps_the_lower_layers(sounds, tmp_path):
    task = labels_task(*sounds)
    config = FinetuneConfig(epochs=1, freeze_below="conv2", **(FAST | {"layer": "pool2"}))
    torch.manual_seed(0)
    before = build_model(config, task).state_dict()
    finetune(task, tmp_path / "run", config)
    after = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(before["blocks.conv1.conv.weight"], after["blocks.conv1.conv.weight"])
    assert torch.equal(
        before["blocks.conv1.bn.running_mean"], after["blocks.conv1.bn.running_mean"]
    )
    assert not torch.equal(before["blocks.conv2.conv.weight"], after["blocks.conv2.conv.weight"])


def test_a_killed_run_resumes_exactly(sounds, tmp_path):
    """Killed in step 5 (after the step-4 checkpoint), the run continues from step 4 and ends
    with the weights and losses of an uninterrupted run."""
    task = labels_task(*sounds, "1")
    config = FinetuneConfig(epochs=4, **FAST)
    whole = finetune(task, tmp_path / "a", config)

    def crash(metrics):
        if metrics.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(task, tmp_path / "b", config, on_step=crash)
    with pytest.raises(UsageProblem, match="--resume"):
        finetune(task, tmp_path / "b", config)
    task_b, config_b = resume_settings(tmp_path / "b", {"log_every": 1})
    resumed = finetune(task_b, tmp_path / "b", config_b, resume=True)
    assert [s for s, _ in resumed.losses] == [5, 6, 7, 8]
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[4:]]
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == list(range(1, 9))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageProblem, match="keeps its settings"):
        resume_settings(tmp_path / "b", {"lr": 0.1})


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageProblem, match="init must be one of"):
        FinetuneConfig(init="random").check()
    with pytest.raises(UsageProblem, match="goes with init 'pretrained'"):
        FinetuneConfig(init="scratch", checkpoint="x.safetensors").check()
    with pytest.raises(UsageProblem, match="unknown setting 'epoch'"):
        FinetuneConfig.from_mapping({"epoch": 3})


def test_classifier_students_keep_the_student_contract():
    from soundnet_cli import testing
    from soundnet_cli.plugins import get_plugins

    testing.check_registered_student("classifier:")  # the family's default variant
    for name in ("classifier:soundnet8@pool5", "classifier:soundnet5@conv2"):
        model = get_plugins().students.create(name)
        testing.check_student(model, architecture=name)
        assert model.layer_names[-1] == "classifier"
    with pytest.raises(UsageProblem, match="classifier:<student>@<layer>"):
        get_plugins().students.create("classifier:soundnet8")
    with pytest.raises(UsageProblem, match="no body layer 'conv8'"):
        get_plugins().students.create("classifier:soundnet8@conv8")


DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from soundnet_cli.training.finetune import FinetuneConfig, finetune, labels_task
task = labels_task(Path({folder!r}), Path({labels!r}), "1")
result = finetune(task, Path(sys.argv[1]), FinetuneConfig(epochs=2, **{fast!r}))
if result.model is not None:
    Path(sys.argv[1], "losses.json").write_text(json.dumps(result.losses))
"""


def test_two_process_ddp_matches_one_process(sounds, tmp_path):
    """Under torchrun each process takes half of every batch (BatchNorm over the whole batch):
    the losses and weights follow those of one process, up to rounding."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from ..conftest import REPO
    from ..numeric import assert_close_to_scale

    folder, labels = sounds
    script = tmp_path / "train.py"
    fast = dict(FAST, threads=None)
    script.write_text(
        DDP_SCRIPT.format(repo=str(REPO), folder=str(folder), labels=str(labels), fast=fast)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env)
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", str(script), str(tmp_path / "two"),
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert [s for s, _ in two] == [1, 2, 3, 4]
    assert_close_to_scale([v for _, v in two], [v for _, v in one], 1e-3, "losses")
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    # as in distill's test: a conv bias before BatchNorm (and the running mean absorbing it) is
    # free up to rounding, which Adam turns into lr-sized steps
    for k in a:
        if not k.endswith(("conv.bias", "running_mean")):
            assert_close_to_scale(b[k], a[k], 2e-3, k)
