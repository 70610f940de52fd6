"""Live and streamed sound: stdin, stream URLs and sound cards, read block by block into the
model-ready waveform (mono, 22,050 Hz, x256) without ever holding the whole stream.

The samples equal those of the offline path (``audio.load_audio``) for the same bytes:
integer PCM is scaled as libsndfile scales it, channels are mixed by ``audio.to_mono``, and
libsoxr's streaming resampler gives the same output whatever the block sizes.

Inputs (:func:`parse_input`):

- ``-``: stdin, a container PyAV reads from a pipe (WAV, FLAC, OGG, Matroska, ...) or raw PCM
  described by a :class:`RawFormat`;
- a stream URL PyAV opens (``rtsp://``, ``http(s)://`` Icecast/HLS, ``srt://``, ...);
- ``mic:NAME``: a sound card through the optional ``sounddevice`` package (imported only here,
  only when asked for).

A reader thread decodes into a bounded queue (so memory stays bounded whatever the input's
speed). The consumer reports a stall (no audio for ``stall_seconds``), a drop and a reconnect
with a timestamped log line; ``reconnect=True`` reopens a URL with exponential back-off.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError, UsageProblem, reason
from soundnet_cli.media.audio import RESAMPLE_QUALITY, SAMPLE_RATE, SCALE, Mix, to_mono

log = logging.getLogger(__name__)

STDIN = "-"
DEVICE_PREFIX = "mic:"
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp")
# Raw PCM encodings: numpy dtype and the factor that maps them to [-1, 1] as libsndfile does.
RAW_FORMATS: dict[str, tuple[str, float]] = {
    "s16le": ("<i2", 1 / 32768),
    "s32le": ("<i4", 1 / 2147483648),
    "f32le": ("<f4", 1.0),
}
# What the first bytes of a container look like, to catch --raw-format given for one.
CONTAINER_MAGIC = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "OGG", b"\x1aE\xdf\xa3": "Matroska"}
RAW_BLOCK_FRAMES = 4096
QUEUE_BLOCKS = 64  # decoded blocks in flight between the reader thread and the consumer
STALL_SECONDS = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
# Small probes: a pipe or a live stream should start within a fraction of a second.
PROBE_OPTIONS = {"probesize": "32768", "analyzeduration": "0"}


@dataclass(frozen=True)
class RawFormat:
    """Headerless PCM on stdin: an encoding of :data:`RAW_FORMATS`, a rate and channels."""

    encoding: str
    rate: int
    channels: int

    def __post_init__(self) -> None:
        if self.encoding not in RAW_FORMATS:
            raise UsageProblem(
                f"raw format must be one of {', '.join(RAW_FORMATS)}, not {self.encoding!r}"
            )
        if self.rate <= 0:
            raise UsageProblem(f"a raw stream's rate must be positive, not {self.rate}")
        if self.channels <= 0:
            raise UsageProblem(f"a raw stream's channels must be positive, not {self.channels}")

    @property
    def frame_bytes(self) -> int:
        return np.dtype(RAW_FORMATS[self.encoding][0]).itemsize * self.channels


@dataclass(frozen=True)
class LiveInput:
    """Where live audio comes from: ``kind`` is stdin, url or device."""

    kind: str
    target: str

    @property
    def name(self) -> str:
        """How rows and messages name the input: ``-``, the URL or ``mic:NAME``."""
        return f"{DEVICE_PREFIX}{self.target}" if self.kind == "device" else self.target


def parse_input(text: str) -> LiveInput | None:
    """The live input ``text`` names (``-``, a stream URL, ``mic:NAME``), or None for a path."""
    if text == STDIN:
        return LiveInput("stdin", STDIN)
    if text.startswith(DEVICE_PREFIX):
        return LiveInput("device", text[len(DEVICE_PREFIX) :])
    scheme, sep, rest = text.partition("://")
    if sep and rest and scheme.lower() in URL_SCHEMES:
        return LiveInput("url", text)
    return None


def output_name(name: str) -> str:
    """A file name for the outputs of a live input called ``name``: ``stdin`` for ``-``,
    ``mic-NAME`` for a sound card, a URL's host and path with other characters replaced."""
    if name == STDIN:
        return "stdin"
    text = re.sub(r"^[a-z0-9+.-]+://", "", name, flags=re.IGNORECASE)
    text = text.replace(DEVICE_PREFIX, "mic-", 1) if text.startswith(DEVICE_PREFIX) else text
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return text or "stream"


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block is done (what it computes and writes stays whole), then
    raise it. A no-op outside the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _report(message: str) -> None:
    log.warning("[%s] %s", utc_stamp(), message)


