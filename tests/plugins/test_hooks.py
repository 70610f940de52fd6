"""One test per hook in soundnet_cli/hookspecs.py (test_hooks_documented.py checks that each
has one, named test_hook_<hook>): a plugin module implementing it, loaded as an installed
plugin would be, and what it registers used through the core."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from soundnet_cli import testing


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write ``source`` as the module soundnet_hooktest and load it as the plugin "hooktest"."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(source: str):
        (tmp_path / "soundnet_hooktest.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, "soundnet_hooktest", raising=False)  # each test its own
        return testing.with_plugin("soundnet_hooktest", "hooktest")

    return load


def test_hook_register_students(plugin_module):
    source = """
        import soundnet_cli

        def build(heads=None):
            from soundnet_cli.students import ConvLayer, ConvStudent, HeadLayer, HeadSpec
            return ConvStudent(
                "hook-student",
                (ConvLayer("conv1", 4, 16, 4, 8),),
                HeadLayer("conv2", 4, 2, 0),
                heads or (HeadSpec("objects", 2),),
            )

        @soundnet_cli.hookimpl
        def register_students(register):
            register("hook-student", build, description="for the hook test")
    """
    with plugin_module(source) as loaded:
        assert loaded.infos["hooktest"].registered == {"student": ["hook-student"]}
        assert loaded.students.get("hook-student").description == "for the hook test"
        testing.check_registered_student("hook-student")
        import soundnet_cli

        assert soundnet_cli.load_student("hook-student").architecture == "hook-student"


def test_hook_register_teachers(plugin_module):
    source = """
        import numpy as np
        import soundnet_cli

        def mean_colour(weights=None, random_init=False):
            import torch
            from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

            # the frame's mean colour as logits: pool, then a fixed 3 x 3 identity
            linear = torch.nn.Linear(3, 3)
            with torch.no_grad():
                linear.weight.copy_(torch.eye(3) * 4)
                linear.bias.zero_()
            network = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), linear
            )
            head = TeacherHead("colours", ("red", "green", "blue"))
            return Teacher("mean-colour", network, [head], FrameTransform(resize=32, crop=32))

        @soundnet_cli.hookimpl
        def register_teachers(register):
            register("mean-colour", mean_colour, description="the frame's dominant colour")
    """
    with plugin_module(source) as loaded:
        assert loaded.infos["hooktest"].registered == {"teacher": ["mean-colour"]}
        testing.check_registered_teacher("mean-colour")


def test_hook_register_probes(plugin_module):
    source = """
        import soundnet_cli

        def nearest_centroid(**params):
            from sklearn.neighbors import NearestCentroid

            class Probe(NearestCentroid):
                def decision_function(self, x):
                    import numpy as np
                    return -((x[:, None, :] - self.centroids_[None]) ** 2).sum(-1)

            return Probe(**params)

        @soundnet_cli.hookimpl
        def register_probes(register):
            register("centroid", nearest_centroid, description="nearest class mean")
    """
    with plugin_module(source) as loaded:
        assert loaded.infos["hooktest"].registered == {"probe": ["centroid"]}
        testing.check_probe(loaded.probes.create("centroid"))


def test_hook_register_datasets(plugin_module, tmp_path):
    source = """
        import soundnet_cli
        from soundnet_cli.datasets import Clip, Dataset, Protocol

        class Folders(Dataset):
            name = "folders"
            protocol = Protocol(repeat_to=None, window_seconds=1.0)

            def clips(self, root):
                return sorted(
                    (Clip(p, p.parent.name, p.stem[-1], p.stem) for p in root.glob("*/*.wav")),
                    key=lambda c: c.path.name,
                )

        @soundnet_cli.hookimpl
        def register_datasets(register):
            register("folders", Folders, description="one folder per class")
    """
    for label in ("a", "b"):
        for fold in ("1", "2"):
            path = tmp_path / "data" / label / f"{label}{fold}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    with plugin_module(source) as loaded:
        assert loaded.infos["hooktest"].registered == {"dataset": ["folders"]}
        dataset = loaded.datasets.create("folders")
        clips = dataset.clips(tmp_path / "data")
        assert [c.label for c in clips] == ["a", "a", "b", "b"]
        splits = dataset.splits(clips)
        assert [s.name for s in splits] == ["fold 1", "fold 2"]


def test_hook_register_commands(plugin_module):
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    source = """
        import soundnet_cli

        @soundnet_cli.hookimpl
        def register_commands(app):
            @app.command("hook-hello")
            def hello(name: str = "world"):
                '''Say hello from the hook test.'''
                print(f"hello {name}")
    """
    with plugin_module(source) as loaded:
        result = CliRunner().invoke(build_app(), ["hook-hello", "--name", "plugins"])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "hello plugins"
        assert loaded.infos["hooktest"].adds_commands
