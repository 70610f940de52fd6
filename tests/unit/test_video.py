"""PyAV decoding: soundtracks at 22,050 Hz mono int16, and frames at the requested times (the
test videos' grey level encodes the frame number, so the colour tells the time)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soundnet_cli.errors import VideoError
from soundnet_cli.media import video
from soundnet_cli.media.files import find_videos

from ..videos import FPS, frame_index, make_video, truncate

FORMATS = [".mp4", ".webm", ".mkv"]  # H.264 + AAC, VP9 + Opus, H.264 + Opus


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {suffix: make_video(folder / f"clip{suffix}", 6.0) for suffix in FORMATS}


@pytest.mark.parametrize("suffix", FORMATS)
def test_probe(clips, suffix):
    info = video.probe(clips[suffix])
    assert info.has_audio and info.has_video
    assert (info.width, info.height) == (64, 48) and info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(6.0, abs=0.05)


@pytest.mark.parametrize("suffix", FORMATS)
def test_audio_is_22050_hz_mono_int16(clips, suffix):
    samples = video.read_audio(clips[suffix])
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert len(samples) == pytest.approx(6.0 * 22050, abs=0.05 * 22050)  # AAC adds priming
    middle = samples[22050:110250].astype(np.float64) / 32768
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * 22050 / len(middle) == pytest.approx(440, abs=2)
    # first channel (amplitude 0.25) as the release; mean of the two (0.25, 0.5) on request
    assert math.sqrt(2) * middle.std() == pytest.approx(0.25, abs=0.01)
    mean = video.read_audio(clips[suffix], mix="mean")[22050:110250].astype(np.float64) / 32768
    assert math.sqrt(2) * mean.std() == pytest.approx(0.375, abs=0.01)


@pytest.mark.parametrize("suffix", FORMATS)
def test_frames_at_requested_times(clips, suffix):
    times = [0.0, 0.55, 1.25, 2.5, 4.95, 5.45, 2.05, 5.95]  # out of order too: each one seeks
    pictures, found = video.read_frames(clips[suffix], times)
    assert pictures.shape == (len(times), 48, 64, 3) and pictures.dtype == np.uint8
    expected = [int(math.floor(t * FPS + 1e-9)) for t in times]
    assert [frame_index(p) for p in pictures] == expected
    assert found == pytest.approx([n / FPS for n in expected])


def test_frames_past_the_end_are_not_invented(clips):
    pictures, found = video.read_frames(clips[".webm"], [1.0, 30.0])
    assert len(pictures) == 1 and found == [1.0]


def test_no_audio_stream(tmp_path):
    path = make_video(tmp_path / "silent.mp4", 2.0, audio=False)
    assert not video.probe(path).has_audio
    with pytest.raises(VideoError, match="no audio stream"):
        video.read_audio(path)


def test_no_video_stream(tmp_path):
    path = make_video(tmp_path / "sound.mkv", 2.0, video=False)
    assert not video.probe(path).has_video
    with pytest.raises(VideoError, match="no video stream"):
        video.read_frames(path, [0.5])


def test_empty_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        video.probe(tmp_path / "empty.mp4")
    with pytest.raises(VideoError, match="no such file"):
        video.read_audio(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError, match="cannot open"):
        video.read_audio(tmp_path / "junk.mp4")


def test_truncated_videos(tmp_path):
    # mp4 keeps its index at the end: cut in half, it cannot be opened
    with pytest.raises(VideoError, match="cannot open"):
        video.probe(truncate(make_video(tmp_path / "cut.mp4", 6.0)))
    # Matroska streams: what is left decodes, and no frame past the cut is invented
    path = truncate(make_video(tmp_path / "cut.mkv", 6.0))
    samples = video.read_audio(path)
    assert 1.0 * 22050 < len(samples) < 5.0 * 22050
    pictures, found = video.read_frames(path, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    assert 1 <= len(pictures) < 6
    assert [frame_index(p) for p in pictures] == [5, 15, 25, 35, 45, 55][: len(pictures)]


def test_find_videos(tmp_path):
    for name in ("b/x.mp4", "a.webm", "c.MKV", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_videos([tmp_path, tmp_path / "notes.txt"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.webm",
        "b/x.mp4",
        "c.MKV",
        "notes.txt",
    ]


def test_int16_to_model_scale():
    assert video.int16_to_model(np.array([-32768, 0, 16384], np.int16)).tolist() == [
        -256.0,
        0.0,
        128.0,
    ]
