"""Streaming a tar-shard corpus into distillation (shards given as URLs), exactly resumable.

Each rank reads through ``lanes`` loader workers (``--workers``, at least one lane); the
``world * lanes`` lanes of a run split the shards between them. The shard *tape* is the
concatenation of one permutation of the shards per epoch (seeded by ``(seed, epoch)``); lane
``g`` reads tape positions ``g, g + G, g + 2G, ...`` (``G`` lanes in all), so every lane is an
endless stream and the assignment is a function of (seed, epoch, rank, world) alone. A lane
shuffles its clips in consecutive blocks of :data:`SHUFFLE_BLOCK` (a bounded buffer, each
block permuted by ``(seed, world, lane, block)``) and yields batches of its rank's share of the
global batch; the data loader takes batches from its lanes in turn.

Everything is a function of the step: to resume at step ``s`` a lane computes how many batches
it has given (``ceil((s - lane) / lanes)``), finds the shard and clip where that block starts
from the shards' clip counts (in their indexes), and reads on from there. The same world size
and workers give the same samples in the same order; another world size (or number of
workers) continues with the order that layout has from the start, which is not the one the run
had (a warning says so): some clips of the current epoch are then seen twice and some not.

The held-out videos are chosen from every shard's index by the same rule as for a folder
(a stable hash of the video), whatever the shard layout, and are filtered out of the stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundnet_cli.corpus.shards import ShardSample, ShardSet, open_shard, shard_samples
from soundnet_cli.corpus.tario import CorpusError
from soundnet_cli.errors import UsageProblem
from soundnet_cli.media.audio import tile
from soundnet_cli.media.pcm import INT16_SCALE, SCALE
from soundnet_cli.training.distillation.data import CropPlan

log = logging.getLogger(__name__)

SHUFFLE_BLOCK = 256  # clips a lane holds to shuffle: 256 x 20 s = 225 MB of int16 audio
LAYOUT = "stream.json"
_MASK = (1 << 64) - 1


def is_stream_source(source: str | Path) -> bool:
    """Shard URLs, a brace pattern, ``::``-joined URLs or ``@FILE``: not a local folder."""
    text = str(source)
    if isinstance(source, Path):
        return False
    return (
        "://" in text
        or text.startswith(("pipe:", "@"))
        or "::" in text
        or text.endswith(".tar")
        or ("{" in text and ".tar" in text)
    )


def to_model_scale(wave: torch.Tensor) -> torch.Tensor:
    """int16 batches (as the stream yields them, half the bytes to move) -> the model's float
    scale, on the device; exactly what ``int16_to_model`` gives (a power-of-two scale)."""
    if wave.dtype != torch.int16:
        return wave
    return wave.to(torch.float32) * (SCALE / INT16_SCALE)


def _mix(*values: int) -> int:
    """splitmix64 over the values: a crop seed without building a generator per clip."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return state


