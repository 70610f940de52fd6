"""Zero-shot labels (`predict --labels`) and text search (`search query --text`) with a student
that has an embedding head, and the refusals: no embedding head, no labels, another text tower.

The CLIP text tower is open_clip's smallest ViT with random weights saved to a local file (the
identity the embedding head records), so nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

open_clip = pytest.importorskip("open_clip")

import torch  # noqa: E402

from soundnet_cli.teachers.text import DEFAULT_ENSEMBLE  # noqa: E402

from ..conftest import tone, write_wav  # noqa: E402

MODEL = "ViT-S-32"


def _student_with_head(folder: Path, weights: Path) -> Path:
    from soundnet_cli.students import HeadSpec, soundnet8
    from soundnet_cli.students.embedding import EmbeddingHead, spec_for
    from soundnet_cli.weights.checkpoints import save_checkpoint
    from soundnet_cli.weights.clip import build_clip

    _, _, identity = build_clip(MODEL, None, weights=weights)
    torch.manual_seed(0)
    student = soundnet8(heads=(HeadSpec("objects", 3, ("cat", "dog", "bird")),))
    spec = spec_for(
        student, "clip-vit-s-32", "pool5", 384, teacher=f"clip:{MODEL}", clip=identity.as_dict()
    )
    head = EmbeddingHead(spec)
    return save_checkpoint(
        student, folder / "student.safetensors", {"source": "test"}, {spec.name: head}
    )


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    """A run folder: RUN/student.safetensors with an embedding head tied to a local CLIP file."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    clip = open_clip.create_model(MODEL, pretrained=None)
    weights = folder / "clip-random.pt"
    torch.save(clip.state_dict(), weights)
    _student_with_head(folder, weights)
    return folder


