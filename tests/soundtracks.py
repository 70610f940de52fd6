"""Videos whose soundtrack is a lossless copy of given audio (PCM or FLAC in Matroska), made
with PyAV: reading the video must give exactly the audio back."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {"flac": "s16", "pcm_s16le": "s16"}


def video_with_soundtrack(
    path: Path,
    pcm: np.ndarray | None,
    rate: int = 44100,
    *,
    codec: str = "flac",
    seconds: float | None = None,
    video: bool = True,
) -> Path:
    """Write ``path`` (.mkv, .mp4 ...) with a small picture stream and ``pcm`` (int16,
    (frames,) or (frames, channels)) as its audio stream; ``pcm=None`` makes a silent film."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    length = seconds if seconds is not None else (len(pcm) / rate if pcm is not None else 2.0)
    with av.open(str(path), "w") as out:
        # every stream is added before the first packet is written
        stream = picture = None
        if pcm is not None:
            frames = pcm.reshape(len(pcm), -1)
            stream = out.add_stream(codec, rate=rate)
            stream.layout = "mono" if frames.shape[1] == 1 else "stereo"
            stream.format = CODECS[codec]
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 32, 24, "yuv420p"
        if stream is not None and pcm is not None:
            for start in range(0, len(frames), 4096):
                block = np.ascontiguousarray(frames[start : start + 4096]).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(block, format="s16", layout=stream.layout.name)
                frame.sample_rate, frame.pts = rate, start
                frame.time_base = Fraction(1, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        if picture is not None:
            for n in range(max(1, int(length * 10))):
                image = np.full((24, 32, 3), (n * 7) % 256, np.uint8)
                for packet in picture.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in picture.encode(None):
                out.mux(packet)
    return path
