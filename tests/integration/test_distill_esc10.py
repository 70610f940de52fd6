"""The end-to-end distillation check on real sound, short: real ESC-10 clips paired with frames
whose colour is their class, prepared with a colour teacher, distilled into a fresh SoundNet-8
for a few steps. The full version, with the figures, is benchmarks/distill_esc10.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.distill_esc10 import build_videos, class_colour_teacher, prepare

from .conftest import esc_rows


def test_real_clips_to_a_distilled_student(tmp_path):
    rows = [r for r in esc_rows("esc10") if r["esc10"].strip().lower() == "true"]
    classes = sorted({r["category"] for r in rows})
    picked = [next(r for r in rows if r["category"] == c) for c in classes][:6]
    videos = build_videos(picked, tmp_path / "videos", classes)
    report = prepare(videos, tmp_path / "corpus", classes)
    assert report["prepared"] == len(picked) and not report["failed"]

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics

    corpus = Corpus(tmp_path / "corpus")
    for sample in corpus:  # the teacher saw the class colour: its top-1 is the clip's class
        row = next(r for r in picked if Path(r["filename"]).stem == Path(sample.ref.video).stem)
        top = sample.posteriors["class-colour"].argmax(axis=1)
        assert [classes[i] for i in top] == [row["category"]] * sample.ref.frames
    config = DistillConfig(
        steps=3, batch_size=2, workers=1, device="cpu", held_out=0.34, log_every=1, eval_every=3
    )
    result = distill(tmp_path / "corpus", tmp_path / "run", config)
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert result.agreement is not None and 0 <= result.agreement["class-colour"] <= 1
    assert result.student is not None and result.student.is_file()


def test_colour_teacher_follows_the_picture():
    import numpy as np

    from benchmarks.distill_esc10 import PALETTE

    classes = [f"c{i}" for i in range(10)]
    teacher = class_colour_teacher(classes)
    frames = np.stack([np.full((48, 64, 3), colour, np.uint8) for colour in PALETTE])
    probs = teacher.label(frames)["class-colour"]
    assert probs.argmax(axis=1).tolist() == list(range(10))
    assert (probs.max(axis=1) > 0.5).all() and (probs.max(axis=1) < 1).all()


pytestmark = pytest.mark.integration
