"""Issue 25, item 1: the inference rewrite is used only where it equals the student's own
forward. A ConvStudent subclass that changes its input in ``forward_features`` gives, in every
command's default path, what ``--plain`` and ``load_student(...).forward_features`` give."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from soundnet_cli import load_student, testing
from soundnet_cli.models import for_inference
from soundnet_cli.prediction.run import predict_files
from soundnet_cli.students import soundnet8
from soundnet_cli.students.inference import FastStudent, optimise, rewrite_equals_forward
from soundnet_cli.weights.checkpoints import save_checkpoint

from ..conftest import tone, write_wav

MODULE = "tests.plugins.contract_students"


@pytest.fixture
def shifted_checkpoint(tmp_path):
    with testing.with_plugin(MODULE, "contract-students"):
        from tests.plugins.contract_students import shifted

        model = shifted()
        for module in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        path = save_checkpoint(model, tmp_path / "shifted.safetensors")
        yield path


def test_a_subclass_with_its_own_forward_is_not_rewritten(shifted_checkpoint, caplog):
    model = load_student(shifted_checkpoint)
    assert "overrides forward_features" in str(rewrite_equals_forward(model))
    wave = torch.from_numpy(tone(3.0) * 256)
    with torch.inference_mode():
        own = model.forward_features(wave, ["conv2"])["conv2"]
    with caplog.at_level(logging.INFO, logger="soundnet_cli.students.inference"):
        used = for_inference(model, ["conv2"])
    assert used is model
    assert "student 'shifted'" in caplog.text and "own forward" in caplog.text
    got = used.forward_features(wave, ["conv2"])["conv2"]
    assert torch.equal(got, own)


def test_plain_conv_students_are_still_rewritten():
    model = soundnet8().eval()
    assert rewrite_equals_forward(model) is None
    assert isinstance(optimise(model, layers=["pool5"]), FastStudent)


def test_extract_default_path_equals_plain_and_the_students_own_forward(
    shifted_checkpoint, run, tmp_path
):
    clip = write_wav(tmp_path / "clip.wav", tone(3.0))
    with testing.with_plugin(MODULE, "contract-students"):
        for name, extra in (("default", []), ("plain", ["--plain"])):
            out = tmp_path / name
            result = run("extract", str(clip), "-o", str(out), "--checkpoint",
                         str(shifted_checkpoint), "--layer", "conv2", *extra)  # fmt: skip
            assert result.exit_code == 0, result.output
        default = np.load(tmp_path / "default" / "clip.conv2.npy")
        plain = np.load(tmp_path / "plain" / "clip.conv2.npy")
        model = load_student(shifted_checkpoint)
        samples = torch.from_numpy(tone(3.0) * 256)
        with torch.inference_mode():
            own = model.forward_features(samples, ["conv2"])["conv2"][0].T.numpy()
    scale = np.abs(own).max()
    assert np.abs(default - plain).max() <= 1e-5 * scale
    assert default.shape == own.shape and np.abs(default - own).max() <= 1e-4 * scale


def test_predict_default_path_uses_the_students_own_forward(shifted_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(3.0))
    with testing.with_plugin(MODULE, "contract-students"):
        model = load_student(shifted_checkpoint)
        run = predict_files([clip], model, top_k=3)
        from soundnet_cli.media.audio import load_audio, tile

        samples = tile(load_audio(clip).samples, 20 * 22050)
        with torch.inference_mode():
            own = model(torch.from_numpy(samples))["objects"][0].exp().mean(-1)
    (prediction,) = run.predictions
    summary = prediction.summary[0]
    expected = own.numpy()[[["cat", "dog", "bird"].index(label) for label in summary.labels]]
    assert np.allclose(summary.probabilities, expected, rtol=1e-5, atol=1e-6)
    json.dumps(prediction.as_dict())
