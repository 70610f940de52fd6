"""Fully convolutional 1-D students built from a layer table, with named feature taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from soundnet_cli.errors import SoundnetError
from soundnet_cli.media.audio import SAMPLE_RATE

# FeatureInfo and HeadSpec are contract types; imported here too so `students.base` keeps them.
from soundnet_cli.students.contract import FeatureInfo, HeadSpec, StudentBase, feature_of

BN_EPS = 1e-5


@dataclass(frozen=True)
class ConvLayer:
    """Conv1d, then BatchNorm and ReLU."""

    name: str
    out_channels: int
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class PoolLayer:
    """Max-pool with kernel = stride, as the authors' release."""

    name: str
    kernel: int


@dataclass(frozen=True)
class HeadLayer:
    """The output conv: one Conv1d per head, no BatchNorm, log-softmax over categories."""

    name: str
    kernel: int
    stride: int
    padding: int


Layer = ConvLayer | PoolLayer


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, spec: ConvLayer) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding
        )
        self.bn = nn.BatchNorm1d(spec.out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvStudent(StudentBase):
    """A SoundNet-style student: conv/pool body, then one output conv per head.

    ``forward(wave)`` returns ``{head: log-probabilities (batch, categories, time)}``;
    ``forward_features(wave, layers)`` returns the requested taps, each (batch, channels, time).
    The tap named after the head layer (``conv8`` for SoundNet-8) is the heads' logits,
    concatenated over heads in order.
    """

    def __init__(
        self,
        architecture: str,
        body: Sequence[Layer],
        head: HeadLayer,
        heads: Sequence[HeadSpec],
        sample_rate: int = SAMPLE_RATE,
        default_layer: str | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise SoundnetError(f"{architecture} needs at least one output head")
        names = [h.name for h in heads]
        if len(set(names)) != len(names):
            raise SoundnetError(f"head names must be unique, got {names}")
        self.architecture = architecture
        self.sample_rate = sample_rate
        self.body_spec = tuple(body)
        self.head_spec = head
        self.head_specs = tuple(heads)
        self.blocks = nn.ModuleDict()
        channels = 1
        for layer in self.body_spec:
            if isinstance(layer, ConvLayer):
                self.blocks[layer.name] = ConvBlock(channels, layer)
                channels = layer.out_channels
            else:
                self.blocks[layer.name] = nn.MaxPool1d(layer.kernel, layer.kernel)
        self.heads = nn.ModuleDict(
            {
                h.name: nn.Conv1d(channels, h.size, head.kernel, head.stride, head.padding)
                for h in self.head_specs
            }
        )
        self.feature_info = self._describe_taps()
        self._tap_index = {info.name: i for i, info in enumerate(self.feature_info)}
        # the layer commands use when none is given (features for probes, HEAR embeddings)
        self.default_layer = default_layer or self.body_spec[-1].name
        self._tap_index_of(self.default_layer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: weights N(0, 0.01), biases 0, BN weight N(1, 0.02)."""
        if any(p.is_meta for p in self.parameters()):
            return  # built for shapes only (checkpoint loading): on "meta", normal_ costs 1.5 s
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()

    # -- geometry -----------------------------------------------------------------------------
    def _geometry(self) -> list[tuple[str, int, int, int]]:
        """(name, kernel, stride, padding) of every tap, in order."""
        rows = [
            (layer.name, layer.kernel, layer.kernel, 0)
            if isinstance(layer, PoolLayer)
            else (layer.name, layer.kernel, layer.stride, layer.padding)
            for layer in self.body_spec
        ]
        rows.append(
            (
                self.head_spec.name,
                self.head_spec.kernel,
                self.head_spec.stride,
                self.head_spec.padding,
            )
        )
        return rows

    @property
    def head_layer(self) -> str:
        """The tap the heads' time steps align with (``conv8`` for SoundNet-8)."""
        return self.head_spec.name

    def _describe_taps(self) -> list[FeatureInfo]:
        infos = []
        stride, field, offset, channels = 1, 1, 0, 1
        head_channels = sum(h.size for h in self.head_specs)
        for layer, (name, kernel, step, pad) in zip(
            [*self.body_spec, self.head_spec], self._geometry(), strict=True
        ):
            field += (kernel - 1) * stride
            offset -= pad * stride
            stride *= step
            if isinstance(layer, ConvLayer):
                channels = layer.out_channels
            elif isinstance(layer, HeadLayer):
                channels = head_channels
            infos.append(FeatureInfo(name, channels, stride, field, offset))
        return infos

    def _tap_index_of(self, name: str) -> int:
        if name not in self._tap_index:
            feature_of(self, name)  # raises LayerError listing the valid layers
        return self._tap_index[name]

    def output_length(self, layer: str, samples: int) -> int:
        """Time steps that ``layer`` gives for an input of ``samples`` (0 when too short)."""
        length = samples
        # A pool with kernel = stride is a conv with no padding, as far as lengths go.
        for _, kernel, step, pad in self._geometry()[: self._tap_index_of(layer) + 1]:
            length = (length + 2 * pad - kernel) // step + 1
            if length <= 0:
                return 0
        return length

    def min_samples(self, layer: str) -> int:
        """The shortest input that gives ``layer`` at least one time step."""
        needed = 1
        for _, kernel, step, pad in reversed(self._geometry()[: self._tap_index_of(layer) + 1]):
            needed = max(1, (needed - 1) * step + kernel - 2 * pad)
        return needed

    # -- forward ------------------------------------------------------------------------------
    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Run the network up to the last requested layer and return those taps."""
        batch, wanted_layers = self.forward_inputs(wave, layers)
        last = max(self._tap_index_of(name) for name in wanted_layers)
        x = batch[:, None]
        wanted = set(wanted_layers)
        taps: dict[str, torch.Tensor] = {}
        for index, (name, block) in enumerate(self.blocks.items()):
            x = block(x)
            if name in wanted:
                taps[name] = x
            if index == last:
                return taps
        logits = [head(x) for head in self.heads.values()]
        taps[self.head_spec.name] = torch.cat(logits, dim=1)
        return taps

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-probabilities per head, each (batch, categories, time)."""
        x = self.forward_inputs(wave, self.head_spec.name)[0][:, None]
        for block in self.blocks.values():
            x = block(x)
        return {name: F.log_softmax(head(x), dim=1) for name, head in self.heads.items()}
