"""Distillation: the loss, the data (crops, tiling, a resumable sampler), training that learns,
exact resuming, and 2-process DDP on gloo matching one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.corpus.format import Corpus
from soundnet_cli.errors import UsageProblem
from soundnet_cli.training.distillation import (
    DistillConfig,
    distill,
    distill_loss,
    read_metrics,
    read_toml,
)
from soundnet_cli.training.distillation.data import CropDataset, crop_plan, split_videos
from soundnet_cli.training.distillation.train import step_frames
from soundnet_cli.training.sampler import StepSampler

from ..conftest import REPO
from ..distill_helpers import register_tiny_student, tone_corpus
from ..numeric import assert_close_to_scale

FAST = dict(
    student="tiny-student",
    crop_seconds=4.0,
    batch_size=8,
    workers=0,
    log_every=1,
    eval_every=10,
    held_out=0.25,
    device="cpu",
)


@pytest.fixture
def corpus(tmp_path) -> Path:
    register_tiny_student()
    return tone_corpus(tmp_path / "corpus")


def probs(shape, seed):
    return torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), -1)


def test_kl_is_zero_when_student_equals_teacher():
    target = probs((4, 5, 7), 0)  # (batch, time, categories)
    same = {"h": target.transpose(1, 2).log()}  # the student's (batch, categories, time)
    total, heads = distill_loss(same, {"h": target}, kind="kl", scale=250)
    assert abs(float(total)) < 1e-5 and abs(float(heads["h"])) < 1e-7
    other = {"h": probs((4, 5, 7), 1).transpose(1, 2).log()}
    total, heads = distill_loss(other, {"h": target}, kind="kl", scale=250)
    reference = torch.nn.functional.kl_div(
        other["h"].transpose(1, 2), target, reduction="none"
    ).sum(-1)  # KL per (batch, time)
    assert float(heads["h"]) == pytest.approx(float(reference.mean()), rel=1e-5)
    assert float(total) == pytest.approx(250 * float(reference.mean()), rel=1e-5)


def test_kl_averages_heads_and_handles_zero_targets():
    target = torch.zeros(2, 3, 4)
    target[..., 0] = 1.0  # one-hot: 0 log 0 must count as 0
    student = {"a": target.transpose(1, 2).clamp_min(1e-12).log(), "b": probs((2, 3, 4), 2)}
    student["b"] = student["b"].transpose(1, 2).log()
    total, heads = distill_loss(student, {"a": target, "b": target}, scale=1.0)
    assert torch.isfinite(total) and float(heads["a"]) == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx((float(heads["a"]) + float(heads["b"])) / 2)


def test_l2_variant():
    target = probs((2, 4, 6), 3)
    zero, _ = distill_loss({"h": target.transpose(1, 2).log()}, {"h": target}, kind="l2")
    assert float(zero) == pytest.approx(0.0, abs=1e-9)
    other = probs((2, 4, 6), 4)
    total, heads = distill_loss(
        {"h": other.transpose(1, 2).log()}, {"h": target}, kind="l2", scale=1.0
    )
    assert float(heads["h"]) == pytest.approx(float((other - target).pow(2).sum(-1).mean()))


def test_step_frames():
    from soundnet_cli.students import soundnet8

    model = soundnet8()
    assert step_frames(model, "conv8", 441000, 4, 5.0) == [0, 1, 2, 3]  # as the release
    many = step_frames(model, "conv8", 441000, 20, 1.0)  # 4 steps, 20 one-second frames
    assert many == [int(c) for c in model.feature("conv8").step_centres(4)]
    with pytest.raises(UsageProblem, match="too short"):
        step_frames(model, "conv8", 22050, 1, 1.0)


def test_crops_tile_short_clips_and_offset_long_ones(tmp_path, corpus):
    data = Corpus(corpus)
    plan = crop_plan(data, 8.0)  # 8 frames from 4-frame clips: tiled twice
    dataset = CropDataset(corpus, ["tones"], plan)
    wave, targets = dataset[(0, 123)]
    raw = data[0].audio.astype(np.float32) * 256 / 32768
    assert wave.shape == (8 * 22050,) and np.array_equal(wave.numpy(), np.tile(raw, 2))
    assert torch.equal(targets["tones"][:4], targets["tones"][4:])
    assert torch.allclose(targets["tones"].sum(-1), torch.ones(8))
    short = CropDataset(corpus, ["tones"], crop_plan(data, 2.0))  # 2 of 4 frames
    starts = set()
    for seed in range(30):
        wave, _ = short[(0, seed)]
        match = [
            s for s in range(3) if np.array_equal(wave.numpy(), raw[s * 22050 : (s + 2) * 22050])
        ]
        assert len(match) == 1
        starts.add(match[0])
    assert starts == {0, 1, 2}  # whole-frame offsets, all reachable
    with pytest.raises(UsageProblem, match="multiple"):
        crop_plan(data, 2.5)


def test_sampler_is_a_function_of_the_step():
    sampler = StepSampler(list(range(10)), 4, seed=7)
    first = [b for _, b in zip(range(6), sampler, strict=False)]
    resumed = StepSampler(list(range(10)), 4, seed=7, start_step=3)
    assert [b for _, b in zip(range(3), resumed, strict=False)] == first[3:]
    epoch = [clip for batch in first[:5] for clip, _ in batch][:10]  # 2.5 batches = 1 epoch
    assert sorted(epoch) == list(range(10))
    halves = [StepSampler(list(range(10)), 4, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for step in range(4):
        assert halves[0].batch(step) + halves[1].batch(step) == sampler.batch(step)
    with pytest.raises(UsageProblem, match="divisible"):
        StepSampler([1], 3, seed=0, world_size=2)


def test_held_out_split_is_by_video(corpus):
    data = Corpus(corpus)
    train, held = split_videos(data, 0.25)
    assert len(held) == 3 and len(train) == 9
    assert not {data.clips[i].video for i in train} & {data.clips[i].video for i in held}
    assert split_videos(data, 0.0)[1] == []


def test_loss_falls_and_the_student_learns(tmp_path, corpus):
    config = DistillConfig(steps=30, lr=1e-3, **FAST)  # the paper's learning rate
    result = distill(corpus, tmp_path / "run", config)
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    # steadily: the mean over each successive third decreases
    thirds = [np.mean(losses[i : i + 10]) for i in range(0, 30, 10)]
    assert thirds[0] > thirds[1] > thirds[2]
    assert result.agreement is not None and result.agreement["tones"] > result.chance["tones"]
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert {"loss", "heads", "samples_per_s", "data_wait"} <= set(metrics[0])
    assert 0 <= metrics[5]["data_wait"] <= 1 and metrics[5]["samples_per_s"] > 0
    assert "agreement" in metrics[9] and "agreement" not in metrics[8]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["lr"] == 1e-3 and recorded["config"]["loss"] == "kl"


def test_l2_training_runs(tmp_path, corpus):
    config = DistillConfig(steps=12, lr=3e-3, loss="l2", **FAST)
    losses = [loss for _, loss in distill(corpus, tmp_path / "run", config).losses]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_resume_continues_exactly(tmp_path, corpus):
    whole = distill(corpus, tmp_path / "a", DistillConfig(steps=6, checkpoint_every=3, **FAST))
    distill(corpus, tmp_path / "b", DistillConfig(steps=3, checkpoint_every=3, **FAST))
    with pytest.raises(UsageProblem, match="--resume"):
        distill(corpus, tmp_path / "b", DistillConfig(steps=6, **FAST))
    resumed = distill(
        corpus, tmp_path / "b", DistillConfig(steps=6, checkpoint_every=3, **FAST), resume=True
    )
    assert [s for s, _ in resumed.losses] == [4, 5, 6]
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[3:]]
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == list(range(1, 7))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, corpus):
    """A run killed after its step-4 checkpoint (simulated by a crash in step 6) resumes at 4."""
    config = DistillConfig(steps=8, checkpoint_every=4, **FAST)
    whole = distill(corpus, tmp_path / "a", config)
    calls = {"n": 0}

    def crash(metrics):
        calls["n"] += 1
        if metrics.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(corpus, tmp_path / "b", config, on_step=crash)
    resumed = distill(corpus, tmp_path / "b", config, resume=True)
    assert [s for s, _ in resumed.losses] == [5, 6, 7, 8]
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[4:]]
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == list(range(1, 9))


def test_config_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[distill]\nlr = 0.0005\nbatch-size = 32\nteachers = ["vgg16-places"]\n')
    config = DistillConfig.from_mapping(read_toml(path))
    assert config.lr == 0.0005 and config.batch_size == 32 and config.teachers == ("vgg16-places",)
    assert config.beta1 == 0.9 and config.steps == 100_000  # the paper's defaults otherwise
    with pytest.raises(UsageProblem, match="unknown setting"):
        DistillConfig.from_mapping({"learning_rate": 1})
    with pytest.raises(UsageProblem, match="loss"):
        DistillConfig(loss="ce").check()


DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from soundnet_cli.training.distillation import DistillConfig, distill
from tests.distill_helpers import register_tiny_student
register_tiny_student()
config = DistillConfig(steps=4, **{fast!r})
result = distill(Path({corpus!r}), Path(sys.argv[1]), config)
if result.student is not None:
    Path(sys.argv[1], "losses.json").write_text(json.dumps(result.losses))
"""


