"""Live input: stdin bytes (containers and raw PCM) become the samples of the offline path;
stalls, drops and reconnects are reported; sound cards go through sounddevice only when asked."""

from __future__ import annotations

import io
import logging
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf

from soundnet_cli.errors import AudioError, SoundnetError, UsageProblem
from soundnet_cli.media import live
from soundnet_cli.media.audio import load_audio
from soundnet_cli.media.live import LiveAudio, LiveInput, RawFormat, parse_input

from ..conftest import tone


def wav_bytes(data: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def read_all(audio: LiveAudio) -> np.ndarray:
    return np.concatenate(list(audio.blocks()))


def stereo(seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    left = tone(seconds, rate, 330.0) + 0.05 * rng.standard_normal(int(seconds * rate))
    return np.stack([left, tone(seconds, rate, 880.0)], axis=1).astype(np.float32)


def test_inputs_are_told_apart():
    assert parse_input("-") == LiveInput("stdin", "-")
    assert parse_input("rtsp://cam/stream") == LiveInput("url", "rtsp://cam/stream")
    assert parse_input("HTTP://radio:8000/live.ogg").kind == "url"
    assert parse_input("mic:USB Audio").name == "mic:USB Audio"
    assert parse_input("recordings/a.wav") is None
    assert parse_input("file://x.wav") is None  # a path, not a stream


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16")])
@pytest.mark.parametrize("mix", ["first", "mean"])
def test_a_container_on_stdin_equals_the_file_read_offline(tmp_path, fmt, subtype, mix):
    data = stereo(3.0, 44100)
    blob = wav_bytes(data, 44100, fmt, subtype)
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(blob)
    offline = load_audio(path, mix=mix).samples
    streamed = read_all(LiveAudio(LiveInput("stdin", "-"), mix=mix, stdin=io.BytesIO(blob)))
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-4 * np.abs(offline).max()


@pytest.mark.parametrize(("encoding", "subtype"), [("s16le", "PCM_16"), ("f32le", "FLOAT")])
def test_raw_pcm_equals_the_same_samples_in_a_wav(tmp_path, encoding, subtype):
    data = stereo(2.0, 16000)
    path = tmp_path / "clip.wav"
    sf.write(str(path), data, 16000, subtype=subtype)
    dtype = "int16" if encoding == "s16le" else "float32"
    raw = sf.read(str(path), dtype=dtype)[0].astype(f"<{'i2' if dtype == 'int16' else 'f4'}")
    stdin = io.BytesIO(raw.tobytes() + b"\x01")  # a trailing partial frame is dropped
    audio = LiveAudio(LiveInput("stdin", "-"), raw=RawFormat(encoding, 16000, 2), stdin=stdin)
    streamed = read_all(audio)
    offline = load_audio(path).samples
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-4 * np.abs(offline).max()


def test_garbage_and_a_container_given_as_raw_are_one_line_errors():
    garbage = io.BytesIO(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(AudioError, match="cannot read audio"):
        read_all(LiveAudio(LiveInput("stdin", "-"), stdin=garbage))
    blob = io.BytesIO(wav_bytes(tone(0.5), 22050))
    audio = LiveAudio(LiveInput("stdin", "-"), raw=RawFormat("s16le", 22050, 1), stdin=blob)
    with pytest.raises(AudioError, match="starts like a WAV file"):
        read_all(audio)
    for bad in [("s24le", 8000, 1), ("s16le", 0, 1), ("s16le", 8000, 0)]:
        with pytest.raises(UsageProblem):
            RawFormat(*bad)
    with pytest.raises(UsageProblem, match="reconnect"):
        LiveAudio(LiveInput("stdin", "-"), reconnect=True)


class SlowPipe(io.RawIOBase):
    """Raw PCM that arrives in two parts with a pause between them."""

    def __init__(self, first: bytes, second: bytes, pause: float) -> None:
        self.parts = [first, second]
        self.pause = pause

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.parts:
            return b""
        if len(self.parts) == 1:
            time.sleep(self.pause)
        return self.parts.pop(0)


def test_a_stall_is_reported_with_a_timestamp(caplog):
    pcm = (tone(0.5) * 32767).astype("<i2").tobytes()
    audio = LiveAudio(
        LiveInput("stdin", "-"),
        raw=RawFormat("s16le", 22050, 1),
        stall_seconds=0.2,
        stdin=SlowPipe(pcm, pcm, pause=0.6),  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger="soundnet_cli.media.live"):
        samples = read_all(audio)
    assert len(samples) == 2 * 11025
    messages = [r.getMessage() for r in caplog.records]
    stalled = [m for m in messages if "no audio for 0.2 s" in m]
    assert len(stalled) == 1 and stalled[0].startswith("[20")  # [YYYY-MM-DDTHH:MM:SSZ]
    assert any("audio again after" in m for m in messages)


def fake_sounddevice(blocks: list[np.ndarray]) -> types.ModuleType:
    module = types.ModuleType("sounddevice")
    cards = [
        {"name": "Built-in Output", "max_input_channels": 0, "max_output_channels": 2,
         "default_samplerate": 48000.0},
        {"name": "USB Mic", "max_input_channels": 1, "max_output_channels": 0,
         "default_samplerate": 16000.0},
    ]  # fmt: skip

    def query_devices(device=None, kind=None):
        if device is None:
            return cards
        for index, card in enumerate(cards):
            if device in (index, card["name"]) and card["max_input_channels"] > 0:
                return card
        raise ValueError(f"No input device matching {device!r}")

    class InputStream:
        def __init__(self, callback, **kwargs):
            self.callback = callback

        def __enter__(self):
            for block in blocks:
                self.callback(block, len(block), None, None)
            return self

        def __exit__(self, *exc):
            return False

    module.query_devices = query_devices  # type: ignore[attr-defined]
    module.InputStream = InputStream  # type: ignore[attr-defined]
    module.default = types.SimpleNamespace(device=(1, 0))  # type: ignore[attr-defined]
    return module


def test_a_sound_card_is_read_through_sounddevice(monkeypatch):
    block = tone(0.25, 16000)[:, None]
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([block, block]))
    devices = live.list_devices()
    assert [d["name"] for d in devices] == ["Built-in Output", "USB Mic"]
    assert devices[1]["default_input"] and devices[1]["inputs"] == 1
    audio = LiveAudio(LiveInput("device", "USB Mic"), stall_seconds=0.3)
    got = []
    for samples in audio.blocks():
        got.append(samples)
        if sum(map(len, got)) >= 2 * 0.25 * 22050 - 2000:
            break
    assert sum(map(len, got)) > 0.4 * 22050
    with pytest.raises(UsageProblem, match="no input device 'Nope'.*'USB Mic'"):
        live.check_device("Nope")


def test_without_sounddevice_a_card_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails
    with pytest.raises(SoundnetError, match=r"pip install 'soundnet-cli\[live\]'"):
        live.list_devices()


def test_sounddevice_is_never_imported_unless_asked():
    import subprocess

    code = (
        "import sys, soundnet_cli.media.live, soundnet_cli.cli.main as m; m.build_app(); "
        "assert 'sounddevice' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_matroska_from_a_pipe_equals_the_same_pcm_in_a_wav(tmp_path):
    import av

    data = (stereo(2.0, 32000)[:, 0] * 32767).astype(np.int16)
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), data, 32000, subtype="PCM_16")
    mkv = tmp_path / "clip.mkv"
    with av.open(str(mkv), "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=32000, layout="mono")
        for at in range(0, len(data), 4096):
            frame = av.AudioFrame.from_ndarray(data[None, at : at + 4096], "s16", "mono")
            frame.sample_rate = 32000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    stdin = io.BytesIO(mkv.read_bytes())
    streamed = read_all(LiveAudio(LiveInput("stdin", "-"), stdin=stdin))
    offline = load_audio(wav).samples
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-4 * np.abs(offline).max()
