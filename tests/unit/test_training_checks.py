"""What training refuses and does once (issues 24 and 25): a loss that is not finite stops the
run naming the step and the last good checkpoint; settings that no run can use are refused in
one line; a config file's teachers survive; the run folder is claimed and the config checked
once; a pickle ``last.pt`` is not a soundnet checkpoint."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.runtime import World
from soundnet_cli.training import rundir
from soundnet_cli.training.distillation import DistillConfig, distill, new_config, prepare_source
from soundnet_cli.training.finetune import FinetuneConfig, finetune, labels_task
from soundnet_cli.training.loop import Schedule, TrainingError, run_loop

from ..distill_helpers import register_tiny_student, tone_corpus
from .test_distill import FAST
from .test_finetune import FAST as FINETUNE_FAST
from .test_finetune import sounds  # noqa: F401  (a fixture)

NAN_AT = 3  # the step whose loss is NaN


@pytest.fixture
def corpus(tmp_path) -> Path:
    register_tiny_student()
    return tone_corpus(tmp_path / "corpus", videos=6)


def nan_from(step: int, compute):
    """``compute`` whose loss turns NaN from its ``step``-th call on."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        loss, parts = compute(*args, **kwargs)
        return (loss * math.nan, parts) if calls["n"] >= step else (loss, parts)

    return wrapped


# -- a loss that is not finite --------------------------------------------------------------------
def test_the_loop_stops_on_a_nan_loss_naming_the_step_and_the_last_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def compute(batch):
        loss = model(batch).pow(2).mean()
        return loss, {"head": loss}

    batches = iter(lambda: torch.ones(4, 2), None)
    with pytest.raises(TrainingError) as caught:
        run_loop(
            run_dir=tmp_path,
            model=model,
            optimizer=optimizer,
            batches=batches,
            compute_loss=nan_from(NAN_AT, compute),
            schedule=Schedule(10, 1, 100, 2, 4),
            start=0,
            world=World(0, 1, 0),
            device="cpu",
            settings={"seed": 0},
        )
    message = str(caught.value)
    assert "\n" not in message
    assert f"at step {NAN_AT}" in message and "nan" in message
    assert f"{tmp_path / rundir.LAST} (step 2)" in message
    # the checkpoint on disk is the good one of step 2, not the NaN step's
    assert torch.load(tmp_path / rundir.LAST, weights_only=True)["step"] == 2
    assert [m["step"] for m in rundir.read_metrics(tmp_path)] == [1, 2]


def test_the_loop_says_when_no_checkpoint_was_saved_yet(tmp_path):
    model = torch.nn.Linear(2, 1)

    def compute(batch):
        loss = model(batch).sum() * math.inf
        return loss, {}

    with pytest.raises(TrainingError, match="at step 1; .*no checkpoint was saved yet"):
        run_loop(
            run_dir=tmp_path,
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            batches=iter(lambda: torch.ones(1, 2), None),
            compute_loss=compute,
            schedule=Schedule(5, 1, 100, 2, 1),
            start=0,
            world=World(0, 1, 0),
            device="cpu",
            settings={},
        )


def test_distill_stops_on_a_nan_loss_and_exports_nothing(tmp_path, corpus, monkeypatch):
    from soundnet_cli.training.distillation import train

    monkeypatch.setattr(train, "distill_loss", nan_from(NAN_AT, train.distill_loss))
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=f"at step {NAN_AT}; .*last.pt \\(step 2\\)"):
        distill(corpus, run, DistillConfig(steps=6, checkpoint_every=2, **FAST))
    assert not (run / train.STUDENT).exists()


def test_finetune_stops_on_a_nan_loss(tmp_path, sounds, monkeypatch):  # noqa: F811
    folder, labels = sounds
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _nan_cross_entropy(real))
    run = tmp_path / "run"
    # 8 training clips in batches of 4: 2 steps an epoch, a checkpoint each epoch
    with pytest.raises(TrainingError, match=f"at step {NAN_AT}; .*last.pt \\(step 2\\)"):
        finetune(labels_task(folder, labels, "1"), run, FinetuneConfig(epochs=3, **FINETUNE_FAST))
    assert not (run / "model.safetensors").exists()


def _nan_cross_entropy(real):
    calls = {"n": 0}

    def cross_entropy(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls["n"] >= NAN_AT else loss

    return cross_entropy


# -- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("lr", math.nan, "lr must be a finite number, not nan"),
        ("lr", math.inf, "lr must be a finite number, not inf"),
        ("lr", 0.0, "lr must be above 0, not 0"),
        ("lr", -1e-3, "lr must be above 0"),
        ("kl_scale", 0.0, "kl scale must be above 0, not 0"),
        ("kl_scale", -250.0, "kl scale must be above 0"),
        ("kl_scale", math.nan, "kl scale must be a finite number"),
        ("kl_scale", -math.inf, "kl scale must be a finite number"),
        ("crop_seconds", math.nan, "crop seconds must be a finite number"),
        ("beta1", 1.0, "beta1 must be below 1"),
    ],
)
def test_distill_settings_no_run_can_use_are_refused(setting, value, message):
    with pytest.raises(UsageProblem, match=message) as refused:
        DistillConfig(**{setting: value})
    assert refused.value.parameter == setting  # the CLI names its flag from it
    with pytest.raises(UsageProblem, match=message):
        new_config({setting: value})


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("lr", math.nan, "lr must be a finite number"),
        ("lr", 0.0, "lr must be above 0"),
        ("body_lr", math.inf, "body lr must be a finite number"),
        ("weight_decay", -1.0, "weight decay must be at least 0"),
    ],
)
def test_finetune_settings_no_run_can_use_are_refused(setting, value, message):
    with pytest.raises(UsageProblem, match=message):
        FinetuneConfig(**{setting: value})


