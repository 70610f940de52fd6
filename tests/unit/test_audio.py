import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.errors import AudioError
from soundnet_cli.media.audio import load_audio, tile
from soundnet_cli.media.files import find_audio

from ..conftest import tone, write_wav


def test_resamples_to_22050_and_scales_to_256(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(2.0, 44100, 440, amp=1.0), 44100, "FLOAT")
    wave = load_audio(path)
    assert wave.sample_rate == 22050 and wave.source_rate == 44100
    assert len(wave.samples) == 44100 and wave.duration == pytest.approx(2.0)
    assert wave.samples.dtype == np.float32
    # a full-scale tone stays full scale after resampling: peak about 256
    assert np.abs(wave.samples[1000:-1000]).max() == pytest.approx(256, rel=0.01)


def test_first_channel_by_default_mean_on_request(tmp_path):
    left = tone(1.0, 22050, 300, 0.5)
    right = np.zeros_like(left)
    path = write_wav(tmp_path / "s.wav", np.stack([left, right], 1), 22050, "FLOAT")
    first = load_audio(path)
    mean = load_audio(path, mix="mean")
    assert first.source_channels == 2
    np.testing.assert_allclose(first.samples, left * 256, atol=1e-3)
    np.testing.assert_allclose(mean.samples, left * 128, atol=1e-3)


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_reads_common_formats(tmp_path, fmt, ext):
    path = tmp_path / f"t.{ext}"
    sf.write(str(path), tone(1.0, 44100), 44100, format=fmt)
    wave = load_audio(path)
    assert abs(len(wave.samples) - 22050) < 1200  # codecs may pad a frame
    assert np.abs(wave.samples).max() > 100


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file") as info:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(info.value)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not a sound file")
    with pytest.raises(AudioError, match="cannot read audio") as info:
        load_audio(path)
    assert "notes.wav" in str(info.value)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.flac"):
        load_audio(path)


def test_no_samples(tmp_path):
    path = write_wav(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = tone(0.5)
    data[100] = bad
    path = write_wav(tmp_path / "nan.wav", data, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite") as info:
        load_audio(path)
    assert "nan.wav" in str(info.value)


def test_unknown_mix(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(0.5))
    with pytest.raises(AudioError, match="unknown channel mix"):
        load_audio(path, mix="left")  # type: ignore[arg-type]


def test_tile_is_circular():
    wave = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(tile(wave, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(tile(wave, 3), [0, 1, 2])


def test_find_audio_walks_directories_recursively(tmp_path):
    write_wav(tmp_path / "a" / "x.wav", tone(0.1))
    write_wav(tmp_path / "a" / "b" / "x.wav", tone(0.1))
    (tmp_path / "a" / "readme.txt").write_text("hi")
    explicit = tmp_path / "odd.bin"
    explicit.write_bytes(b"1")
    found = find_audio([tmp_path / "a", explicit])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/b/x.wav",
        "a/x.wav",
        "odd.bin",
    ]
