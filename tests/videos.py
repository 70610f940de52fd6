"""Tiny test videos made with PyAV: a grey background whose level encodes the frame index (so a
frame's colour tells its time), a moving coloured square, and a tone on the soundtrack."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 10
LEVEL_STEP = 4  # grey level of frame n is LEVEL_STEP * (n mod 63): unique over 6.3 s

# container suffix -> (video codec, audio codec, audio rate)
FORMATS = {
    ".mp4": ("libx264", "aac", 44100),
    ".webm": ("libvpx-vp9", "libopus", 48000),
    ".mkv": ("libx264", "libopus", 48000),
}


def frame_picture(n: int, width: int = 64, height: int = 48) -> np.ndarray:
    level = LEVEL_STEP * (n % 63)
    picture = np.full((height, width, 3), level, np.uint8)
    side = 12
    x = (n * 3) % (width - side)
    picture[8 : 8 + side, x : x + side] = (255, 40, 40)
    return picture


def level_of(picture: np.ndarray) -> float:
    """The background's grey level (the median ignores the square)."""
    return float(np.median(picture))


def frame_index(picture: np.ndarray) -> int:
    """The frame number (mod 63) that the picture's grey level encodes."""
    return int(round(level_of(picture) / LEVEL_STEP))


def make_video(
    path: Path,
    seconds: float = 6.0,
    *,
    audio: bool = True,
    video: bool = True,
    freq: float = 440.0,
    size: tuple[int, int] = (64, 48),
    channels: int = 2,
) -> Path:
    import av

    vcodec, acodec, rate = FORMATS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * FPS))
    with av.open(str(path), "w") as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream(vcodec, rate=FPS)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": "10"} if vcodec == "libx264" else {"crf": "10", "b": "0"}
            if vcodec == "libx264":
                vstream.options["g"] = "20"  # keyframes every 2 s, so seeking matters
        if audio:
            astream = out.add_stream(acodec, rate=rate)
            astream.layout = "stereo" if channels == 2 else "mono"
        if vstream is not None:
            for n in range(frames):
                frame = av.VideoFrame.from_ndarray(frame_picture(n, *size), format="rgb24")
                frame.pts = n
                frame.time_base = Fraction(1, FPS)
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        if astream is not None:
            total = int(seconds * rate)
            t = np.arange(total) / rate
            wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            block = 960
            for start in range(0, total, block):
                chunk = wave[start : start + block]
                planes = np.stack([chunk * (c + 1) / channels for c in range(channels)])
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(planes), format="fltp", layout=astream.layout.name
                )
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def grey_level_teacher(name: str = "grey-level"):
    """A teacher whose posterior peaks at the frame number the picture's grey level encodes
    (63 categories 'frame-00'..'frame-62'): it shows which frame each corpus row came from."""
    import torch
    from torch import nn

    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

    class GreyLevel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(20.0))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            level = pixels.flatten(1).median(dim=1).values * 255 / LEVEL_STEP  # (N,)
            bins = torch.arange(63, dtype=pixels.dtype, device=pixels.device)
            return -self.scale * (level[:, None] - bins) ** 2

    transform = FrameTransform(resize=24, crop=24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    head = TeacherHead(name, tuple(f"frame-{i:02d}" for i in range(63)))
    return Teacher(name, GreyLevel(), [head], transform, {"weights": "test"})


def tiny_random_teacher(seed: int = 0, name: str = "tiny"):
    """A small randomly initialised teacher (a linear layer over 16x16 pixels, 10 categories):
    spread-out posteriors, so engines are compared on real arithmetic. The same ``seed`` gives
    the same weights in every process."""
    import torch
    from torch import nn

    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

    generator = torch.Generator().manual_seed(seed)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    transform = FrameTransform(resize=16, crop=16)
    head = TeacherHead(name, tuple(f"class-{i}" for i in range(10)))
    return Teacher(name, network, [head], transform, {"weights": f"random seed {seed}"})