# -- decoding ---------------------------------------------------------------------------------
def stdin_bytes() -> BinaryIO:
    """stdin as an unbuffered binary file: the reader thread may still be blocked in a read
    when the process exits, and a buffered reader's lock would then abort the interpreter."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test runner
        return sys.stdin.buffer
    return open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115


def raw_blocks(stream: BinaryIO, fmt: RawFormat, name: str = STDIN) -> Iterator[np.ndarray]:
    """Float32 (frames, channels) blocks of headerless PCM until EOF."""
    dtype, factor = RAW_FORMATS[fmt.encoding]
    size = fmt.frame_bytes
    pending = b""
    first = True
    while True:
        data = stream.read(RAW_BLOCK_FRAMES * size)
        if not data:
            break
        if first:
            first = False
            for magic, kind in CONTAINER_MAGIC.items():
                if data.startswith(magic):
                    raise AudioError(
                        f"{name}: starts like a {kind} file, not raw PCM; leave out the raw "
                        "format to read the container"
                    )
        data = pending + data
        whole = len(data) // size * size
        pending = data[whole:]
        if whole:
            ints = np.frombuffer(data[:whole], dtype=dtype).reshape(-1, fmt.channels)
            block = ints.astype(np.float32)
            if factor != 1.0:
                block *= np.float32(factor)
            yield block
    if pending:
        log.warning("%s: dropped %d trailing bytes (less than one frame)", name, len(pending))


_SAMPLE_SCALE = {"s16": 1 / 32768, "s32": 1 / 2147483648, "u8": 1 / 128}


def frame_samples(frame: Any) -> np.ndarray:
    """A decoded PyAV audio frame as float32 (frames, channels) in [-1, 1] (integer PCM
    scaled as libsndfile scales it, so a WAV piped in equals the same file read offline)."""
    array = frame.to_ndarray()
    fmt = frame.format.name
    channels = len(frame.layout.channels)
    data = array.T if frame.format.is_planar else array.reshape(-1, channels)
    base = fmt.rstrip("p")
    if base == "u8":
        out = (data.astype(np.float32) - 128) * np.float32(_SAMPLE_SCALE["u8"])
    elif base in _SAMPLE_SCALE:
        out = data.astype(np.float32) * np.float32(_SAMPLE_SCALE[base])
    else:  # flt, dbl
        out = data.astype(np.float32)
    return np.ascontiguousarray(out)


def container_blocks(source: Any, name: str) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 (frames, channels), rate) blocks of the first audio stream PyAV finds in
    ``source`` (a URL or a binary file object such as stdin) until it ends."""
    import av

    try:
        container = av.open(source, mode="r", options=PROBE_OPTIONS, timeout=(10.0, 10.0))
    except Exception as exc:
        raise AudioError(f"{name}: cannot read audio ({reason(exc)})") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{name}: the stream holds no audio")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                data = frame_samples(frame)
                if len(data):
                    yield data, int(frame.sample_rate)
        except (av.error.EOFError, av.error.ExitError):
            return
        except av.error.FFmpegError as exc:
            if isinstance(source, str):  # a network stream that broke: a drop, not garbage
                _report(f"{name}: the stream broke off ({reason(exc)})")
                return
            raise AudioError(f"{name}: cannot read audio ({reason(exc)})") from exc


