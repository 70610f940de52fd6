"""The teacher API: heads with category names, a frame transform, probabilities per head.

A teacher wraps an image network (``network``) whose outputs are the concatenation of its
heads' outputs (one head for every builtin teacher). ``label(frames)`` takes decoded RGB frames
as uint8 arrays, applies the teacher's own transform, and returns per head either softmax
probabilities (a ``posteriors`` head, the paper's) or L2-normalised vectors (an ``embedding``
head of a declared size, such as CLIP's image embedding), batched on the teacher's device
(autocast on CUDA).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from soundnet_cli.errors import SoundnetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def head_name_for(teacher: str) -> str:
    """A head name (letters, digits, - and _) from a teacher name: ``timm:resnet18`` ->
    ``timm-resnet18``."""
    return re.sub(r"[^a-z0-9_-]+", "-", teacher.lower()).strip("-") or "head"


HEAD_KINDS = ("posteriors", "embedding")


@dataclass(frozen=True)
class TeacherHead:
    """One output of a teacher: its name and its category names, in output order; or, for an
    ``embedding`` head, no categories and the vectors' size ``dim``."""

    name: str
    categories: tuple[str, ...] = ()
    kind: str = "posteriors"
    dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise SoundnetError(f"head {self.name!r}: kind must be one of {HEAD_KINDS}")
        if self.kind == "embedding" and (self.dim < 1 or self.categories):
            raise SoundnetError(f"embedding head {self.name!r} needs a size and no categories")

    @property
    def size(self) -> int:
        return self.dim if self.kind == "embedding" else len(self.categories)

    @classmethod
    def embedding(cls, name: str, dim: int) -> TeacherHead:
        return cls(name, (), "embedding", int(dim))

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "embedding":
            return {"name": self.name, "kind": self.kind, "size": self.size}
        return {"name": self.name, "categories": list(self.categories)}


@dataclass(frozen=True)
class FrameTransform:
    """Resize, centre crop and normalise RGB frames, as the teacher's weights were trained.

    ``resize`` is the shorter side (an int, aspect kept) or an exact ``(height, width)``.
    Pixels are scaled to [0, ``value_range``] (1: torchvision's convention; 255: Caffe's), put
    in ``channel_order`` ("RGB", or "BGR" for networks trained in Caffe), then normalised with
    ``mean`` and ``std``, given in that channel order and on that scale.
    """

    resize: int | tuple[int, int] = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    value_range: float = 1.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise SoundnetError(f"channel_order must be RGB or BGR, not {self.channel_order!r}")

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) or (N, 3, H, W) -> float32 (N, 3, crop, crop)."""
        # torchvision.transforms.functional, as torchvision's own ImageClassification presets
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        pixels = torch.as_tensor(frames)
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise SoundnetError(f"frames must be uint8 (N, H, W, 3); got {tuple(pixels.shape)}")
        if pixels.shape[-1] == 3 and pixels.shape[1] != 3:
            pixels = pixels.permute(0, 3, 1, 2)
        size = [self.resize] if isinstance(self.resize, int) else list(self.resize)
        mode = InterpolationMode(self.interpolation)
        pixels = TF.resize(pixels.contiguous(), size, interpolation=mode, antialias=True)
        pixels = TF.center_crop(pixels, [self.crop, self.crop])
        if self.value_range == 1.0:
            scaled = TF.convert_image_dtype(pixels, torch.float32)
        else:
            scaled = pixels.to(torch.float32) * (self.value_range / 255.0)
        if self.channel_order == "BGR":
            scaled = scaled.flip(1)
        return TF.normalize(scaled, list(self.mean), list(self.std))

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            # recorded only when they differ from torchvision's, so older corpora still match
            **({"channel_order": self.channel_order} if self.channel_order != "RGB" else {}),
            **({"value_range": self.value_range} if self.value_range != 1.0 else {}),
        }


class Teacher(nn.Module):
    """A vision teacher: ``forward(pixels)`` gives probabilities per head for transformed frames;
    ``label(frames)`` transforms uint8 frames and runs them in batches."""

    def __init__(
        self,
        name: str,
        network: nn.Module,
        heads: Sequence[TeacherHead],
        transform: FrameTransform,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise SoundnetError(f"teacher {name!r} declares no heads")
        self.name = name
        self.network = network.eval()
        self.heads = tuple(heads)
        self.transform = transform
        self.provenance: dict[str, Any] = dict(provenance or {})

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.network(pixels).float()
        sizes = [h.size for h in self.heads]
        if logits.shape[-1] != sum(sizes):
            raise SoundnetError(
                f"teacher {self.name!r} gives {logits.shape[-1]} outputs, its heads declare "
                f"{sum(sizes)}"
            )
        parts = torch.split(logits, sizes, dim=-1)
        return {
            h.name: torch.nn.functional.normalize(part, dim=-1)
            if h.kind == "embedding"
            else part.softmax(dim=-1)
            for h, part in zip(self.heads, parts, strict=True)
        }

    @torch.inference_mode()
    def label(
        self, frames: np.ndarray | torch.Tensor, batch_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Probabilities per head, float32 (N, categories), for uint8 RGB frames (N, H, W, 3);
        for an embedding head, unit vectors (N, size)."""
        return self.label_pixels(self.transform(frames), batch_size)

    @torch.inference_mode()
    def label_pixels(self, pixels: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Probabilities (or unit vectors) per head for already-transformed frames
        (N, 3, crop, crop)."""
        device = self.device
        chunks: dict[str, list[np.ndarray]] = {h.name: [] for h in self.heads}
        for start in range(0, len(pixels), max(1, batch_size)):
            batch = pixels[start : start + batch_size].to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=_autocast_dtype(), enabled=device.type == "cuda"
            ):
                probs = self(batch)
            for name, p in probs.items():
                chunks[name].append(p.float().cpu().numpy())
        return {
            h.name: np.concatenate(chunks[h.name])
            if chunks[h.name]
            else np.zeros((0, h.size), np.float32)
            for h in self.heads
        }

    def describe(self) -> dict[str, Any]:
        """What a corpus manifest records about this teacher."""
        return {
            "name": self.name,
            "heads": [h.as_dict() for h in self.heads],
            "transform": self.transform.as_dict(),
            "provenance": self.provenance,
        }


def _autocast_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