@pytest.mark.parametrize(
    "args", [["--lr", "nan"], ["--lr", "0"], ["--kl-scale", "0"], ["--kl-scale", "inf"]]
)
def test_the_cli_refuses_them_with_exit_2_before_creating_the_run(tmp_path, corpus, args):
    run = tmp_path / "run"
    fast = ["--steps", "1", "--student", "tiny-student", "--crop-seconds", "4", "--workers", "0"]
    result = CliRunner().invoke(
        build_app(), ["distill", str(corpus), "--out", str(run), *fast, *args]
    )
    assert result.exit_code == 2, result.output
    assert not run.exists()


def test_a_config_files_teachers_are_kept_when_none_are_given(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[distill]\nteachers = ["vgg16-places"]\nsteps = 7\n')
    assert new_config({}, (), toml).teachers == ("vgg16-places",)
    assert new_config({}, ("vgg16-imagenet",), toml).teachers == ("vgg16-imagenet",)
    assert new_config({}, ()).teachers == ()


# -- once -----------------------------------------------------------------------------------------
def test_the_cli_claims_the_run_folder_and_checks_the_config_once(tmp_path, corpus, monkeypatch):
    claims, checks = [], []
    real_results, real_check = rundir.run_results, DistillConfig.check

    def counting_results(*args, **kwargs):
        claims.append(args)
        return real_results(*args, **kwargs)

    def counting_check(self):
        checks.append(self)
        real_check(self)

    monkeypatch.setattr(rundir, "run_results", counting_results)
    monkeypatch.setattr(DistillConfig, "check", counting_check)
    run = tmp_path / "run"
    args = ["distill", str(corpus), "--out", str(run), "--steps", "2", "--student", "tiny-student"]
    args += ["--crop-seconds", "4", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert len(claims) == 1
    final = [c for c in checks if c.steps == 2]
    assert len(final) == 1, "the run's config was checked more than once"


# -- the source of a run --------------------------------------------------------------------------
def test_prepare_source_reads_the_exception_type_not_its_text(tmp_path, monkeypatch):
    """An error from preparing that happens to mention 'no video files' is passed on as it is;
    only NoVideos says the source is neither a corpus nor videos."""
    from soundnet_cli.corpus import prepare

    def teacher_error(*args, **kwargs):
        raise UsageProblem("vgg16-places: no video files are needed, but the weights are missing")

    monkeypatch.setattr(prepare, "prepare_videos", teacher_error)
    config = DistillConfig(teachers=("vgg16-places",))
    with pytest.raises(UsageProblem, match="the weights are missing"):
        prepare_source(tmp_path, tmp_path / "run", config)
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageProblem, match="neither a corpus nor a folder with videos"):
        prepare_source(tmp_path / "empty", tmp_path / "run", config)


# -- last.pt --------------------------------------------------------------------------------------
class NotWeights:
    pass


@pytest.mark.parametrize("payload", ["raw-pickle", "torch-save"])
def test_a_pickle_last_pt_is_not_a_soundnet_checkpoint(tmp_path, payload):
    path = tmp_path / "last.pt"
    if payload == "raw-pickle":
        path.write_bytes(pickle.dumps({"model": NotWeights()}))
    else:
        torch.save({"model": NotWeights()}, path)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(SoundnetError) as caught:
        rundir.load_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    message = str(caught.value)
    assert "not a soundnet training checkpoint" in message
    assert "weights_only" not in message and "\n" not in message


# -- non-finite values where they enter ---------------------------------------------------------
def test_distill_on_a_corpus_with_a_nan_head_is_one_line(tmp_path, corpus):
    import numpy as np

    from soundnet_cli.corpus.format import CorpusError

    head = next((corpus / "shards").iterdir()) / "tones.npy"
    np.save(head, np.full_like(np.load(head), np.nan))
    for workers in (0, 1):  # in the training process, and in a DataLoader worker
        config = DistillConfig(steps=2, **(FAST | {"workers": workers}))
        with pytest.raises(CorpusError) as caught:
            distill(corpus, tmp_path / f"run{workers}", config)
        message = str(caught.value)
        assert "\n" not in message and "holds NaN or infinite posteriors" in message


def test_a_teacher_that_gives_nan_fails_its_videos_instead_of_storing_them(tmp_path):
    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus

    from ..videos import grey_level_teacher, make_video

    teacher = grey_level_teacher()
    teacher.network.scale.data.fill_(math.nan)  # broken weights: every logit is NaN
    video = make_video(tmp_path / "videos" / "a.mp4", 2.0)
    settings = PrepareSettings(clip_seconds=1.0, frame_interval=1.0, workers=0)
    report = prepare_corpus([video], tmp_path / "corpus", [teacher], settings)
    assert report.clips == 0
    assert [f["path"] for f in report.failed] == [str(video)]
    assert "NaN or infinite values for head grey-level" in report.failed[0]["reason"]
    assert len(Corpus(tmp_path / "corpus")) == 0
