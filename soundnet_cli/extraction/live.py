"""`soundnet extract` on live input (stdin, a stream URL, a sound card): the features of audio
that is still arriving, equal to those of the same audio read from a file.

The audio (``media/live.py``) goes through :class:`~soundnet_cli.extraction.streamed.
StreamedFeatures`, which hands out each layer's steps once they are exact. Two ways to write
them into the features folder (``extraction/folder.py``):

* whole (the default): the stream is read to its end (or Ctrl-C) and written as one input
  called ``name`` (``stdin`` for ``-``), exactly as a file would be; the steps wait in a spool
  file per layer in the folder, so memory stays bounded however long the stream;
* ``follow``: each batch of exact steps is written at once as a *piece*, an input of its own
  keyed ``<name>/<NNNNNN>`` whose steps continue the stream's (``FeatureFolder.write_piece``),
  so a reader can tail the folder. Memory holds one chunk.

Ctrl-C ends the input there: the steps the audio so far determines are written (whole: a
piece or an output being written when it arrives is finished first) and the caller is told.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from soundnet_cli.errors import AudioError, UsageProblem
from soundnet_cli.extraction.engine import (
    _check_length,
    _check_settings,
    _default_model,
    folder_settings,
    window_pool,
)
from soundnet_cli.extraction.folder import MAX_OUTPUT_NAME, SUFFIX_RESERVE, FeatureFolder
from soundnet_cli.extraction.inputs import Source
from soundnet_cli.extraction.streamed import StreamedFeatures
from soundnet_cli.media.live import LiveAudio, deferred_interrupt, output_name, utc_stamp
from soundnet_cli.students.contract import feature_of

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

log = logging.getLogger(__name__)

DEFAULT_LIVE_CHUNK_SECONDS = 6.0
SPOOL = ".live-spool"
SPOOL_READ_STEPS = 1 << 14  # steps read back from a spool at a time


@dataclass
class LiveSummary:
    """What one run on a live input wrote."""

    out: Path
    name: str  # the input's key in the folder
    audio_seconds: float = 0.0
    steps: dict[str, int] = field(default_factory=dict)  # rows written per layer (windows)
    pieces: int = 0  # written with follow
    interrupted: bool = False
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "name": self.name,
            "audio_seconds": round(self.audio_seconds, 3),
            "steps": dict(self.steps),
            "pieces": self.pieces,
            "interrupted": self.interrupted,
            "elapsed_seconds": round(self.elapsed, 3),
        }


class _Pieces:
    """Follow: every batch of exact steps becomes a piece at once."""

    def __init__(self, folder: FeatureFolder, stream: Source, summary: LiveSummary) -> None:
        self.folder, self.stream, self.summary = folder, stream, summary
        self.done = dict.fromkeys(folder.layers, 0)
        self.written_seconds = 0.0
        self.windows = (
            {n: window_pool(folder, n) for n in folder.layers}
            if folder.settings.window is not None
            else None
        )
        self.duration: float | None = None

    def add(self, steps: Mapping[str, np.ndarray], received_seconds: float) -> None:
        if self.windows is not None:  # the windows the steps close
            steps = {
                n: pool.add(steps[n])
                if self.duration is None
                else np.concatenate([pool.add(steps[n]), pool.finish(self.duration)])
                for n, pool in self.windows.items()
            }
        if not any(len(part) for part in steps.values()):
            return
        self.folder.write_piece(
            self.stream,
            self.summary.pieces,
            steps,
            self.done,
            received_seconds - self.written_seconds,
        )
        self.written_seconds = received_seconds
        self.summary.pieces += 1
        for name, part in steps.items():
            self.done[name] += len(part)

    def ending(self, duration: float) -> None:
        """The stream ends at ``duration`` seconds: the next ``add`` is the last."""
        self.duration = duration

    def close(self, duration: float) -> None:
        pass

    def written(self) -> dict[str, int]:
        return dict(self.done)

    def abort(self) -> None:
        pass


class _Spool:
    """Whole: steps wait in one raw float32 file per layer (bounded memory), and at the end
    of the stream are written through the folder as one input, as a file's are."""

    def __init__(self, folder: FeatureFolder, source: Source, channels: Mapping[str, int]) -> None:
        self.folder, self.source, self.channels = folder, source, dict(channels)
        self.dir = folder.path / f"{SPOOL}-{folder.rank}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        self.counts = dict.fromkeys(channels, 0)
        self.shapes = dict.fromkeys(channels, 0)  # rows written per layer, once closed
        self.files: dict[str, BinaryIO] = {
            name: open(self.dir / f"{index}.f32", "wb")  # noqa: SIM115  (closed in close/abort)
            for index, name in enumerate(channels)
        }

    def ending(self, duration: float) -> None:
        pass

    def add(self, steps: Mapping[str, np.ndarray], received_seconds: float) -> None:
        for name, part in steps.items():
            if len(part):
                self.files[name].write(np.ascontiguousarray(part, dtype="<f4").data)
                self.counts[name] += len(part)

    def _read(self, name: str) -> Iterator[np.ndarray]:
        width = self.channels[name]
        index = list(self.channels).index(name)
        with open(self.dir / f"{index}.f32", "rb") as handle:
            while block := handle.read(SPOOL_READ_STEPS * width * 4):
                yield np.frombuffer(block, dtype="<f4").reshape(-1, width)

    def close(self, duration: float) -> None:
        for handle in self.files.values():
            handle.close()
        shapes = {name: (self.counts[name], self.channels[name]) for name in self.channels}
        try:
            self.folder.writer.forget(self.folder.path, [self.folder.stem(self.source.key)])
            if self.folder.settings.window is not None:  # only the windows are held
                windows = {}
                for name in self.channels:
                    pool = window_pool(self.folder, name)
                    found = [pool.add(block) for block in self._read(name)]
                    windows[name] = np.concatenate([*found, pool.finish(duration)])
                self.folder.write(self.source, windows)
                shapes = {name: windows[name].shape for name in windows}
            else:
                with self.folder.stream(self.source, shapes) as streams:
                    for name in self.channels:
                        for block in self._read(name):
                            streams.add(name, block)
            self.folder.succeeded(self.source, duration, shapes)
            self.shapes = {name: int(shape[0]) for name, shape in shapes.items()}
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def written(self) -> dict[str, int]:
        return dict(self.shapes)

    def abort(self) -> None:
        for handle in self.files.values():
            handle.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def extract_live(
    audio: LiveAudio,
    layers: Sequence[str] = ("pool5",),
    out: str | os.PathLike[str] = "features",
    *,
    model: Student | None = None,
    name: str | None = None,
    follow: bool = False,
    fmt: str = "npy",
    pool: str | None = None,
    chunk_seconds: float = DEFAULT_LIVE_CHUNK_SECONDS,
    optimise: bool = True,
    precision: str = "fp32",
    dtype: str = "float32",
    overwrite: bool = False,
    window: float | None = None,
    hop: float | None = None,
    compile: bool = False,
) -> LiveSummary:
    """Extract ``layers`` of the live input ``audio`` into the features folder ``out``.

    The input is called ``name`` there (default: ``stdin`` for ``-``, ``mic-NAME``, or the
    URL's host and path). Without ``follow`` it is written once the stream ends, as a file
    would be (its earlier outputs are replaced only with ``overwrite``); with ``follow``, in
    pieces as the audio arrives (``<name>/NNNNNN``; the folder must not hold pieces of that
    name already). The model runs in chunks of ``chunk_seconds``: a step is written at most
    its layer's receptive field plus one chunk after its audio arrived. Ctrl-C ends the input
    there and is reported in the summary (``interrupted``), after what the audio so far
    determines is written whole. ``window``/``hop`` (with ``pool``) pool over sliding windows
    as for files; with ``follow``, each piece holds the windows that closed.
    """
    started = time.perf_counter()
    layers = list(dict.fromkeys(layers))
    _check_settings(
        layers, fmt, pool, audio.mix, chunk_seconds, precision, dtype, window=window, hop=hop
    )
    if follow and pool is not None and window is None:
        raise UsageProblem(
            "pooling reduces a whole input to one vector; a followed stream is pooled over "
            "windows only (give a window)",
            parameter=("pool", "window"),
        )
    student: Any = model if model is not None else _default_model()
    infos = {layer: feature_of(student, layer) for layer in layers}
    key = name or output_name(audio.source.name)
    if not key or key.startswith((".", "/")) or ".." in key.split("/"):
        raise UsageProblem(
            f"the name {key!r} cannot name files in the features folder", parameter="name"
        )
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in key.split("/"))
    if longest > MAX_OUTPUT_NAME - SUFFIX_RESERVE:
        raise UsageProblem(
            f"the name {key[:40]}... is too long: each part of it may be at most "
            f"{MAX_OUTPUT_NAME - SUFFIX_RESERVE} bytes, not {longest}",
            parameter="name",
        )
    precision_run = precision if optimise else "fp32"
    settings = folder_settings(
        student, layers, fmt=fmt, pool=pool, mix=audio.mix, precision=precision_run, dtype=dtype,
        window=window, hop=hop,
    )  # fmt: skip
    folder = FeatureFolder(Path(out), settings)
    source = Source(audio.source.name, key)
    folder.create()
    with folder.locked():
        folder.record_settings(overwrite)
        folder.writer.start(folder.path, folder.rank, folder.spec)
        held = folder.taken(key)
        if held is not None and (follow or not overwrite or held.startswith("pieces")):
            raise UsageProblem(
                f"{folder.path} holds {held} already; give another --name or --out"
                + ("" if follow else ", or --overwrite to replace them")
            )
        if optimise:
            from soundnet_cli.models import for_inference

            student = for_inference(student, layers, precision=precision, compile=compile)
        rate = int(student.sample_rate)
        features = StreamedFeatures(student, layers, int(round(chunk_seconds * rate)))
        summary = LiveSummary(folder.path, key)
        sink: _Pieces | _Spool = (
            _Pieces(folder, source, summary)
            if follow
            else _Spool(folder, source, {n: i.channels for n, i in infos.items()})
        )
        try:
            summary.interrupted = _read(audio, features, sink, rate)
            duration = features.received / rate
            with deferred_interrupt():
                if features.received:
                    _check_length(student, layers, features.received, audio.source.name)
                    sink.ending(duration)
                    sink.add(_finite(features.finish(), audio.source.name), duration)
                    sink.close(duration)
                elif not summary.interrupted:
                    raise AudioError(f"{audio.source.name}: the stream ended before any audio")
                else:
                    sink.abort()
        except BaseException:
            sink.abort()
            raise
        finally:
            try:
                folder.finish()  # a table format commits what it holds
            finally:
                folder.manifest.merge()
        summary.audio_seconds = duration
        summary.steps = sink.written()
        summary.elapsed = time.perf_counter() - started
        return summary


def _finite(steps: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    for layer, part in steps.items():
        if not np.isfinite(part).all():
            raise AudioError(
                f"{what}: the {layer} features are not finite (NaN or infinity); nothing more "
                "was written"
            )
    return steps


def _read(audio: LiveAudio, features: StreamedFeatures, sink: Any, rate: int) -> bool:
    """Push every block of ``audio`` through ``features`` into ``sink`` until the stream ends
    (False) or Ctrl-C (True); a block's steps are written whole before Ctrl-C is taken."""
    try:
        for block in audio.blocks():
            with deferred_interrupt():
                steps = _finite(features.push(block), audio.source.name)
                sink.add(steps, features.received / rate)
    except KeyboardInterrupt:
        audio.close()
        with deferred_interrupt():  # the audio so far ends there, as if the stream had
            tail = audio.drain()
            if len(tail) and features.received:
                sink.add(_finite(features.push(tail), audio.source.name), audio.samples / rate)
        log.warning(
            "[%s] %s: interrupted at %.1f s of audio; writing the features it determines",
            utc_stamp(),
            audio.source.name,
            features.received / rate,
        )
        return True
    finally:
        audio.close()
    return False