def test_two_process_ddp_matches_one_process(tmp_path, corpus):
    fast = dict(FAST, batch_size=8)
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), fast=fast, corpus=str(corpus)))
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
    # Rounding differs between 1 and 2 processes and between CPUs: every comparison is relative
    # to the values' scale (measured: 2e-4 of a weight's largest value on an AVX-512 machine).
    assert_close_to_scale([v for _, v in two], [v for _, v in one], 1e-3, "losses")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "one" / "student.safetensors"))
    b = load_file(str(tmp_path / "two" / "student.safetensors"))
    # A conv bias before BatchNorm has no effect and a zero gradient up to rounding, which Adam
    # turns into lr-sized steps: it (and the running mean that absorbs it) may differ; the rest
    # agrees, and the two students' outputs agree closely.
    free = [k for k in a if k.endswith(("conv.bias", "running_mean"))]
    for k in a:
        if k not in free:
            assert_close_to_scale(b[k], a[k], 2e-3, k)
    from soundnet_cli.weights.checkpoints import load_checkpoint

    wave = torch.randn(2, 4 * 22050, generator=torch.Generator().manual_seed(0)) * 50
    with torch.inference_mode():
        out_one = load_checkpoint(tmp_path / "one" / "student.safetensors")(wave)["tones"]
        out_two = load_checkpoint(tmp_path / "two" / "student.safetensors")(wave)["tones"]
    assert_close_to_scale(out_two, out_one, 2e-3, "log-probabilities")
