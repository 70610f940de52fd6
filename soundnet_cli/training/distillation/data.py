"""Training data for distillation: fixed-length crops of corpus clips with their targets.

Every batch is a pure function of (seed, step): the sampler walks a fresh permutation of the
training clips each epoch and gives each sample a crop seed, so a resumed run (or one split over
several ranks) sees exactly the samples an uninterrupted single-process run sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def crop_plan(corpus: Corpus, crop_seconds: float) -> CropPlan:
    m = corpus.manifest
    ratio = crop_seconds / m.frame_interval
    if abs(ratio - round(ratio)) > 1e-6 or ratio < 1:
        raise UsageProblem(
            f"--crop-seconds ({crop_seconds:g}) must be a multiple of the corpus's frame interval "
            f"({m.frame_interval:g} s)"
        )
    per_frame = m.samples_per_frame
    if abs(per_frame - round(per_frame)) > 1e-6:
        raise UsageProblem("the corpus's frame interval is not a whole number of samples")
    return CropPlan(int(round(ratio)) * int(round(per_frame)), int(round(ratio)), int(per_frame))


def split_videos(corpus: Corpus, held_out: float) -> tuple[list[int], list[int]]:
    """Clip indices for training and for the held-out agreement check, split by video (a stable
    hash of its path), so no video is on both sides."""
    train: list[int] = []
    held: list[int] = []
    keys = sorted(corpus.videos)
    wanted = int(round(held_out * len(keys))) if len(keys) > 1 else 0
    wanted = max(1, wanted) if held_out > 0 and len(keys) > 1 else wanted
    ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    held_keys = set(ranked[:wanted])
    for i, ref in enumerate(corpus.clips):
        (held if ref.video in held_keys else train).append(i)
    return train, held


class CropDataset(torch.utils.data.Dataset):
    """``dataset[(clip, crop_seed)]`` -> (waveform float32 (samples,), {head: (frames, C)}).

    Longer clips are cropped at a random whole-frame offset chosen by ``crop_seed``; shorter
    ones are tiled, audio and targets alike (the paper's tiling). ``crop_seed < 0`` takes the
    first crop (evaluation). Targets are renormalised to sum to one (float16 rounding).
    """

    def __init__(self, root: Path, heads: Sequence[str], plan: CropPlan) -> None:
        self.corpus = Corpus(root)
        self.heads = list(heads)
        self.plan = plan

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
            targets[head] = torch.from_numpy(t / np.maximum(t.sum(axis=1, keepdims=True), 1e-12))
        return torch.from_numpy(int16_to_model(audio)), targets


class StepSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start, start + 1, ...`` (forever): this rank's slice of each global
    batch of ``batch_size`` (clip index, crop seed) pairs."""

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not indices:
            raise UsageProblem("no training clips in the corpus")
        if batch_size % world_size:
            raise UsageProblem(
                f"--batch-size {batch_size} must be divisible by the {world_size} processes"
            )
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
            }
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        per_rank = self.batch_size // self.world_size
        first = step * self.batch_size + self.rank * per_rank
        out = []
        for position in range(first, first + per_rank):
            epoch, within = divmod(position, len(self.indices))
            clip = int(self.indices[self._perm(epoch)[within]])
            out.append((clip, (self.seed * 1_000_003 + position) % (2**63)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the sampler is endless
        return 2**62
