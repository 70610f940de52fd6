"""Plugin modules for the contract tests, loaded with ``testing.with_plugin``.

- ``shifted``: a ConvStudent subclass whose own ``forward_features`` changes its input (issue
  25, item 1): the inference rewrite must not replace it.
- ``protocol-student``: a student that keeps the ``Student`` protocol (and ``HeadedStudent``)
  without subclassing ``StudentBase``: frame statistics and a fixed linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import soundnet_cli
from soundnet_cli.errors import AudioError, LayerError
from soundnet_cli.students import (
    ConvLayer,
    ConvStudent,
    FeatureInfo,
    HeadLayer,
    HeadSpec,
    PoolLayer,
)

SHIFTED_BODY = (
    ConvLayer("conv1", 4, 16, 4, 8),
    PoolLayer("pool1", 4),
    ConvLayer("conv2", 8, 8, 2, 4),
)
SHIFTED_HEADS = (HeadSpec("objects", 3, ("cat", "dog", "bird")),)


class ShiftedStudent(ConvStudent):
    """Scales and shifts its input before the layers: not what the layer table alone says."""

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        return super().forward_features(wave * 0.5 + 10, layers)

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(wave * 0.5 + 10)


def shifted(heads: Sequence[HeadSpec] = SHIFTED_HEADS) -> ShiftedStudent:
    torch.manual_seed(0)
    return ShiftedStudent("shifted", SHIFTED_BODY, HeadLayer("conv3", 4, 2, 0), heads)


FRAME, HOP = 4410, 2205
CATEGORIES = ("quiet", "loud")


class ProtocolStudent(nn.Module):
    """Every member of ``Student`` and ``HeadedStudent``, written out; no ``StudentBase``."""

    architecture = "protocol-student"
    sample_rate = 22050
    default_layer = "stats"
    feature_info = (
        FeatureInfo("stats", 3, HOP, FRAME, 0),
        FeatureInfo("logits", 2, HOP, FRAME, 0),
    )
    head_layer = "logits"

    def __init__(self, heads: Sequence[HeadSpec] | None = None) -> None:
        super().__init__()
        self.head_specs = tuple(heads or (HeadSpec("loudness", 2, CATEGORIES),))
        size = sum(h.size for h in self.head_specs)
        self.head = nn.Conv1d(3, size, 1)
        with torch.no_grad():  # fixed weights: "loud" grows with the frame's peak
            self.head.weight.zero_()
            self.head.weight[-1, 2, 0] = 0.05
            self.head.bias.zero_()
            self.head.bias[-1] = -5.0  # loud above a peak of 100 (of 256)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def min_samples(self, layer: str) -> int:
        self._check(layer)
        return FRAME

    def output_length(self, layer: str, samples: int) -> int:
        self._check(layer)
        return max(0, (samples - FRAME) // HOP + 1)

    def _check(self, layer: str) -> None:
        if layer not in ("stats", "logits"):
            raise LayerError(
                f"protocol-student has no layer {layer!r}; valid layers: stats, logits"
            )

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        for layer in wanted:
            self._check(layer)
        if not wanted:
            raise LayerError("no layer requested; valid layers: stats, logits")
        batch = wave.reshape(-1, wave.shape[-1]).float()
        if batch.shape[-1] < FRAME:
            raise AudioError(f"{batch.shape[-1]} samples is too short; at least {FRAME} needed")
        frames = batch.unfold(-1, FRAME, HOP)  # (batch, steps, FRAME)
        stats = torch.stack([frames.mean(-1), frames.std(-1), frames.abs().amax(-1)], 1)
        taps = {"stats": stats, "logits": self.head(stats)}
        return {layer: taps[layer] for layer in wanted}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.forward_features(wave, ["logits"])["logits"]
        out, start = {}, 0
        for head in self.head_specs:
            out[head.name] = F.log_softmax(logits[:, start : start + head.size], dim=1)
            start += head.size
        return out


@soundnet_cli.hookimpl
def register_students(register):
    register("shifted", shifted, description="a ConvStudent with its own forward_features")
    register("protocol-student", ProtocolStudent, description="the Student protocol, by hand")