def import_sounddevice() -> Any:
    """The optional ``sounddevice`` module, or a one-line error saying how to install it."""
    try:
        import sounddevice
    except ImportError as exc:
        raise SoundnetError(
            "sound card input needs the optional sounddevice package: "
            "pip install 'soundnet-cli[live]'"
        ) from exc
    except OSError as exc:  # PortAudio missing
        raise SoundnetError(f"sound card input is unavailable: {reason(exc)}") from exc
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """Every sound card sounddevice sees: index, name, input/output channels, default rate."""
    sd = import_sounddevice()
    defaults = getattr(sd.default, "device", (None, None))
    default_input = defaults[0] if isinstance(defaults, (list, tuple)) else defaults
    return [
        {
            "index": index,
            "name": str(info["name"]),
            "inputs": int(info["max_input_channels"]),
            "outputs": int(info["max_output_channels"]),
            "rate": float(info["default_samplerate"]),
            "default_input": index == default_input,
        }
        for index, info in enumerate(sd.query_devices())
    ]


def check_device(name: str) -> dict[str, Any]:
    """The input device called (or numbered) ``name``; UsageProblem naming the choices if none."""
    sd = import_sounddevice()
    key: int | str = int(name) if name.isdigit() else name
    try:
        info = sd.query_devices(key, "input")
    except ValueError as exc:
        names = [d["name"] for d in list_devices() if d["inputs"] > 0]
        listing = ", ".join(repr(n) for n in names) if names else "none"
        raise UsageProblem(
            f"no input device {name!r} ({reason(exc)}); input devices: {listing} "
            "(see `soundnet devices`)"
        ) from exc
    return dict(info)


