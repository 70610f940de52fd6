"""The student contract is the one the commands use: every registered student (the mfcc plugin
too, when installed) and any student passing ``testing.check_student`` runs through extract,
predict, evaluate and the HEAR plugin; a student breaking its contract is stopped by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundnet_cli import plugins, testing
from soundnet_cli.errors import SoundnetError
from soundnet_cli.evaluation.protocol import evaluate
from soundnet_cli.extraction.engine import extract
from soundnet_cli.media.audio import load_audio
from soundnet_cli.students import FeatureInfo, StudentBase
from soundnet_cli.students.predict import predict_waveform

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree

# name families ("classifier:") need a variant to build; their members are checked where made
STUDENTS = [n for n in plugins.load_plugins().students.names() if not n.endswith(":")]


class Frames(StudentBase):
    """A student written against the contract alone: frame statistics, no weights."""

    architecture = "frames"
    feature_info = [FeatureInfo("stats", 3, 2205, 4410, 0)]
    default_layer = "stats"

    def __init__(self, channels_returned: int = 3) -> None:
        super().__init__()
        self.channels_returned = channels_returned

    def output_length(self, layer: str, samples: int) -> int:
        return max(0, (samples - 4410) // 2205 + 1)

    def min_samples(self, layer: str) -> int:
        return 4410

    def forward_features(self, wave, layers):
        batch, layers = self.forward_inputs(wave, layers)
        frames = batch.unfold(-1, 4410, 2205)  # (batch, steps, 4410)
        stats = [frames.mean(-1), frames.std(-1), frames.abs().amax(-1), frames.amin(-1)]
        return {"stats": torch.stack(stats[: self.channels_returned], 1)}


def _run_everywhere(student, tmp_path) -> None:
    """extract, predict, evaluate and HEAR, each asserting what it produced."""
    layer = student.default_layer
    channels = next(i.channels for i in student.feature_info if i.name == layer)
    clip = write_wav(tmp_path / "in" / "a.wav", tone(3.0, 44100), 44100)
    summary = extract([clip.parent], [layer], tmp_path / "out", model=student)
    assert summary.extracted == 1 and not summary.failures
    (written,) = (tmp_path / "out").glob(f"*.{layer}.npy")
    features = np.load(written)
    assert features.shape[1] == channels and np.isfinite(features).all()

    heads = getattr(student, "head_specs", None)
    if heads and all(h.categories for h in heads):
        prediction = predict_waveform(student, load_audio(clip), top_k=1)
        assert prediction.summary and prediction.summary[0].labels
    else:  # a student without named outputs: a clear error, not a crash
        with pytest.raises(SoundnetError, match="no named output categories"):
            predict_waveform(student, load_audio(clip))

    tree = make_esc_tree(tmp_path / "esc", {"low": 300.0, "high": 3000.0}, per_class=2, folds=2)
    dataset = plugins.get_plugins().datasets.create("esc50")
    report = evaluate(dataset, tree, student, [layer], C=1.0, use_cache=False)
    accuracy, _ = report.layer_summary(layer)
    assert len([r for r in report.results if r.layer == layer]) == 2  # both folds ran
    assert 0.0 <= accuracy <= 1.0

    if _hear_wanted():  # CI's plugin stage installs soundnet-hear and runs this file again
        import soundnet_hear as hear

        model = hear.HearModel(student)
        scene = hear.get_scene_embeddings(torch.rand(2, 30_000) * 2 - 1, model)
        assert scene.shape == (2, channels) and torch.isfinite(scene).all()


def _hear_wanted() -> bool:
    try:
        import soundnet_hear  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.third_party_plugins
@pytest.mark.parametrize("name", STUDENTS)
def test_every_registered_student_runs_through_the_commands(name, tmp_path):
    testing.check_registered_student(name)
    student = plugins.get_plugins().students.create(name).eval()
    _run_everywhere(student, tmp_path)


def test_a_student_written_to_the_contract_runs_through_the_commands(tmp_path):
    student = Frames()
    testing.check_student(student, architecture="frames")
    _run_everywhere(student, tmp_path)


def test_a_student_returning_the_wrong_shape_is_stopped_by_name(tmp_path):
    liar = Frames(channels_returned=4)  # declares 3 channels, returns 4
    clip = write_wav(tmp_path / "in" / "a.wav", tone(3.0), 22050)
    summary = extract([clip.parent], ["stats"], tmp_path / "out", model=liar)
    assert summary.extracted == 0 and len(summary.failures) == 1
    assert "student 'frames'" in summary.failures[0].error
    tree = make_esc_tree(tmp_path / "esc", {"low": 300.0, "high": 3000.0}, per_class=2, folds=2)
    dataset = plugins.get_plugins().datasets.create("esc50")
    with pytest.raises(SoundnetError, match="student 'frames' returned layer 'stats' shaped"):
        evaluate(dataset, tree, liar, ["stats"], C=1.0, use_cache=False)
