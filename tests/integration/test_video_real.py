"""Real ESC-50 clips inside MKV videos (FLAC soundtrack, lossless): the official model extracts
the same features (max relative error 1e-4) and predicts the same top labels as from the
audio files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from soundnet_cli.extraction.engine import extract
from soundnet_cli.media.audio import load_audio
from soundnet_cli.students.predict import predict_waveform

from ..soundtracks import video_with_soundtrack
from .conftest import esc_rows


def clips(tmp_path: Path, count: int = 3) -> list[tuple[Path, Path]]:
    pairs = []
    for row in esc_rows("esc50-fold4")[:count]:
        audio = Path(row["path"])
        pcm, rate = sf.read(str(audio), dtype="int16")
        film = video_with_soundtrack(tmp_path / "films" / f"{audio.stem}.mkv", pcm, rate)
        pairs.append((audio, film))
    return pairs


def test_extract_features_equal(official_model, tmp_path):
    pairs = clips(tmp_path)
    for name, inputs in (("audio", [a for a, _ in pairs]), ("video", [v for _, v in pairs])):
        summary = extract(inputs, ["pool5", "conv7"], tmp_path / name, model=official_model)
        assert not summary.failures
    for audio, _ in pairs:
        for layer in ("pool5", "conv7"):
            reference = np.load(tmp_path / "audio" / f"{audio.stem}.{layer}.npy")
            got = np.load(tmp_path / "video" / f"{audio.stem}.{layer}.npy")
            assert got.shape == reference.shape
            assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


def test_predict_same_top_labels(official_model, tmp_path):
    for audio, film in clips(tmp_path, count=2):
        a = predict_waveform(official_model, load_audio(audio), top_k=5)
        v = predict_waveform(official_model, load_audio(film), top_k=5)
        assert [h.labels for h in v.summary] == [h.labels for h in a.summary]
        for step_a, step_v in zip(a.steps, v.steps, strict=True):
            assert [h.labels[0] for h in step_v.heads] == [h.labels[0] for h in step_a.heads]
