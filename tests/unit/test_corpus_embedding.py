"""Embedding heads in the corpus: float16 unit vectors per frame, the head's kind and size and
the teacher's CLIP identity in the manifest, and older (posterior-only) manifests still read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from soundnet_cli.corpus.format import Corpus, CorpusError, read_manifest
from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

from ..distill_helpers import class_vectors, mixed_corpus, tone_corpus
from ..videos import make_video


def test_mixed_corpus_round_trip(tmp_path):
    root = mixed_corpus(tmp_path / "c")
    manifest = read_manifest(root)
    vec = manifest.head("vec")
    assert (vec.kind, vec.size, vec.categories) == ("embedding", 8, ())
    assert manifest.head("tones").kind == "posteriors"
    raw = json.loads((root / "manifest.json").read_text())
    assert raw["heads"][1] == {
        "name": "vec",
        "teacher": "vec-teacher",
        "kind": "embedding",
        "size": 8,
        "categories": [],
    }
    corpus = Corpus(root)
    sample = corpus[1]
    assert sample.posteriors["vec"].dtype == np.float16
    assert np.allclose(sample.posteriors["vec"][0], class_vectors()[1], atol=1e-3)
    summary = corpus.summary()
    assert summary["heads"][1] == {
        "name": "vec",
        "teacher": "vec-teacher",
        "kind": "embedding",
        "size": 8,
        "frames": 48,
    }


def test_posterior_only_manifests_still_read(tmp_path):
    root = tone_corpus(tmp_path / "old")
    raw = json.loads((root / "manifest.json").read_text())
    assert "kind" not in raw["heads"][0]  # as written before embedding heads existed
    head = read_manifest(root).head("tones")
    assert (head.kind, head.size) == ("posteriors", 3)


def test_an_unknown_head_kind_is_refused(tmp_path):
    root = mixed_corpus(tmp_path / "c")
    raw = json.loads((root / "manifest.json").read_text())
    raw["heads"][1]["kind"] = "captions"
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorpusError, match="unknown kind 'captions'"):
        read_manifest(root)


class _Mean(torch.nn.Module):
    """Four numbers per frame: its mean colour and brightness."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, pixels):
        mean = pixels.mean(dim=(2, 3))
        return torch.cat([mean, mean.mean(dim=1, keepdim=True) + self.offset], dim=1)


def test_prepare_stores_embedding_heads_and_the_clip_identity(tmp_path):
    make_video(tmp_path / "videos" / "a.mp4", seconds=4.0)
    identity = {"model": "ViT-S-32", "pretrained": None, "sha256": "ab" * 32}
    teacher = Teacher(
        "vectors",
        _Mean(),
        [TeacherHead.embedding("vectors", 4)],
        FrameTransform(resize=32, crop=32),
        {"clip": identity},
    )
    settings = PrepareSettings(clip_seconds=2.0, frame_interval=1.0, workers=0)
    prepare_corpus([tmp_path / "videos" / "a.mp4"], tmp_path / "c", [teacher], settings)
    corpus = Corpus(tmp_path / "c")
    vectors = np.concatenate([corpus[i].posteriors["vectors"] for i in range(len(corpus))])
    assert vectors.shape == (4, 4) and vectors.dtype == np.float16
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    teachers = corpus.manifest.teachers
    assert teachers[0]["provenance"]["clip"] == identity
    assert teachers[0]["heads"] == [{"name": "vectors", "kind": "embedding", "size": 4}]
