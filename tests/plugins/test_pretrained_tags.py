"""Registration carries pretrained tags: a plugin student ships weights that
``load_student(name, pretrained=True | "TAG")`` and ``--student NAME`` find (issue 24)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli import load_student, models, testing
from soundnet_cli.errors import UsageProblem, WeightsError
from soundnet_cli.media.audio import load_audio
from soundnet_cli.weights.checkpoints import save_checkpoint

from ..conftest import tone, write_wav

SOURCE = """
    import soundnet_cli

    CALLS = []

    def build(heads=None):
        from soundnet_cli.students import ConvLayer, ConvStudent, HeadLayer, HeadSpec, PoolLayer
        return ConvStudent(
            "{name}",
            (ConvLayer("conv1", 4, 16, 4, 8), PoolLayer("pool1", 4),
             ConvLayer("conv2", 8, 8, 2, 4)),
            HeadLayer("conv3", 4, 2, 0),
            heads or (HeadSpec("objects", 3, ("cat", "dog", "bird")),),
        )

    def second():
        CALLS.append("v2")  # runs only when the weights are asked for (it could download)
        return {v2!r}

    @soundnet_cli.hookimpl
    def register_students(register):
        register("{name}", build, description="ships weights", pretrained={pretrained})
"""


def checkpoint(path: Path, seed: int) -> Path:
    module = sys.modules["soundnet_tagged"]
    torch.manual_seed(seed)
    return save_checkpoint(module.build(), path)


@pytest.fixture
def tagged(tmp_path, monkeypatch):
    """The plugin "tagged" whose student publishes v1 (a path) and v2 (a function)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"

    def load(pretrained: str = '{"v1": V1, "v2": second}', name: str = "tagged"):
        source = SOURCE.format(name=name, v2=str(v2), pretrained=pretrained)
        text = textwrap.dedent(source).replace("V1", repr(str(v1)))
        (tmp_path / "soundnet_tagged.py").write_text(text)
        monkeypatch.delitem(sys.modules, "soundnet_tagged", raising=False)
        return testing.with_plugin("soundnet_tagged", "tagged")

    return load, v1, v2


def test_load_student_finds_each_tag(tagged):
    load, v1, v2 = tagged
    with load() as plugins:
        checkpoint(v1, seed=1)
        checkpoint(v2, seed=2)
        module = sys.modules["soundnet_tagged"]
        assert module.CALLS == [] and models.pretrained_tags("tagged") == ["v1", "v2"]
        default = load_student("tagged", pretrained=True)
        assert default.checkpoint_info.path == v1
        second = load_student("tagged", pretrained="v2")
        assert second.checkpoint_info.path == v2 and module.CALLS == ["v2"]
        weight = "blocks.conv1.conv.weight"
        assert not torch.equal(default.state_dict()[weight], second.state_dict()[weight])
        assert plugins.students.get("tagged").default_tag == "v1"
        with pytest.raises(UsageProblem, match="no pretrained weights tagged 'v3'; its tags: v1"):
            load_student("tagged", pretrained="v3")


def test_the_cli_student_option_loads_the_default_tag(tagged, run, tmp_path):
    load, v1, _ = tagged
    clip = write_wav(tmp_path / "clip.wav", tone(2.0))
    with load():
        checkpoint(v1, seed=1)
        result = run("extract", str(clip), "-o", str(tmp_path / "out"), "--student", "tagged",
                     "--layer", "conv2")  # fmt: skip
        assert result.exit_code == 0, result.output
        model = load_student(v1)
        with torch.inference_mode():
            wave = torch.from_numpy(load_audio(clip).samples)  # as decoded: 16-bit, scaled
            own = model.forward_features(wave, ["conv2"])["conv2"]
    features = np.load(tmp_path / "out" / "clip.conv2.npy")
    reference = own[0].T.numpy()
    assert np.abs(features - reference).max() <= 1e-4 * np.abs(reference).max()


def test_weights_of_another_architecture_are_refused(tagged):
    load, v1, _ = tagged
    with load():
        checkpoint(v1, seed=1)
    with load(name="renamed"), pytest.raises(WeightsError, match="hold a 'tagged' model"):
        load_student("renamed", pretrained=True)


@pytest.mark.parametrize(
    ("pretrained", "message"),
    [
        ('{"V 1": V1}', "pretrained tag 'V 1' must be lower-case kebab-case"),
        ('{"v1": 42}', "pretrained 'v1' must be a checkpoint path or a function"),
        ('["v1"]', "pretrained must map tags to weights"),
    ],
)
def test_bad_tags_fail_the_plugin_by_name(tagged, pretrained, message):
    load, _, _ = tagged
    with load(pretrained) as plugins:
        info = plugins.infos["tagged"]
        assert info.status == "failed" and message in info.errors[0]
        assert "tagged" not in plugins.students


def test_a_student_without_weights_says_which_have_them(soundnet_home):
    with pytest.raises(WeightsError, match="pretrained students: soundnet8"):
        load_student("soundnet5", pretrained=True)
    assert models.pretrained_tags("soundnet8") == ["official"]
    assert not hasattr(models, "PRETRAINED_TAGS")  # tags come from registration only


soundnet_home = testing.soundnet_home
