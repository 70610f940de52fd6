"""soundnet_cli.testing: every registered student keeps the contract (as timm tests every
registered model), and the checks themselves catch broken components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundnet_cli import plugins, testing
from soundnet_cli.errors import LayerError
from soundnet_cli.students import FeatureInfo, StudentBase, soundnet5

# Installed third-party students are checked too (the nox `plugins` session installs ours).
# name families ("classifier:") need a variant to build; their members are checked where made
STUDENTS = [n for n in plugins.load_plugins().students.names() if not n.endswith(":")]


@pytest.mark.third_party_plugins
@pytest.mark.parametrize("name", STUDENTS)
def test_every_registered_student_keeps_the_contract(name):
    testing.check_registered_student(name)


# Families are checked through a small member; builds are weight-free (random_init=True).
TEACHERS = [n for n in plugins.load_plugins().teachers.names() if not n.endswith(":")]
TEACHERS += ["timm:test_resnet"]


@pytest.mark.third_party_plugins
@pytest.mark.parametrize("name", TEACHERS)
def test_every_registered_teacher_keeps_the_contract(name):
    torch.manual_seed(0)
    testing.check_registered_teacher(name)


def test_builtin_teachers_are_among_the_checked():
    assert {"vgg16-imagenet", "vgg16-places", "alexnet-places", "resnet50-places"} <= set(TEACHERS)


@pytest.mark.third_party_plugins
def test_every_registered_probe_keeps_the_contract():
    for name in testing.plugins().probes.names():
        testing.check_probe(testing.plugins().probes.create(name))


def test_builtin_students_are_among_the_checked():
    assert {"soundnet8", "soundnet5"} <= set(STUDENTS)


# -- the checks catch what they claim to catch --------------------------------------------------
class Broken(StudentBase):
    """A minimal student whose faults the tests switch on one at a time."""

    def __init__(self, fault: str = "") -> None:
        super().__init__()
        self.fault = fault
        self.architecture = "broken"
        self.sample_rate = 16000 if fault == "rate" else 22050
        channels = 5 if fault == "channels" else 4
        self.feature_info = [FeatureInfo("frames", channels, 100, 100, 0)]
        self.default_layer = "pool9" if fault == "default-layer" else "frames"
        self.weight = torch.nn.Parameter(torch.ones(4, 1, 100))

    def output_length(self, layer: str, samples: int) -> int:
        extra = 1 if self.fault == "length" else 0
        return max(0, (samples - 100) // 100 + 1) + extra

    def min_samples(self, layer: str) -> int:
        return 100

    def forward_features(self, wave, layers):
        if "frames" not in layers or len(layers) != 1:
            if self.fault == "layer-error":
                raise KeyError(layers)
            raise LayerError("broken has no such layer; valid layers: frames")
        x = wave[None] if wave.dim() == 1 else wave
        if x.shape[-1] < 100:
            if self.fault == "short":
                return {"frames": torch.zeros(x.shape[0], 4, 0)}
            from soundnet_cli.errors import AudioError

            raise AudioError("too short")
        if self.fault == "inplace":
            wave.mul_(1.0)
            wave[..., 0] += 1
        out = torch.nn.functional.conv1d(x[:, None], self.weight, stride=100)
        if self.fault == "batch" and x.shape[0] > 1:
            out = out + torch.arange(x.shape[0])[:, None, None]
        return {"frames": out}


def test_a_correct_student_passes():
    testing.check_student(Broken(), architecture="broken")
    testing.check_student(soundnet5(), architecture="soundnet5", layers=["conv1", "pool2"])


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("rate", "sample_rate must be 22050"),
        ("channels", "declares 5 channels"),
        ("length", "output_length says"),
        ("layer-error", "must raise LayerError"),
        ("short", "must raise AudioError"),
        ("inplace", "changed its input"),
        ("batch", "alone and in a batch"),
        ("default-layer", "default_layer must name one of its layers"),
    ],
)
def test_a_broken_student_is_named_and_explained(fault, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_student(Broken(fault))


class NoDevice(torch.nn.Module):
    """Everything but ``device`` and ``default_layer``: the contract asks for both."""

    architecture = "bare"
    sample_rate = 22050
    feature_info = [FeatureInfo("frames", 4, 100, 100, 0)]

    def output_length(self, layer: str, samples: int) -> int:
        return max(0, (samples - 100) // 100 + 1)

    def min_samples(self, layer: str) -> int:
        return 100

    def forward_features(self, wave, layers):
        return Broken().forward_features(wave, layers)


def test_every_member_of_the_contract_is_required():
    with pytest.raises(AssertionError, match="default_layer must name one of its layers"):
        testing.check_student(NoDevice())
    NoDevice.default_layer = "frames"
    try:
        with pytest.raises(AssertionError, match="`device` must be the torch.device"):
            testing.check_student(NoDevice())
    finally:
        del NoDevice.default_layer


def test_a_layer_that_needs_no_minimum_is_checked_alone():
    testing.check_student(soundnet5(), layers=["conv1"])


def test_architecture_must_match_the_registered_name():
    with pytest.raises(AssertionError, match="registered as 'other'"):
        testing.check_student(Broken(), architecture="other")


class GoodProbe:
    def fit(self, x, y):
        from sklearn.svm import LinearSVC

        self.svm = LinearSVC(C=1.0).fit(x, y)
        self.classes_ = self.svm.classes_
        return self

    def decision_function(self, x):
        return self.svm.decision_function(x)

    def predict(self, x):
        return self.svm.predict(x)


class ConstantProbe(GoodProbe):
    def predict(self, x):
        return np.full(len(x), self.classes_[0])


def test_probe_checks():
    testing.check_probe(GoodProbe())
    with pytest.raises(AssertionError, match="disagrees with the largest decision value"):
        testing.check_probe(ConstantProbe())
    with pytest.raises(AssertionError, match="needs fit"):
        testing.check_probe(object())


def fake_teacher(normalise: bool = True, head: str = "objects"):
    """A Teacher over a tiny network; ``normalise=False`` returns logits as if probabilities."""
    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

    class Unnormalised(Teacher):
        def forward(self, pixels):
            return {self.heads[0].name: self.network(pixels)}

    network = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3)
    )
    kind = Teacher if normalise else Unnormalised
    return kind("fake", network, [TeacherHead(head, ("a", "b", "c"))], FrameTransform(32, 32))


def test_teacher_checks():
    testing.check_teacher(fake_teacher())
    with pytest.raises(AssertionError, match="does not give probabilities"):
        testing.check_teacher(fake_teacher(normalise=False))
    with pytest.raises(AssertionError, match="head 'Objects!' must be lower-case"):
        testing.check_teacher(fake_teacher(head="Objects!"))
    with pytest.raises(AssertionError, match="must be a soundnet_cli.teachers.Teacher"):
        testing.check_teacher(object())
    with pytest.raises(AssertionError, match="not the registered 'other'"):
        testing.check_teacher(fake_teacher(), name="other")


def test_make_wave_is_scaled_and_shaped():
    one, two = testing.make_wave(0.5), testing.make_wave(0.5, batch=2)
    assert one.shape == (11025,) and two.shape == (2, 11025) and one.dtype == torch.float32
    assert float(two.abs().max()) <= 256 and not torch.equal(two[0], two[1])


PLUGIN_SOURCE = """
import soundnet_cli

