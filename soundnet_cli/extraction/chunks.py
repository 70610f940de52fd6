"""The chunk plan: long inputs run through a student in pieces whose features equal the
whole input's, in bounded memory.

Each layer's step i sees input [offset + i*stride, offset + i*stride + receptive_field). A run
starting at a multiple of the deepest layer's stride computes the same steps as the whole input
wherever a step's field lies inside the run (or reaches a real edge of the input), so runs
overlap by the receptive field and each keeps only the steps it computes exactly. Used by
``soundnet extract`` and by plugins (soundnet-hear) that embed long audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.students.contract import check_taps, feature_of

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Chunk:
    """One model run: input samples [start, stop) give steps [first[L], last[L]) of each layer,
    found at local indices starting at ``skip[L]`` of that run's output."""

    start: int
    stop: int
    steps: dict[str, tuple[int, int, int]]  # layer -> (first, last, skip)


def chunk_plan(model: Any, layers: Sequence[str], samples: int, chunk_samples: int) -> list[Chunk]:
    """Split a ``samples``-long input into model runs whose features equal the whole input's.

    Each layer's step i sees input [offset + i*stride, offset + i*stride + receptive_field).
    A run starting at a multiple of the deepest stride computes the same steps as the whole
    input wherever a step's field lies inside the run (or reaches a real edge of the file).
    """
    infos = {name: feature_of(model, name) for name in layers}
    deepest = max(info.stride for info in infos.values())
    totals = {name: model.output_length(name, samples) for name in layers}
    core = max(deepest, (chunk_samples // deepest) * deepest)
    plan = []
    for begin in range(0, max(samples, 1), core):
        end = begin + core
        final = end >= samples
        steps: dict[str, tuple[int, int]] = {}
        for name, info in infos.items():
            first = begin // info.stride
            last = totals[name] if final else min(totals[name], end // info.stride)
            if last > first:
                steps[name] = (first, last)
        if not steps:
            continue
        lo = min(infos[n].offset + a * infos[n].stride for n, (a, _) in steps.items())
        hi = max(
            infos[n].offset + (b - 1) * infos[n].stride + infos[n].receptive_field
            for n, (_, b) in steps.items()
        )
        start = max(0, (lo // deepest) * deepest)
        stop = samples if hi >= samples else hi
        plan.append(
            Chunk(
                start,
                stop,
                {n: (a, b, a - start // infos[n].stride) for n, (a, b) in steps.items()},
            )
        )
    return plan


def run_chunk(student: Any, wave: torch.Tensor, chunk: Chunk) -> dict[str, torch.Tensor]:
    """Run one planned chunk: ``wave`` is input samples [chunk.start, chunk.stop) as
    (batch, samples); each layer's steps [first, last) come back as (batch, channels, steps).
    A student whose output disagrees with its contract is stopped with an error naming it."""
    import torch

    layers = list(chunk.steps)
    batch = wave.reshape(-1, wave.shape[-1])
    with torch.inference_mode():
        taps = student.forward_features(batch, layers)
    check_taps(student, taps, layers, batch.shape[0], batch.shape[-1])
    return {
        name: taps[name][:, :, skip : skip + last - first]
        for name, (first, last, skip) in chunk.steps.items()
    }


def chunked_features(
    model: Any,
    read: Callable[[int, int], np.ndarray],
    samples: int,
    layers: Sequence[str],
    chunk_samples: int,
    device: Any = "cpu",
) -> Iterator[dict[str, np.ndarray]]:
    """Per chunk, each layer's next steps as float32 (time, channels), in order."""
    import torch

    for chunk in chunk_plan(model, layers, samples, chunk_samples):
        wave = torch.from_numpy(np.ascontiguousarray(read(chunk.start, chunk.stop))).to(device)
        parts = run_chunk(model, wave[None], chunk)
        yield {name: part[0].t().float().cpu().numpy() for name, part in parts.items()}


def step_times(info: Any, steps: int, sample_rate: int, first: int = 0) -> np.ndarray:
    """``FeatureInfo.step_centres`` as a float64 array (fast for millions of steps): of steps
    ``first`` to ``first + steps``."""
    half = (info.receptive_field - 1) / 2
    index = np.arange(first, first + steps, dtype=np.float64)
    return (info.offset + index * info.stride + half) / sample_rate
