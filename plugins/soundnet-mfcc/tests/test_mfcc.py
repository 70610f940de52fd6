"""The mfcc student: the contract, its values against torchaudio and NumPy, its geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from soundnet_mfcc.student import MfccStudent

import soundnet_cli
from soundnet_cli import testing
from soundnet_cli.errors import AudioError, LayerError, SoundnetError
from soundnet_cli.students import feature_of


def test_registered_and_keeps_the_student_contract(mfcc_plugin):
    assert mfcc_plugin.infos["mfcc"].registered == {"student": ["mfcc"]}
    testing.check_registered_student("mfcc")
    testing.check_registered_student(
        "mfcc", n_mfcc=20, hop_length=512, summary_frames=10, summary_hop=5
    )


def test_load_student_builds_it_in_eval_mode():
    model = soundnet_cli.load_student("mfcc")
    assert isinstance(model, MfccStudent) and not model.training
    assert model.architecture == "mfcc" and model.sample_rate == 22050
    assert [i.name for i in model.feature_info] == ["mfcc", "summary"]
    assert model.default_layer == "summary"


def test_mfcc_layer_is_torchaudio_mfcc_of_the_unscaled_audio(sound_wave):
    model = MfccStudent(n_mfcc=13, n_mels=40, n_fft=1024, hop_length=256)
    got = model.forward_features(sound_wave, ["mfcc"])["mfcc"]
    reference = torchaudio.transforms.MFCC(
        sample_rate=22050,
        n_mfcc=13,
        log_mels=True,
        melkwargs={"n_fft": 1024, "hop_length": 256, "n_mels": 40},
    )(sound_wave / 256)
    torch.testing.assert_close(got[0], reference, rtol=1e-5, atol=1e-4)
    assert got.shape[2] == model.output_length("mfcc", len(sound_wave)) == 1 + 44100 // 256


def test_summary_is_mean_and_std_of_frames(sound_wave):
    model = MfccStudent(summary_frames=20, summary_hop=7)
    taps = model.forward_features(sound_wave, ["mfcc", "summary"])
    frames = taps["mfcc"][0].numpy()
    summary = taps["summary"][0].numpy()
    zcr = model.zero_crossing_rate(sound_wave[None] / 256)[0].numpy()
    assert summary.shape == (2 * 12 + 2, (frames.shape[1] - 20) // 7 + 1)
    step = 3
    window = slice(step * 7, step * 7 + 20)
    expected = np.concatenate(
        [
            frames[1:, window].mean(axis=1),
            frames[1:, window].std(axis=1),
            [zcr[window].mean(), zcr[window].std()],
        ]
    )
    np.testing.assert_allclose(summary[:, step], expected, rtol=1e-4, atol=1e-4)


def test_zero_crossing_rate_of_a_sine():
    t = torch.arange(22050) / 22050
    wave = 200 * torch.sin(2 * torch.pi * 1000 * t)
    zcr = MfccStudent().zero_crossing_rate(wave[None] / 256)[0]
    assert abs(float(zcr[10:-10].mean()) - 2 * 1000 / 22050) < 0.002


def test_summary_does_not_depend_on_loudness(sound_wave):
    model = MfccStudent()
    loud = model.forward_features(sound_wave, ["summary"])["summary"]
    quiet = model.forward_features(sound_wave * 0.25, ["summary"])["summary"]
    torch.testing.assert_close(loud, quiet, rtol=1e-3, atol=1e-3)


def test_chunks_give_the_same_frames_as_the_whole(sound_wave):
    """Frames depend only on their own samples: the property chunked extraction relies on."""
    model = MfccStudent()
    whole = model.forward_features(sound_wave, ["mfcc"])["mfcc"]
    start = 40 * model.hop_length  # a chunk starting on the frame grid, well inside the clip
    part = model.forward_features(sound_wave[start:], ["mfcc"])["mfcc"]
    torch.testing.assert_close(part[..., 4:-4], whole[..., 44:-4], rtol=1e-4, atol=1e-4)


def test_step_centres_are_in_seconds():
    model = MfccStudent()
    info = feature_of(model, "summary")
    centres = info.step_centres(3)
    assert centres[0] == pytest.approx((85 * 256) / 2 / 22050, abs=1e-3)
    assert centres[1] - centres[0] == pytest.approx(43 * 256 / 22050)


def test_errors_are_actionable():
    model = MfccStudent()
    with pytest.raises(LayerError, match="valid layers: mfcc, summary"):
        model.forward_features(torch.zeros(30000), ["pool5"])
    with pytest.raises(AudioError, match="needs at least 21760 samples"):
        model.forward_features(torch.zeros(20000), ["summary"])
    with pytest.raises(SoundnetError, match="n_mfcc"):
        MfccStudent(n_mfcc=50, n_mels=40)
    with pytest.raises(SoundnetError, match="even n_fft"):
        MfccStudent(n_fft=1023)


def test_listed_by_soundnet_plugins():
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert '"mfcc"' in result.stdout
