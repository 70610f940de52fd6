"""``clip:<model>/<tag>``: a CLIP image encoder (through open_clip) as an embedding teacher.

Its one head is of kind ``embedding``: ``encode_image`` L2-normalised, of the model's embedding
size. Frames go through open_clip's own evaluation ``preprocess`` (PIL resize, centre crop,
normalise), one frame at a time, so the tensors are exactly what open_clip would feed the
network. The teacher's provenance carries the :class:`~soundnet_cli.weights.clip.ClipIdentity`
(model, tag, sha256 of the weights, QuickGELU, image mean/std/size), which the corpus and the
student's checkpoint record, so that the text tower used later is the same network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from soundnet_cli.errors import SoundnetError
from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead, head_name_for
from soundnet_cli.weights.clip import build_clip, parse_clip_name


@dataclass(frozen=True)
class ClipFrameTransform(FrameTransform):
    """open_clip's ``preprocess`` applied to each uint8 frame (as a PIL image)."""

    preprocess: Any = field(default=None, compare=False, repr=False)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pixels = torch.as_tensor(frames)
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise SoundnetError(f"frames must be uint8 (N, H, W, 3); got {tuple(pixels.shape)}")
        if pixels.shape[-1] != 3 and pixels.shape[1] == 3:
            pixels = pixels.permute(0, 2, 3, 1)
        array = pixels.cpu().contiguous().numpy()
        if len(array) == 0:
            return torch.zeros((0, 3, self.crop, self.crop))
        return torch.stack([self.preprocess(Image.fromarray(frame)) for frame in array])

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | {"library": "open_clip preprocess"}


class ImageEncoder(nn.Module):
    """``encode_image`` of an open_clip model (the text tower is not kept)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def build_clip_teacher(
    variant: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
) -> Teacher:
    model, tag = parse_clip_name(variant)
    network, preprocess, identity = build_clip(model, tag, weights=weights, random_init=random_init)
    name = f"clip:{variant}"
    transform = ClipFrameTransform(
        resize=identity.image_size,
        crop=identity.image_size,
        mean=identity.image_mean[:3],  # type: ignore[arg-type]
        std=identity.image_std[:3],  # type: ignore[arg-type]
        interpolation="bicubic",
        preprocess=preprocess,
    )
    encoder = ImageEncoder(network)
    dim = int(getattr(network.visual, "output_dim", 0) or network.text_projection.shape[-1])
    head = TeacherHead.embedding(head_name_for(name), dim)
    provenance = {
        "architecture": f"open_clip {model}",
        "weights": identity.sha256 and f"sha256 {identity.sha256}" or "random init",
        "clip": identity.as_dict(),
    }
    return Teacher(name, encoder, [head], transform, provenance)
