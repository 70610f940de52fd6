"""Videos read by their first audio stream: the same samples as the audio file they carry, in
one piece or streamed in bounded memory; a video without sound is an error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.errors import SoundnetError
from soundnet_cli.media import video
from soundnet_cli.media.audio import decode, load_audio, open_audio
from soundnet_cli.media.files import MEDIA_EXTENSIONS, find_media
from soundnet_cli.media.streaming import StreamingAudio
from soundnet_cli.media.video import Soundtrack

from ..soundtracks import video_with_soundtrack


def noise_pcm(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal((int(seconds * rate), channels)) * 6000).astype(np.int16)
    return pcm[:, 0] if channels == 1 else pcm


@pytest.mark.parametrize(("codec", "channels"), [("flac", 1), ("pcm_s16le", 2)])
def test_decode_gives_the_audio_file_sample_for_sample(
    tmp_path: Path, codec: str, channels: int
) -> None:
    pcm = noise_pcm(3.0, 44100, channels)
    film = video_with_soundtrack(tmp_path / "clip.mkv", pcm, 44100, codec=codec)
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), pcm, 44100, subtype="PCM_16")
    from_video, rate = decode(film)
    from_audio, _ = decode(wav)
    assert rate == 44100 and from_video.shape == from_audio.shape == (len(pcm), channels)
    np.testing.assert_array_equal(from_video, from_audio)
    np.testing.assert_array_equal(load_audio(film).samples, load_audio(wav).samples)


def test_a_long_soundtrack_streams_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pcm = noise_pcm(4.0, 22050, seed=3)
    film = video_with_soundtrack(tmp_path / "long.mkv", pcm, 22050)
    monkeypatch.setattr(video, "CACHE_BYTES", 1000)  # too small to keep: decode twice
    with open_audio(film) as track:
        assert isinstance(track, Soundtrack)
        assert track.frames == len(pcm) and track._cache is None
        first = track.read(1000)
        rest = track.read()
        assert track.read(10).shape == (0, 1)
        track.seek(0)
        again = track.read(1000)
    np.testing.assert_array_equal(np.concatenate([first, rest])[:, 0] * 32768, pcm)
    np.testing.assert_array_equal(again, first)
    whole = load_audio(film).samples
    with StreamingAudio(film) as audio:
        assert audio.samples == len(whole)
        windows = [audio.window(a, a + 30000) for a in range(0, audio.samples, 25000)]
    for start, window in zip(range(0, len(whole), 25000), windows, strict=True):
        np.testing.assert_allclose(window, whole[start : start + 30000], rtol=0, atol=1e-4)


def test_a_video_without_sound_is_an_error_naming_it(tmp_path: Path) -> None:
    film = video_with_soundtrack(tmp_path / "silent.mkv", None, seconds=1.0)
    with pytest.raises(SoundnetError, match=r"silent\.mkv: the video has no audio stream"):
        load_audio(film)
    with pytest.raises(SoundnetError, match="no audio stream"):
        StreamingAudio(film)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really")
    with pytest.raises(SoundnetError, match=r"broken\.mp4"):
        load_audio(tmp_path / "broken.mp4")


def test_folders_list_videos_by_default(tmp_path: Path) -> None:
    for name in ("a.wav", "b.mp4", "c.MKV", "d.webm", "e.mov", "f.avi", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_media([tmp_path])] == [
        "a.wav", "b.mp4", "c.MKV", "d.webm", "e.mov", "f.avi"
    ]  # fmt: skip
    assert {".mp4", ".mkv", ".webm", ".mov", ".avi", ".wav"} <= set(MEDIA_EXTENSIONS)
