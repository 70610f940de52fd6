"""The chunk plan on a stream: features of audio that is still arriving, equal to an offline
pass over the whole of it, in bounded memory.

:func:`~soundnet_cli.extraction.chunks.chunk_plan` splits a known length into runs that start
at multiples of ``core`` samples. A run that is not the last depends on the total length only
through three facts: the input goes on past its core, past the end of its last step's
receptive field, and far enough for every layer to have all of the core's steps. Once that
much audio has arrived, the run is exactly the offline plan's run at the same start, whatever
the final length; :class:`StreamedFeatures` runs it then. At the end of the stream the offline
plan for the final length gives the remaining runs. Only the samples that a coming run reads
are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from soundnet_cli.extraction.chunks import Chunk, chunk_plan, run_chunk
from soundnet_cli.students.contract import feature_of


def latency_samples(model: Any, layer: str, chunk_samples: int) -> int:
    """The most input samples that can arrive after a step's audio before the step is
    computed: the layer's receptive field plus one chunk (rounded to the deepest stride)."""
    info = feature_of(model, layer)
    core = max(info.stride, (chunk_samples // info.stride) * info.stride)
    return int(info.receptive_field + core)


class StreamedFeatures:
    """Feed samples with :meth:`push`, end with :meth:`finish`; each returns the steps that
    became exact, per layer, as float32 (time, channels) arrays (possibly empty)."""

    def __init__(self, model: Any, layers: Sequence[str], chunk_samples: int) -> None:
        self.model = model
        self.layers = list(layers)
        self.chunk_samples = chunk_samples
        self.infos = {name: feature_of(model, name) for name in self.layers}
        self.deepest = max(info.stride for info in self.infos.values())
        self.core = max(self.deepest, (chunk_samples // self.deepest) * self.deepest)
        self.received = 0  # samples pushed so far
        self.done = {name: 0 for name in self.layers}  # steps handed out per layer
        self._begin = 0  # core start of the next run
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # stream index of _buffer[0]
        self._pending: list[np.ndarray] = []  # pushed blocks not yet joined to _buffer

    @property
    def held(self) -> int:
        """Samples held now (bounded by about the receptive field plus two chunks)."""
        return len(self._buffer) + sum(len(p) for p in self._pending)

    def _next_chunk(self) -> Chunk | None:
        """The run at ``_begin`` if enough has arrived to know it equals the offline one."""
        begin, end = self._begin, self._begin + self.core
        have = self.received
        if have <= end:
            return None
        steps: dict[str, tuple[int, int]] = {}
        for name, info in self.infos.items():
            first, last = begin // info.stride, end // info.stride
            if self.model.output_length(name, have) < last:
                return None
            if last > first:
                steps[name] = (first, last)
        if not steps:
            return None
        lo = min(self.infos[n].offset + a * self.infos[n].stride for n, (a, _) in steps.items())
        hi = max(
            self.infos[n].offset + (b - 1) * self.infos[n].stride + self.infos[n].receptive_field
            for n, (_, b) in steps.items()
        )
        if hi >= have:
            return None
        start = max(0, (lo // self.deepest) * self.deepest)
        return Chunk(
            start,
            hi,
            {n: (a, b, a - start // self.infos[n].stride) for n, (a, b) in steps.items()},
        )

    def _run(self, chunk: Chunk) -> dict[str, np.ndarray]:
        import torch

        if self._pending:  # joined only when a run needs them: one copy per run, not per block
            self._buffer = np.concatenate([self._buffer, *self._pending])
            self._pending = []
        begin = chunk.start - self._buffer_start
        wave = self._buffer[begin : begin + chunk.stop - chunk.start]
        device = getattr(self.model, "device", "cpu")
        tensor = torch.from_numpy(np.ascontiguousarray(wave)).to(device)
        parts = run_chunk(self.model, tensor[None], chunk)
        out = {}
        for name, part in parts.items():
            first, last, _ = chunk.steps[name]
            keep = max(0, self.done[name] - first)  # steps handed out by an earlier run
            out[name] = part[0, :, keep:].t().float().cpu().numpy()
            self.done[name] = max(self.done[name], last)
        return out

    def _drop_before(self, begin: int) -> None:
        """Forget the samples no run from core start ``begin`` on reads."""
        lo = min(info.offset + (begin // info.stride) * info.stride for info in self.infos.values())
        keep_from = max(0, (lo // self.deepest) * self.deepest)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from

    def _empty(self) -> dict[str, np.ndarray]:
        return {name: np.zeros((0, info.channels), np.float32) for name, info in self.infos.items()}

    @staticmethod
    def _join(
        pieces: list[dict[str, np.ndarray]], empty: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate([blank, *(p[name] for p in pieces if name in p)])
            for name, blank in empty.items()
        }

    def push(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Add model-ready samples; the steps every layer can now give exactly."""
        if len(samples):
            self._pending.append(np.asarray(samples, np.float32))
            self.received += len(samples)
        pieces = []
        while (chunk := self._next_chunk()) is not None:
            pieces.append(self._run(chunk))
            self._begin += self.core
            self._drop_before(self._begin)
        return self._join(pieces, self._empty())

    def finish(self) -> dict[str, np.ndarray]:
        """The end of the stream: the remaining steps, as the offline plan for its length."""
        pieces = []
        if self.received:
            for chunk in chunk_plan(self.model, self.layers, self.received, self.chunk_samples):
                if all(last <= self.done[name] for name, (_, last, _) in chunk.steps.items()):
                    continue
                pieces.append(self._run(chunk))
        self._buffer, self._pending = np.zeros(0, np.float32), []
        return self._join(pieces, self._empty())
