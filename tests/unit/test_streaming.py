"""StreamingAudio: windows of the model-ready waveform equal slices of load_audio, in any
order, at any rate, holding only what the next window needs."""

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.errors import AudioError
from soundnet_cli.media.audio import load_audio
from soundnet_cli.media.streaming import StreamingAudio


@pytest.fixture(params=[22050, 44100, 16001])
def recording(request, tmp_path):
    rate = request.param
    rng = np.random.default_rng(rate)
    data = (0.3 * rng.standard_normal((rate * 7, 2))).astype(np.float32)
    path = tmp_path / f"r{rate}.flac"
    sf.write(str(path), data, rate, subtype="PCM_24")
    return path


@pytest.mark.parametrize("mix", ["first", "mean"])
def test_windows_in_any_order_equal_whole_file_reading(recording, mix):
    whole = load_audio(recording, mix=mix).samples
    with StreamingAudio(recording, mix=mix) as audio:
        audio.BLOCK_FRAMES = 10_000  # several blocks per window
        assert audio.samples == len(whole)
        for start, stop in [(0, 5000), (3000, 70_000), (60_000, 61_000), (100, 200),
                            (len(whole) - 10, len(whole) + 50)]:  # fmt: skip
            window = audio.window(start, stop)
            assert np.array_equal(window, whole[start:stop]), (start, stop)


def test_only_the_window_ahead_is_held(recording):
    with StreamingAudio(recording) as audio:
        audio.BLOCK_FRAMES = 4096
        for start in range(0, audio.samples - 30_000, 20_000):
            audio.window(start, start + 30_000)
            assert len(audio._buffer) < 30_000 + 2 * 4096 * 2  # a window and a block or two


def test_a_truncated_file_is_reported(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(str(path), np.zeros(44100 * 3, dtype=np.float32), 44100, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still promises 3 s
    with StreamingAudio(path) as audio, pytest.raises(AudioError, match="truncated"):
        audio.window(0, audio.samples)