@soundnet_cli.hookimpl
def register_students(register):
    from soundnet_cli.students import soundnet5
    register("uninstalled-student", lambda **kw: soundnet5(**kw), description="x")
"""


def test_with_plugin_loads_an_uninstalled_module(tmp_path, monkeypatch):
    (tmp_path / "soundnet_uninstalled.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with testing.with_plugin("soundnet_uninstalled") as loaded:
        assert loaded.infos["uninstalled"].registered == {"student": ["uninstalled-student"]}
        assert "uninstalled-student" in plugins.get_plugins().students
    assert "uninstalled-student" not in plugins.get_plugins().students


def test_a_student_with_heads_must_keep_what_predict_uses():
    from soundnet_cli.students import HeadSpec

    class Headless(Broken):
        head_specs = (HeadSpec("objects", 2, ("a", "b")),)  # but no head_layer, not callable

    with pytest.raises(AssertionError, match="HeadedStudent protocol predict uses"):
        testing.check_student(Headless(), architecture="broken")

    class WrongHeads(Headless):
        head_layer = "frames"

        def forward(self, wave):
            return {"objects": torch.zeros(2, 3, 1)}

    with pytest.raises(AssertionError, match="head 'objects' gave"):
        testing.check_student(WrongHeads(), architecture="broken")
