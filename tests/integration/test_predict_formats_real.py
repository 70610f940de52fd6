"""`soundnet predict --format csv --segments / audacity` with the official model on real ESC-50
clips: one clip as it is (tiled to 20 s), and six clips of different classes joined into 30 s."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.media.audio import load_audio

from .conftest import esc_rows

CLASSES = ("sea_waves", "dog", "church_bells", "helicopter", "crackling_fire", "rooster")


@pytest.fixture
def run():
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(), list(args), catch_exceptions=False)


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    rows = esc_rows("esc50-fold4")
    single = Path(rows[0]["path"])
    picked = [next(r for r in rows if r["category"] == c) for c in CLASSES]
    joined = np.concatenate([load_audio(r["path"]).samples for r in picked])
    long = tmp_path / "joined.wav"
    sf.write(str(long), joined, 22050)
    return [single, long]


def covers(rows: list[dict[str, str]], duration: float) -> None:
    starts = [float(r["start"]) for r in rows]
    assert starts == sorted(starts)
    for head in {r["head"] for r in rows}:
        mine = [r for r in rows if r["head"] == head]
        assert all(float(r["start"]) < float(r["end"]) for r in mine)
        assert float(mine[0]["start"]) == 0.0
        assert float(mine[-1]["end"]) == pytest.approx(duration, abs=1e-3)
        for before, after in zip(mine[:-1], mine[1:], strict=True):
            assert before["end"] == after["start"]


def test_csv_segments_cover_each_clip(run, official_home, clips):
    result = run("predict", *map(str, clips), "--format", "csv", "--segments")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    for clip in clips:
        mine = [r for r in rows if r["path"] == str(clip)]
        assert mine, clip
        covers(mine, sf.info(str(clip)).duration)
    joined = [r for r in rows if r["path"] == str(clips[1]) and r["head"] == "scenes"]
    assert len(joined) >= 2  # six different sounds are not one event


def test_audacity_label_tracks(run, official_home, clips, tmp_path):
    out = tmp_path / "labels"
    result = run("predict", *map(str, clips), "--format", "audacity", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    tracks = sorted(out.rglob("*.txt"))
    assert len(tracks) == 2
    for track in tracks:
        for line in track.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            assert len(fields) == 3  # Audacity's label format: start, end, text
            assert 0 <= float(fields[0]) < float(fields[1]) and fields[2]
