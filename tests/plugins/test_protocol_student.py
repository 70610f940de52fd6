"""Issue 24: the contract as written. A student that keeps the ``Student`` protocol (and
``HeadedStudent``) without subclassing ``StudentBase`` passes ``check_student`` and runs through
every command, each asserting what it produced: extract, predict, probe fit and predict,
evaluate, search index and query, export, and ``visualize units``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soundnet_cli import testing
from soundnet_cli.students import StudentBase
from soundnet_cli.students.contract import HeadedStudent, Student
from soundnet_cli.weights.checkpoints import save_checkpoint

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree

MODULE = "tests.plugins.contract_students"
NAME = "protocol-student"


@pytest.fixture
def loaded():
    with testing.with_plugin(MODULE, "contract-students") as plugins:
        yield plugins


@pytest.fixture
def sounds(tmp_path):
    folder = tmp_path / "sounds"
    rows = ["path,label"]
    for n in range(6):
        loud = n % 2 == 0
        write_wav(folder / f"s{n}.wav", tone(1.5, freq=300 + 40 * n, amp=0.8 if loud else 0.05))
        rows.append(f"s{n}.wav,{'loud' if loud else 'quiet'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_it_keeps_the_protocol_without_the_base_class(loaded):
    student = loaded.students.create(NAME)
    assert not isinstance(student, StudentBase)
    assert isinstance(student, Student) and isinstance(student, HeadedStudent)
    testing.check_registered_student(NAME)


def test_extract_predict_search_and_export(loaded, run, sounds, tmp_path):
    features = tmp_path / "features"
    result = run("extract", str(sounds), "-o", str(features), "--student", NAME, "--json")
    assert result.exit_code == 0, result.output
    arrays = sorted(features.rglob("*.stats.npy"))
    assert len(arrays) == 6
    assert all(np.load(a).shape[1] == 3 for a in arrays)

    checkpoint = save_checkpoint(loaded.students.create(NAME), tmp_path / "p.safetensors")
    result = run("predict", str(sounds / "s0.wav"), str(sounds / "s1.wav"), "--checkpoint",
                 str(checkpoint), "--json", "--summary-only")  # fmt: skip
    assert result.exit_code == 0, result.output
    tops = [r["summary"][0]["top"][0]["label"] for r in json.loads(result.stdout)["results"]]
    assert tops == ["loud", "quiet"]  # the head's fixed weights: loud grows with the peak

    result = run("search", "index", str(features))
    assert result.exit_code == 0, result.output
    result = run("search", "query", str(features), "--key", "s0", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["results"]
    assert len(hits) == 3 and hits[0]["key"] == "s0"

    exported = tmp_path / "protocol.pt"
    result = run("export", "--student", NAME, "--format", "torchscript", "--out", str(exported),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert exported.is_file() and json.loads(result.stdout)["outputs"][0]["name"] == "stats"


def test_probe_evaluate_and_visualize_units(loaded, run, sounds, tmp_path):
    probe = tmp_path / "loud.probe.npz"
    result = run("probe", "fit", str(sounds), "--labels", str(sounds / "labels.csv"),
                 "--out", str(probe), "--student", NAME, "--layer", "stats", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run("probe", "predict", str(probe), str(sounds / "s0.wav"), str(sounds / "s3.wav"),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = [r["label"] for r in json.loads(result.stdout)]
    assert labels == ["loud", "quiet"]

    tree = make_esc_tree(tmp_path / "esc", {"low": 300.0, "high": 3000.0}, per_class=4, folds=2)
    result = run("evaluate", "esc10", str(tree), "--student", NAME, "-l", "stats", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "esc10" and report["classes"] == ["high", "low"]
    assert len(report["splits"]) == 2 and all(0 <= r["accuracy"] <= 1 for r in report["splits"])

    out = tmp_path / "units"
    result = run("visualize", "units", str(sounds), "--out", str(out), "--student", NAME,
                 "--layer", "stats", "--top-units", "2", "-k", "2", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    units = json.loads((out / "units.json").read_text())
    assert units["channels"] == 3 and len(units["units"]) == 2
    assert units["heads"] == ["loudness"]  # its head predicts every excerpt
    assert all(hit["predictions"]["loudness"]["label"] for u in units["units"] for hit in u["top"])


def test_the_hear_plugin_embeds_with_it(loaded, monkeypatch):
    """plugins/soundnet-hear, from its source tree (CI installs it; here it need not be)."""
    import torch

    from ..conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "plugins" / "soundnet-hear" / "src"))
    import soundnet_hear as hear

    model = hear.load_model(NAME)
    assert model.scene_embedding_size == 3
    audio = torch.rand(2, 30_000) * 2 - 1
    scene = hear.get_scene_embeddings(audio, model)
    stamps, times = hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, 3) and torch.isfinite(scene).all()
    assert stamps.shape[:2] == (2, times.shape[1]) and stamps.shape[2] == 3