def device_blocks(
    name: str, stop: threading.Event, channels: int | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 (frames, channels), rate) blocks recorded from input device ``name``."""
    sd = import_sounddevice()
    info = check_device(name)
    rate = int(info["default_samplerate"])
    channels = channels or max(1, min(2, int(info["max_input_channels"])))
    captured: queue.Queue[np.ndarray] = queue.Queue(maxsize=QUEUE_BLOCKS)

    def callback(indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        if status:
            _report(f"{DEVICE_PREFIX}{name}: {status}")
        try:
            captured.put_nowait(indata.copy())
        except queue.Full:
            _report(f"{DEVICE_PREFIX}{name}: audio dropped (the model fell behind)")

    key: int | str = int(name) if name.isdigit() else name
    with sd.InputStream(
        device=key, channels=channels, samplerate=rate, dtype="float32", callback=callback
    ):
        while not stop.is_set():
            try:
                yield captured.get(timeout=0.5), rate
            except queue.Empty:
                continue


# -- the live audio -----------------------------------------------------------------------------
@dataclass
class _Item:
    kind: str  # data, end, error, opened, dropped
    data: np.ndarray | None = None
    rate: int = 0
    error: BaseException | None = None


class LiveAudio:
    """Model-ready samples (float32 mono at ``sample_rate``, x256) of a live input, in blocks.

    ``blocks()`` yields each block as it arrives and ends at the end of the stream; with
    ``reconnect`` a URL that ends or fails is reopened with back-off (0.5 s doubling to 30 s)
    until the consumer stops. ``samples`` counts what was yielded so far.
    """

    def __init__(
        self,
        source: LiveInput,
        *,
        raw: RawFormat | None = None,
        mix: Mix = "first",
        reconnect: bool = False,
        stall_seconds: float = STALL_SECONDS,
        sample_rate: int = SAMPLE_RATE,
        stdin: BinaryIO | None = None,
    ) -> None:
        if raw is not None and source.kind != "stdin":
            raise UsageProblem("a raw format describes stdin; it cannot go with a URL or device")
        if reconnect and source.kind != "url":
            raise UsageProblem("reconnecting needs a stream URL (not stdin or a sound card)")
        self.source = source
        self.raw = raw
        self.mix = mix
        self.reconnect = reconnect
        self.stall_seconds = stall_seconds
        self.sample_rate = sample_rate
        self.samples = 0
        self._stdin = stdin
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_BLOCKS)
        self._stop = threading.Event()
        self._resampler: Any = None
        self._rate = 0

    # reader thread ---------------------------------------------------------------------------
    def _put(self, item: _Item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _decoded(self) -> Iterator[tuple[np.ndarray, int]]:
        source = self.source
        if source.kind == "device":
            return device_blocks(source.target, self._stop)
        if source.kind == "url":
            return container_blocks(source.target, source.name)
        stream = self._stdin if self._stdin is not None else stdin_bytes()
        if self.raw is not None:
            rate = self.raw.rate
            return ((block, rate) for block in raw_blocks(stream, self.raw, source.name))
        return container_blocks(stream, source.name)

    def _read(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            opened = False
            try:
                for data, rate in self._decoded():
                    if not opened:
                        opened = True
                        delay = BACKOFF_FIRST
                        self._put(_Item("opened"))
                    if not self._put(_Item("data", data, rate)):
                        return
            except BaseException as exc:  # handed to the consumer, raised there
                if not (self.reconnect and isinstance(exc, SoundnetError)):
                    self._put(_Item("error", error=exc))
                    return
                _report(f"{self.source.name}: {exc}; retrying in {delay:g} s")
            else:
                if not self.reconnect:
                    self._put(_Item("end"))
                    return
                if opened:
                    self._put(_Item("dropped"))
                    _report(f"{self.source.name}: the stream ended; reconnecting in {delay:g} s")
            if self._stop.wait(delay):
                return
            delay = min(BACKOFF_MAX, delay * 2)

    # consumer --------------------------------------------------------------------------------
    def _model_ready(self, data: np.ndarray, rate: int) -> np.ndarray:
        """Mono, resampled (streaming), scaled; a change of source rate restarts the
        resampler after flushing what the old one holds."""
        import soxr

        pieces = []
        if rate != self._rate:
            if self._resampler is not None:
                pieces.append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
                log.warning("%s: the sample rate changed to %d Hz", self.source.name, rate)
            self._rate = rate
            self._resampler = (
                None
                if rate == self.sample_rate
                else soxr.ResampleStream(
                    rate, self.sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
                )
            )
        mono = to_mono(data, self.mix)
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.source.name}: the audio contains NaN or infinite samples")
        pieces.append(mono if self._resampler is None else self._resampler.resample_chunk(mono))
        out = np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy()
        out *= np.float32(SCALE)
        return out

    def _flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = None
        return np.asarray(out, dtype=np.float32) * np.float32(SCALE)

    def blocks(self, now: Callable[[], float] = time.monotonic) -> Iterator[np.ndarray]:
        """Model-ready blocks until the stream ends (or the consumer stops iterating)."""
        reader = threading.Thread(target=self._read, name="soundnet-live-reader", daemon=True)
        reader.start()
        stalled_since: float | None = None
        dropped_at: float | None = None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.stall_seconds)
                except queue.Empty:
                    if stalled_since is None and dropped_at is None:
                        stalled_since = now() - self.stall_seconds
                        _report(
                            f"{self.source.name}: no audio for {self.stall_seconds:g} s "
                            f"(stalled at {self.samples / self.sample_rate:.1f} s of audio)"
                        )
                    continue
                if item.kind == "data":
                    assert item.data is not None
                    if stalled_since is not None:
                        _report(
                            f"{self.source.name}: audio again after "
                            f"{now() - stalled_since:.1f} s without"
                        )
                        stalled_since = None
                    block = self._model_ready(item.data, item.rate)
                    self.samples += len(block)
                    if len(block):
                        yield block
                elif item.kind == "dropped":
                    dropped_at = now()
                    _report(
                        f"{self.source.name}: dropped at {self.samples / self.sample_rate:.1f} s "
                        "of audio"
                    )
                elif item.kind == "opened" and dropped_at is not None:
                    _report(
                        f"{self.source.name}: reconnected after a gap of {now() - dropped_at:.1f}"
                        f" s; rows go on from {self.samples / self.sample_rate:.1f} s of audio "
                        "(the gap is not in the timeline)"
                    )
                    dropped_at = None
                    stalled_since = None
                elif item.kind == "error":
                    assert item.error is not None
                    raise item.error
                elif item.kind == "end":
                    tail = self._flush()
                    self.samples += len(tail)
                    if len(tail):
                        yield tail
                    return
        finally:
            self._stop.set()

    def drain(self) -> np.ndarray:
        """After the consumer stopped early (Ctrl-C): the samples the resampler still holds,
        as if the stream had ended there (what a file cut at that point would give)."""
        tail = self._flush()
        self.samples += len(tail)
        return tail

    def close(self) -> None:
        self._stop.set()
