"""The step sampler distillation and fine-tuning share.

Every batch is a pure function of (seed, step): the sampler walks a fresh permutation of the
training clips each epoch and gives each sample a crop seed, so a resumed run (or one split over
several ranks) sees exactly the samples an uninterrupted single-process run sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from soundnet_cli.errors import UsageProblem


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
                f"the batch size {batch_size} must be divisible by the {world_size} processes",
                parameter="batch_size",
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