def test_predict_labels_json_has_prompts_steps_and_summary(run, clip_run, tmp_path):
    clip = write_wav(tmp_path / "a.wav", tone(6.0))
    result = run(
        "predict", str(clip), "--checkpoint", str(clip_run), "--labels", "dog barking, rain",
        "--json", "-k", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["labels"] == ["dog barking", "rain"]
    assert payload["prompts"] == list(DEFAULT_ENSEMBLE)
    (item,) = payload["results"]
    assert item["tiled_to"] == 20.0 and len(item["steps"]) > 4
    (summary,) = item["summary"]
    assert summary["head"] == "zero-shot"
    assert {t["label"] for t in summary["top"]} == {"dog barking", "rain"}
    assert sum(t["probability"] for t in summary["top"]) == pytest.approx(1, abs=1e-5)


def test_predict_labels_csv_segments_and_prompts(run, clip_run, tmp_path):
    clip = write_wav(tmp_path / "a.wav", tone(25.0))
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\n\nrain\nsea waves\n")
    result = run(
        "predict", str(clip), "--checkpoint", str(clip_run / "student.safetensors"),
        "--labels-file", str(labels), "--prompt", "a {}", "--prompt", "the sound of {}",
        "--format", "csv", "--segments",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    first, header, *rows = result.stdout.splitlines()
    assert first.startswith("# zero-shot ")
    assert json.loads(first[len("# zero-shot ") :]) == {
        "labels": ["dog", "rain", "sea waves"],
        "prompts": ["a {}", "the sound of {}"],
    }
    assert header == "path,start,end,head,rank,label,probability"
    assert rows and all(",zero-shot,1," in row for row in rows)


def test_bad_zero_shot_input_is_one_line(run, clip_run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "a.wav", tone(2.0))
    empty = run("predict", str(clip), "--checkpoint", str(clip_run), "--labels", " , ")
    assert empty.exit_code == 2 and "label list is empty" in empty.stderr
    plain = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--labels", "dog")
    assert plain.exit_code == 2 and "has no embedding head" in plain.stderr
    prompt = run(
        "predict", str(clip), "--checkpoint", str(clip_run), "--labels", "a", "--prompt", "x"
    )
    assert prompt.exit_code == 2 and "exactly one {}" in prompt.stderr
    for result in (empty, plain, prompt):  # usage errors: click's panel, no traceback
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_another_text_tower_is_refused(run, clip_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(clip_run, moved)
    from soundnet_cli.students.embedding import read_embedding_heads

    weights = Path(
        read_embedding_heads(moved / "student.safetensors")["clip-vit-s-32"].spec.clip[
            "weights_file"
        ]
    )
    original = weights.read_bytes()
    try:
        weights.write_bytes(original + b"tampered")
        clip = write_wav(tmp_path / "a.wav", tone(2.0))
        result = run("predict", str(clip), "--checkpoint", str(moved), "--labels", "dog,rain")
        assert result.exit_code == 1
        assert "refusing another text tower" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        weights.write_bytes(original)


def test_search_query_text(run, clip_run, tmp_path):
    for i, freq in enumerate((220.0, 880.0, 3520.0)):
        write_wav(tmp_path / "sounds" / f"s{i}.wav", tone(6.0, freq=freq))
    feats = tmp_path / "feats"
    extracted = run(
        "extract", str(tmp_path / "sounds"), "--out", str(feats), "--checkpoint",
        str(clip_run / "student.safetensors"), "--layer", "pool5",
    )  # fmt: skip
    assert extracted.exit_code == 0, extracted.stderr
    result = run("search", "query", str(feats), "--text", "a dog barking", "-k", "2", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["layer"] == "pool5" and payload["prompts"] == ["{}"]
    assert [r["rank"] for r in payload["results"]] == [1, 2]
    scores = [r["score"] for r in payload["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(0 <= r["time"] <= 6.0 for r in payload["results"])
    table = run("search", "query", str(feats), "--text", "rain")
    assert table.exit_code == 0 and "s0" in table.stdout
    both = run("search", "query", str(feats), "--text", "rain", "--key", "s0")
    assert both.exit_code == 2


def test_weights_fetch_verifies_the_recorded_text_tower(run, clip_run, tmp_path):
    result = run("weights", "fetch", "--checkpoint", str(clip_run), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["verified"] is True
    unknown = run("weights", "fetch", "clip:NoSuchNet/openai")
    assert unknown.exit_code == 2 and "no model 'NoSuchNet'" in unknown.stderr
    tag = run("weights", "fetch", f"clip:{MODEL}/nope")
    assert tag.exit_code == 2 and "no pretrained tag" in tag.stderr


def test_export_includes_the_embedding_head(run, clip_run, tmp_path):
    out = tmp_path / "model.pt"
    result = run(
        "export", "--checkpoint", str(clip_run), "--heads", "--out", str(out), "--json"
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout)["outputs"]}
    assert outputs["clip-vit-s-32"]["kind"] == "embedding"
    assert outputs["clip-vit-s-32"]["shape"] == ["batch", 384, "time"]
    assert json.loads(result.stdout)["verified"] is True
    module = torch.jit.load(str(out))
    vectors = module(torch.zeros(1, 12 * 22050) + 0.1)["clip-vit-s-32"]
    assert torch.allclose(vectors.norm(dim=1), torch.ones(1), atol=1e-4)


def test_prepare_refuses_an_unknown_open_clip_model_or_tag(run, tmp_path):
    from ..videos import make_video

    make_video(tmp_path / "videos" / "a.mp4", seconds=2.0)
    for name, words in (
        ("clip:NoSuchNet/openai", "no model 'NoSuchNet'"),
        (f"clip:{MODEL}/nope", "no pretrained tag 'nope'"),
    ):
        out = tmp_path / "corpus"
        result = run("prepare", str(tmp_path / "videos"), "--teacher", name, "--out", str(out))
        assert result.exit_code == 2 and words in result.stderr
        assert not out.exists()  # nothing half-written


def test_corpus_info_shows_an_embedding_head(run, tmp_path):
    from ..distill_helpers import mixed_corpus

    corpus = mixed_corpus(tmp_path / "corpus")
    result = run("corpus", "info", str(corpus))
    assert result.exit_code == 0, result.stderr
    assert "vec: embedding head of size 8 (vec-teacher), 48 frames" in result.stdout
    assert "tones (3 categories)" in result.stdout
