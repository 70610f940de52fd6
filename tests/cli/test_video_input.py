"""Videos in extract, predict, probe and evaluate: read by their soundtrack, they give what the
audio file gives; a video without sound is reported and the run goes on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree
from ..soundtracks import video_with_soundtrack


def as_video(audio: Path, target: Path, codec: str = "flac") -> Path:
    pcm, rate = sf.read(str(audio), dtype="int16")
    return video_with_soundtrack(target, pcm, rate, codec=codec)


def test_extract_gives_the_audio_files_features(run, named_checkpoint, tmp_path):
    audio = write_wav(tmp_path / "in" / "clip.wav", tone(7.0, rate=44100, freq=523.0), 44100)
    as_video(audio, tmp_path / "in" / "film.mkv")
    as_video(audio, tmp_path / "in" / "pcm.mkv", codec="pcm_s16le")
    video_with_soundtrack(tmp_path / "in" / "silent.mp4", None, seconds=1.0)
    out = tmp_path / "feats"
    result = run(
        "extract", str(tmp_path / "in"), "--out", str(out), "--checkpoint",
        str(named_checkpoint), "-l", "pool5", "-l", "conv7", "--json",
    )  # fmt: skip
    assert result.exit_code == 1  # the silent film failed; the others were extracted
    summary = json.loads(result.stdout)
    assert summary["extracted"] == 3
    assert [f["path"] for f in summary["failures"]] == [str(tmp_path / "in" / "silent.mp4")]
    assert "no audio stream" in summary["failures"][0]["error"]
    for layer in ("pool5", "conv7"):
        reference = np.load(out / f"clip.{layer}.npy")
        for name in ("film", "pcm"):
            got = np.load(out / f"{name}.{layer}.npy")
            assert got.shape == reference.shape
            scale = np.abs(reference).max()
            assert np.abs(got - reference).max() <= 1e-4 * scale


def test_a_long_video_is_streamed_to_the_same_features(run, named_checkpoint, tmp_path):
    audio = write_wav(tmp_path / "in" / "long.wav", tone(40.0, rate=22050, freq=300.0), 22050)
    as_video(audio, tmp_path / "in" / "long.mkv")
    out = tmp_path / "feats"
    result = run(
        "extract", str(tmp_path / "in"), "--out", str(out), "--checkpoint",
        str(named_checkpoint), "--chunk-seconds", "10",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    reference, got = np.load(out / "long.wav.pool5.npy"), np.load(out / "long.mkv.pool5.npy")
    assert got.shape == reference.shape and len(got) > 50
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


def test_predict_gives_the_same_top_labels(run, named_checkpoint, tmp_path):
    audio = write_wav(tmp_path / "clip.wav", tone(25.0, rate=44100, freq=700.0), 44100)
    film = as_video(audio, tmp_path / "clip.mkv")
    silent = video_with_soundtrack(tmp_path / "silent.mkv", None, seconds=1.0)
    ck = ("--checkpoint", str(named_checkpoint))
    result = run("predict", str(audio), str(film), str(silent), *ck, "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert [e["path"] for e in payload["errors"]] == [str(silent)]
    from_audio, from_video = payload["results"]
    assert from_video["path"] == str(film)
    assert from_video["duration"] == from_audio["duration"]
    for a, v in zip(from_audio["steps"], from_video["steps"], strict=True):
        for head_a, head_v in zip(a["heads"], v["heads"], strict=True):
            assert [t["label"] for t in head_a["top"]] == [t["label"] for t in head_v["top"]]
            np.testing.assert_allclose(
                [t["probability"] for t in head_v["top"]],
                [t["probability"] for t in head_a["top"]],
                rtol=1e-4,
                atol=1e-6,
            )


def test_probe_predicts_videos_as_their_audio(run, named_checkpoint, tmp_path):
    root = make_esc_tree(tmp_path / "esc", {"low": 200.0, "high": 4000.0}, per_class=3, folds=2)
    with open(root / "meta" / "esc50.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,group\n"
        + "".join(f"audio/{r['filename']},{r['category']},{r['src_file']}\n" for r in rows)
    )
    probe = tmp_path / "p.probe.npz"
    fitted = run(
        "probe", "fit", str(root), "--labels", str(labels), "--out", str(probe),
        "--checkpoint", str(named_checkpoint), "--C", "1",
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.stderr
    films = tmp_path / "films"
    for audio in sorted((root / "audio").iterdir()):
        as_video(audio, films / f"{audio.stem}.mkv")
    from_audio = json.loads(
        run("probe", "predict", str(probe), str(root / "audio"), "--json").stdout
    )
    from_video = json.loads(run("probe", "predict", str(probe), str(films), "--json").stdout)
    assert len(from_video) == len(from_audio) == len(rows)
    for a, v in zip(from_audio, from_video, strict=True):
        assert Path(a["path"]).stem == Path(v["path"]).stem and a["label"] == v["label"]


def test_evaluate_reads_a_dataset_of_videos(run, named_checkpoint, tmp_path):
    reports = {}
    for kind in ("wav", "mkv"):
        root = tmp_path / kind
        for part, count in (("train", 3), ("test", 2)):
            for label, freq in (("bus", 220.0), ("park", 3000.0)):
                for n in range(count):
                    wave = tone(6.0, freq=freq * (1 + n / 50))
                    wav = write_wav(tmp_path / "src" / part / f"{label}{n + 1:02d}.wav", wave)
                    target = root / part / f"{label}{n + 1:02d}.{kind}"
                    if kind == "wav":
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(wav.read_bytes())
                    else:
                        as_video(wav, target)
        result = run(
            "evaluate", "dcase2013", str(root), "--checkpoint", str(named_checkpoint),
            "--json", "--out", str(tmp_path / f"report-{kind}"),
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        reports[kind] = json.loads(result.stdout)
    assert reports["mkv"]["splits"][0]["n_test"] == 4
    assert reports["mkv"]["summary"] == reports["wav"]["summary"]
