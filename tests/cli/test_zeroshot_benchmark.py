"""The planted zero-shot benchmark's code path, small: a 3-class ESC-style layout of tones,
two folds, two distill steps, open_clip's smallest ViT. It checks the plumbing (videos, the
planted embedding teacher, corpus, run, `evaluate --zero-shot`, extract, `--text` search, the
JSON and --out layout); the accuracy figures need the real benchmark."""

from __future__ import annotations

import csv
import sys

import pytest

pytest.importorskip("open_clip")

from ..conftest import REPO, tone, write_wav  # noqa: E402

CLASSES = ("dog", "rain", "chirping_birds")


def esc_layout(root):
    rows = []
    for fold in (1, 2):
        for c, name in enumerate(CLASSES):
            for take in "AB":
                filename = f"{fold}-{c}{take}-{take}-{c}.wav"
                freq = 220.0 * 2**c * (1.1 if take == "B" else 1.0)
                write_wav(root / "audio" / filename, tone(5.0, freq=freq))
                rows.append([filename, fold, c, name, "True", f"{c}{take}{fold}", take])
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


def test_small_planted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("zeroshot_esc10", None)
    import zeroshot_esc10

    root = esc_layout(tmp_path / "esc")
    figures = zeroshot_esc10.main(
        [
            "--esc10", str(root), "--out", str(tmp_path / "out"), "--steps", "2",
            "--batch-size", "4", "--init", "", "--clip-model", "ViT-S-32", "--skip-control",
            "--workers", "0", "--json",
        ]
    )  # fmt: skip
    for key in ("zero_shot", "zero_shot_ensemble", "text_p_at_5", "probe"):
        assert 0.0 <= figures[key] <= 1.0, key
    assert figures["seconds"] > 0 and figures["main"]["samples_per_s"] > 0
    assert (tmp_path / "out" / "run" / "student.safetensors").is_file()
    assert (tmp_path / "out" / "features" / "features.json").is_file()
    assert '"zero_shot"' in capsys.readouterr().out
