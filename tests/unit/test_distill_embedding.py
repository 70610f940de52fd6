"""Embedding heads in distillation: InfoNCE over the global batch with a learnt temperature,
cosine distance, mixed KL + embedding runs that learn, resume exactly and match between 1 and
2 DDP processes, and the exported checkpoint's embedding head."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.errors import UsageProblem
from soundnet_cli.runtime import World
from soundnet_cli.students.embedding import frame_weights, read_embedding_heads
from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics
from soundnet_cli.training.distillation.losses import embedding_loss, info_nce

from ..conftest import REPO
from ..distill_helpers import class_vectors, mixed_corpus, register_tiny_student
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
    embedding_layer="pool2",
)


@pytest.fixture
def corpus(tmp_path) -> Path:
    register_tiny_student()
    return mixed_corpus(tmp_path / "corpus")


def unit(shape, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=-1)


def single() -> World:
    from soundnet_cli.runtime import world_from_env

    return world_from_env()


def test_info_nce_is_clips_symmetric_cross_entropy():
    s, t = unit((6, 5), 0), unit((6, 5), 1)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = info_nce(s, t, scale, single())
    logits = (1 / 0.07) * s @ t.T
    expected = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert scale.grad is not None and float(scale.grad) != 0  # the temperature is learnt
    # the right pairs give a lower loss than shuffled ones
    assert float(info_nce(t, t, scale, single())) < float(loss)


def test_cosine_option_and_unknown_loss():
    s = unit((2, 3, 4), 0)
    assert float(embedding_loss("cosine", s, s, torch.tensor(0.0), single())) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(embedding_loss("cosine", s, -s, torch.tensor(0.0), single())) == pytest.approx(2)
    with pytest.raises(UsageProblem, match="embedding loss must be one of") as refused:
        DistillConfig(embedding_loss="mse")
    assert refused.value.parameter == "embedding_loss"


def test_frame_weights_average_the_steps_of_each_interval():
    w = frame_weights([0.1, 0.4, 0.6, 1.2, 1.9], 1.0, 3).numpy()
    assert np.allclose(w[:, 0], [1 / 3, 1 / 3, 1 / 3, 0, 0])
    assert np.allclose(w[:, 1], [0, 0, 0, 0.5, 0.5])
    assert np.allclose(w[:, 2], [0, 0, 0, 0, 1])  # no step of its own: the nearest


def test_mixed_run_learns_both_heads_and_exports_the_embedding_head(tmp_path, corpus):
    config = DistillConfig(steps=30, head_weights={"vec": 2.0}, **FAST)
    result = distill(corpus, tmp_path / "run", config)
    losses = [loss for _, loss in result.losses]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    metrics = read_metrics(tmp_path / "run")
    assert set(metrics[0]["heads"]) == {"tones", "vec"}
    assert result.agreement["tones"] > result.chance["tones"]
    assert result.agreement["vec"] > 0.6  # top-1 retrieval among 3 classes
    assert -1 <= result.agreement["vec-cosine"] <= 1
    assert set(result.chance) == {"tones"}
    heads = read_embedding_heads(result.student)
    assert list(heads) == ["vec"]
    spec = heads["vec"].spec
    assert (spec.layer, spec.size, spec.teacher) == ("pool2", 8, "vec-teacher")
    from soundnet_cli.weights.checkpoints import load_checkpoint

    student = load_checkpoint(result.student)  # the student itself loads as before
    wave = torch.from_numpy(np.sin(np.arange(4 * 22050) * 2 * np.pi * 220 / 22050) * 80)
    with torch.inference_mode():
        tap = student.forward_features(wave[None].float(), ["pool2"])["pool2"]
        vector = heads["vec"].span_vectors(tap, torch.full((tap.shape[-1], 1), 1 / tap.shape[-1]))
    cosines = class_vectors() @ vector[0, 0].numpy()
    assert int(np.argmax(cosines)) == 0  # the 220 Hz tone is class 0's vector


def test_embedding_only_run_with_cosine_loss(tmp_path):
    register_tiny_student()
    corpus = mixed_corpus(tmp_path / "corpus", posteriors=False)
    config = DistillConfig(steps=10, embedding_loss="cosine", **FAST)
    result = distill(corpus, tmp_path / "run", config)
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < losses[0]
    assert list(read_embedding_heads(result.student)) == ["vec"]


def test_mixed_run_resumes_exactly_after_a_kill(tmp_path, corpus):
    config = DistillConfig(steps=8, checkpoint_every=4, **FAST)
    whole = distill(corpus, tmp_path / "a", config)

    def crash(metrics):
        if metrics.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(corpus, tmp_path / "b", config, on_step=crash)
    resumed = distill(corpus, tmp_path / "b", config, resume=True)
    assert [s for s, _ in resumed.losses] == [5, 6, 7, 8]
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[4:]]
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("logit_scale.") for k in a["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # as the in-process runs it is compared with
sys.path.insert(0, {repo!r})
from soundnet_cli.training.distillation import DistillConfig, distill
from tests.distill_helpers import register_tiny_student
register_tiny_student()
def die(metrics):
    if metrics.step == 6:
        os.kill(os.getpid(), signal.SIGKILL)
distill(Path({corpus!r}), Path(sys.argv[1]), DistillConfig(steps=8, checkpoint_every=4, **{fast!r}),
        on_step=die)
"""


def test_mixed_run_killed_with_sigkill_resumes(tmp_path, corpus):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), fast=FAST, corpus=str(corpus)))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "b")], timeout=300)
    assert done.returncode == -9
    config = DistillConfig(steps=8, checkpoint_every=4, **FAST)
    # One thread here as in the killed process: exactness is per thread count (reduction order),
    # and earlier tests may have left this process another.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = distill(corpus, tmp_path / "a", config)
        resumed = distill(corpus, tmp_path / "b", config, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[4:]]


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


def test_mixed_two_process_ddp_matches_one_process(tmp_path, corpus):
    """InfoNCE's negatives are the global batch: 2 ranks of 4 clips see the 8 clips' vectors,
    and the gradients through the gather make them train as 1 process on 8 clips."""
    fast = dict(FAST, batch_size=8, head_weights={"vec": 5.0})
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
    assert_close_to_scale([v for _, v in two], [v for _, v in one], 1e-3, "losses")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "one" / "student.safetensors"))
    b = load_file(str(tmp_path / "two" / "student.safetensors"))
    free = [k for k in a if k.endswith(("conv.bias", "running_mean"))]
    for k in a:
        if k not in free:
            assert_close_to_scale(b[k], a[k], 2e-3, k)
    assert any(k.startswith("embedding.vec.") for k in a)
