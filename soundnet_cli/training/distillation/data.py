"""Training data for distillation: fixed-length crops of corpus clips with their targets.

Batches come from :class:`soundnet_cli.training.sampler.StepSampler` (a pure function of the
step), so a resumed run sees exactly the samples an uninterrupted one sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundnet_cli.corpus.format import Corpus
from soundnet_cli.errors import UsageProblem
from soundnet_cli.media.audio import tile
from soundnet_cli.media.video import int16_to_model


@dataclass(frozen=True)
class CropPlan:
    """Crop length in samples and in frames (teacher time steps)."""

    samples: int
    frames: int
    samples_per_frame: int


def crop_plan(corpus: Any, crop_seconds: float) -> CropPlan:
    m = corpus.manifest
    ratio = crop_seconds / m.frame_interval
    if abs(ratio - round(ratio)) > 1e-6 or ratio < 1:
        raise UsageProblem(
            f"the crop ({crop_seconds:g} s) must be a multiple of the corpus's frame interval "
            f"({m.frame_interval:g} s)",
            parameter="crop_seconds",
        )
    per_frame = m.samples_per_frame
    if abs(per_frame - round(per_frame)) > 1e-6:
        raise UsageProblem("the corpus's frame interval is not a whole number of samples")
    return CropPlan(int(round(ratio)) * int(round(per_frame)), int(round(ratio)), int(per_frame))


def split_videos(corpus: Any, held_out: float) -> tuple[list[int], list[int]]:
    """Clip indices for training and for the held-out agreement check, split by video (a stable
    hash of its path), so no video is on both sides."""
    held_keys = held_out_videos(corpus.videos, held_out)
    train: list[int] = []
    held: list[int] = []
    for i, ref in enumerate(corpus.clips):
        (held if ref.video in held_keys else train).append(i)
    return train, held


def held_out_videos(videos: Iterable[str], held_out: float) -> set[str]:
    """The held-out videos: the ``held_out`` fraction (at least one when asked for any) that
    rank first by a stable hash of their key; a function of the videos, not of the shards."""
    keys = sorted(videos)
    wanted = int(round(held_out * len(keys))) if len(keys) > 1 else 0
    wanted = max(1, wanted) if held_out > 0 and len(keys) > 1 else wanted
    ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    return set(ranked[:wanted])


class CropDataset(torch.utils.data.Dataset):
    """``dataset[(clip, crop_seed)]`` -> (waveform float32 (samples,), {head: (frames, C)}).

    Longer clips are cropped at a random whole-frame offset chosen by ``crop_seed``; shorter
    ones are tiled, audio and targets alike (the paper's tiling). ``crop_seed < 0`` takes the
    first crop (evaluation). Targets are renormalised to sum to one (float16 rounding).
    """

    def __init__(
        self,
        root: Path | Any,
        heads: Sequence[str],
        plan: CropPlan,
        embedding: Sequence[str] = (),
    ) -> None:
        self.corpus = Corpus(Path(root)) if isinstance(root, (str, Path)) else root  # or a ShardSet
        self.heads = list(heads)
        self.plan = plan
        self.embedding = set(embedding)  # heads of unit vectors: renormalised to length one

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, crop_seed = item
        sample = self.corpus[index]
        frames = sample.ref.frames
        plan = self.plan
        if frames >= plan.frames:
            first = 0
            if crop_seed >= 0 and frames > plan.frames:
                first = int(np.random.default_rng(crop_seed).integers(0, frames - plan.frames + 1))
            start = first * plan.samples_per_frame
            audio = np.asarray(sample.audio[start : start + plan.samples])
            rows = np.arange(first, first + plan.frames)
        else:
            audio = tile(np.asarray(sample.audio), plan.samples)
            rows = np.arange(plan.frames) % frames
        targets = {}
        for head in self.heads:
            t = np.asarray(sample.posteriors[head][rows], dtype=np.float32)
            if head in self.embedding:
                norm = np.linalg.norm(t, axis=1, keepdims=True)
            else:
                norm = t.sum(axis=1, keepdims=True)
            targets[head] = torch.from_numpy(t / np.maximum(norm, 1e-12))
        return torch.from_numpy(int16_to_model(audio)), targets
