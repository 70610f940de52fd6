from pathlib import Path

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


UNUSUAL_RATES = [7919, 16001, 44101, 96000]


def band_limited(rate: int, seconds: float, times=None) -> np.ndarray:
    """A sum of tones below 3.5 kHz (inside every rate's band), sampled at ``rate`` or at
    ``times``: the exact reference for any resampling of it."""
    t = np.arange(int(seconds * rate)) / rate if times is None else times
    freqs, amps = (110.0, 440.0, 1234.5, 3300.0), (0.3, 0.25, 0.2, 0.1)
    return sum(a * np.sin(2 * np.pi * f * t + f / 1000) for f, a in zip(freqs, amps, strict=True))


@pytest.mark.parametrize("rate", UNUSUAL_RATES)
def test_any_rate_resamples_close_to_the_exact_signal(tmp_path, rate):
    path = write_wav(tmp_path / f"r{rate}.wav", band_limited(rate, 2.0), rate, "FLOAT")
    wave = load_audio(path)
    assert len(wave.samples) == round(2.0 * 22050)
    exact = 256 * band_limited(rate, 2.0, np.arange(len(wave.samples)) / 22050)
    inner = slice(2205, -2205)  # the file's edges are not band-limited
    assert np.abs(wave.samples[inner] - exact[inner]).max() <= 2e-3 * np.abs(exact).max()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_unusual_rates_extract_in_bounded_memory(tmp_path):
    """2-s files at rates that share no factor with 22,050 Hz: before soxr, 16,001 Hz took
    12 GB (a windowed-sinc kernel with one phase per output sample of the reduced ratio)."""
    import subprocess
    import sys

    for rate in UNUSUAL_RATES:
        write_wav(tmp_path / "in" / f"r{rate}.wav", band_limited(rate, 2.0), rate, "FLOAT")
    script = (
        "import sys, torch\n"
        "from soundnet_cli.extraction.engine import extract\n"
        "from soundnet_cli.students import soundnet8\n"
        "torch.manual_seed(0)\n"
        "s = extract([sys.argv[1]], ['pool5'], sys.argv[2], model=soundnet8().eval())\n"
        "assert s.extracted == 4 and not s.failures, s.as_dict()\n"
        # VmHWM: this process's own peak (ru_maxrss would include the parent's, forked)
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in"), str(tmp_path / "out")],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert len(list((tmp_path / "out").glob("*.pool5.npy"))) == 4


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("WAV", "FLOAT")],
)
def test_integer_reads_give_libsndfiles_own_floats(tmp_path, fmt, subtype):
    """16-bit files are read as integers and scaled by us: bit for bit libsndfile's floats,
    including the extremes (-32768 and 32767); other encodings take libsndfile's path."""
    from soundnet_cli.media.audio import read_float

    rng = np.random.default_rng(5)
    data = rng.uniform(-1, 1, (3000, 2)).astype(np.float32)
    data[:2] = [[-1.0, 1.0], [32767 / 32768, -32767 / 32768]]
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, 16000, format=fmt, subtype=subtype)
    with sf.SoundFile(path) as handle:
        expected = handle.read(dtype="float32", always_2d=True)
        handle.seek(0)
        ours = read_float(handle)
        handle.seek(100)
        part = read_float(handle, 500)
    assert ours.dtype == np.float32 and np.array_equal(ours, expected)
    assert np.array_equal(part, expected[100:600])