@dataclass(frozen=True)
class StreamPlan:
    """What every lane of a run needs (picklable: it goes to the loader workers)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]  # training clips per shard (held-out videos left out)
    held: frozenset[str]
    manifest: Any
    heads: tuple[str, ...]
    crop: CropPlan
    seed: int
    rank: int
    world: int
    lanes: int
    per_rank: int
    start_step: int
    block: int = SHUFFLE_BLOCK
    # >= 2: the audio batches cycle through this many buffers (no fresh pages to fault in per
    # batch); only for a consumer done with a batch before it asks for the next but one
    buffers: int = 0


def make_plan(
    shard_set: ShardSet,
    held_videos: set[str],
    heads: Sequence[str],
    crop: CropPlan,
    *,
    seed: int,
    rank: int,
    world: int,
    workers: int,
    batch_size: int,
    start_step: int,
) -> StreamPlan:
    if batch_size % world:
        raise UsageProblem(
            f"the batch size {batch_size} must be divisible by the {world} processes",
            parameter="batch_size",
        )
    counts = tuple(
        sum(1 for c in shard.index["clips"] if c["video"] not in held_videos)
        for shard in shard_set.shard_list
    )
    if not sum(counts):
        raise UsageProblem("no training clips in the shards")
    return StreamPlan(
        tuple(shard_set.urls),
        counts,
        frozenset(held_videos),
        shard_set.manifest,
        tuple(heads),
        crop,
        seed,
        rank,
        world,
        max(1, workers),
        batch_size // world,
        start_step,
    )


class _Tape:
    """Shard ``k`` of lane ``g``: tape position ``g + k * G``; one permutation per epoch."""

    def __init__(self, plan: StreamPlan, lane: int) -> None:
        self.plan = plan
        self.lane = lane
        self.stride = plan.world * plan.lanes
        self._perms: dict[int, np.ndarray] = {}

    def shard(self, k: int) -> int:
        epoch, within = divmod(self.lane + k * self.stride, len(self.plan.urls))
        if epoch not in self._perms:
            rng = np.random.default_rng([self.plan.seed, epoch])
            self._perms = {epoch: rng.permutation(len(self.plan.urls))}
        return int(self._perms[epoch][within])

    def start(self, position: int) -> tuple[int, int]:
        """The tape index of the shard holding the lane's input ``position`` and how many of
        its training clips come before it."""
        k = 0
        while True:
            count = self.plan.counts[self.shard(k)]
            if position < count:
                return k, position
            position -= count
            k += 1


class ShardStream(torch.utils.data.IterableDataset[Any]):
    """This rank's batches from the step ``plan.start_step`` on: (int16 audio (B, samples),
    {head: float32 (B, frames, categories)}), from lane = loader worker."""

    def __init__(self, plan: StreamPlan) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        # the loader asks worker 0 first: it serves the lane whose turn the start step is
        return lane_batches(self.plan, (worker + self.plan.start_step) % self.plan.lanes)


def lane_batches(
    plan: StreamPlan, lane: int
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    step = plan.start_step
    given = max(0, (step - lane + plan.lanes - 1) // plan.lanes)  # batches this lane gave
    global_lane = plan.rank * plan.lanes + lane
    samples = lane_samples(plan, global_lane, given * plan.per_rank)
    crop = plan.crop
    ring = [np.empty((plan.per_rank, crop.samples), np.int16) for _ in range(plan.buffers)]
    made = 0
    while True:
        if ring:
            audio = ring[made % len(ring)]
        else:
            audio = np.empty((plan.per_rank, crop.samples), np.int16)
        made += 1
        rows_of: dict[str, list[np.ndarray]] = {h: [] for h in plan.heads}
        for row in range(plan.per_rank):
            position, sample = next(samples)
            clip_audio, frames = _crop(sample, crop, _mix(plan.seed, global_lane, position))
            audio[row] = clip_audio
            for head in plan.heads:
                t = np.asarray(sample.posteriors[head][frames], dtype=np.float32)
                rows_of[head].append(t / np.maximum(t.sum(axis=1, keepdims=True), 1e-12))
        targets = {h: np.stack(rows) for h, rows in rows_of.items()}
        yield torch.from_numpy(audio), {h: torch.from_numpy(t) for h, t in targets.items()}


def _crop(sample: ShardSample, plan: CropPlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop of a clip at a whole-frame offset chosen by ``seed`` (tiled when shorter), and
    the frame rows it covers; the rule of CropDataset."""
    frames = len(sample.info["frame_times"])
    if frames >= plan.frames:
        first = seed % (frames - plan.frames + 1)
        start = first * plan.samples_per_frame
        return sample.audio[start : start + plan.samples], np.arange(first, first + plan.frames)
    return tile(np.asarray(sample.audio), plan.samples), np.arange(plan.frames) % frames


def lane_samples(plan: StreamPlan, lane: int, start: int) -> Iterator[tuple[int, ShardSample]]:
    """(output position, clip) of lane ``lane`` from output position ``start`` on."""
    tape = _Tape(plan, lane)
    block = plan.block
    number = start // block
    inputs = _inputs(plan, tape, number * block)
    skip = start - number * block
    while True:
        buffer = [next(inputs) for _ in range(block)]
        order = np.random.default_rng([plan.seed, plan.world, lane, number]).permutation(block)
        for q in range(skip, block):
            yield number * block + q, buffer[order[q]]
        skip = 0
        number += 1


def _inputs(plan: StreamPlan, tape: _Tape, position: int) -> Iterator[ShardSample]:
    """The lane's training clips in tape order from input ``position`` on."""
    k, skip = tape.start(position)
    while True:
        s = tape.shard(k)
        url = plan.urls[s]
        seen = 0
        source = open_shard(url)
        for sample in shard_samples(source, url, plan.manifest, plan.heads):
            if sample.info["video"] in plan.held:
                continue
            seen += 1
            if seen > skip:
                yield sample
        if not isinstance(source, mmap.mmap):  # a stream (an mmap stays open: clips view it)
            source.close()
        if seen != plan.counts[s]:
            raise CorpusError(
                f"{url}: holds {seen} training clips, its index {plan.counts[s]}; the shard "
                "changed or is damaged"
            )
        skip = 0
        k += 1


def stream_loader(plan: StreamPlan, workers: int, pin_memory: bool) -> Iterator[Any]:
    """This rank's batches; in the training process itself (no workers) the audio batches
    cycle through two buffers: the training loop is done with a batch before it asks for the
    next (with workers, batches go through shared memory and are fresh)."""
    if workers == 0:
        plan = dataclasses.replace(plan, buffers=2)
    loader = torch.utils.data.DataLoader(
        ShardStream(plan),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    return iter(loader)


def check_layout(run_dir: Path, plan: StreamPlan, main: bool, resume: bool) -> None:
    """Record the lane layout of a new run; warn when a resumed one differs (not exact)."""
    path = Path(run_dir) / LAYOUT
    layout = {"world": plan.world, "lanes": plan.lanes, "block": plan.block}
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            before = {}
        if before != layout:
            log.warning(
                "the run streamed with %s processes x %s workers, it resumes with %s x %s: the "
                "sample order is not the uninterrupted run's (exact only with the same layout)",
                before.get("world"),
                before.get("lanes"),
                plan.world,
                plan.lanes,
            )
    if main:
        path.write_text(json.dumps(layout) + "\n", encoding="utf-8")
