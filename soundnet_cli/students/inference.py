"""Inference-only rewrites of a conv student that keep its features within float tolerance.

``optimise(student)`` returns a :class:`FastStudent` with the same ``forward_features`` and
geometry as the student it was built from, computed faster:

- BatchNorm (eval statistics) is folded into the preceding convolution's weights and bias;
- a max-pool runs before the ReLU it follows (ReLU is monotonic, so ``pool(relu(x)) ==
  relu(pool(x))``) and the ReLU then touches 8x fewer values;
- a strided convolution with few input channels (conv1 has one) is rewritten as a stride-1
  convolution over the input's ``stride`` phases (polyphase), which oneDNN runs much faster;
- the output heads run as one convolution (their weights concatenated);
- everything runs under ``torch.inference_mode``; ``compile=True`` adds ``torch.compile``;
- on CUDA, ``precision="bf16"`` or ``"fp16"`` runs in half precision after a check on a probe
  signal that the features stay within ``tolerance`` of float32 (else it falls back to float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.students.base import ConvBlock, ConvLayer, ConvStudent, FeatureInfo

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TOLERANCE = {"fp32": 0.0, "bf16": 3e-2, "fp16": 1e-2}
# Polyphase pays off while the phases make a thin input (conv1: 1 channel x stride 2).
_POLYPHASE_MAX_CHANNELS = 8


def fold_batchnorm(block: ConvBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to conv followed by eval-mode BatchNorm."""
    conv, bn = block.conv, block.bn
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.detach().double() * scale[:, None, None]
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return weight.float(), bias.float()


class FusedConv(nn.Module):
    """A Conv1d (BN folded in), optionally computed over the input's stride phases."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> None:
        super().__init__()
        out_channels, in_channels, kernel = weight.shape
        self.stride, self.padding, self.kernel = stride, padding, kernel
        self.polyphase = (
            stride > 1 and kernel % stride == 0 and in_channels * stride <= _POLYPHASE_MAX_CHANNELS
        )
        if self.polyphase:
            # w[o, c, s*j + r] becomes the weight of phase channel (c, r) at tap j.
            phased = weight.reshape(out_channels, in_channels, kernel // stride, stride)
            weight = phased.permute(0, 1, 3, 2).reshape(
                out_channels, in_channels * stride, kernel // stride
            )
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.polyphase:
            return F.conv1d(x, self.weight, self.bias, self.stride, self.padding)
        batch, channels, length = x.shape
        steps = (length + 2 * self.padding - self.kernel) // self.stride + 1
        # Zero-pad to a whole number of phases; the extra zeros meet only unused outputs.
        padded = self.stride * (steps - 1 + self.kernel // self.stride)
        x = F.pad(x, (self.padding, padded - length - self.padding))
        phases = x.view(batch, channels, -1, self.stride).transpose(2, 3)
        phases = phases.reshape(batch, channels * self.stride, -1)
        return F.conv1d(phases, self.weight, self.bias)[..., :steps]


@dataclass(frozen=True)
class _Stage:
    conv_name: str
    pool_name: str | None
    pool: int


class FastStudent(nn.Module):
    """The inference-only twin of a :class:`ConvStudent`: same taps, same geometry."""

    def __init__(self, student: ConvStudent) -> None:
        super().__init__()
        self.architecture = student.architecture
        self.sample_rate = student.sample_rate
        self.head_specs = student.head_specs
        self.head_spec = student.head_spec
        self.feature_info: list[FeatureInfo] = list(student.feature_info)
        self.checkpoint_info = getattr(student, "checkpoint_info", None)
        self._geometry = student  # lengths and errors come from the original's own code
        self.convs = nn.ModuleDict()
        self.stages: list[_Stage] = []
        body = list(student.body_spec)
        i = 0
        while i < len(body):
            layer = body[i]
            if not isinstance(layer, ConvLayer):
                raise SoundnetError(
                    f"{student.architecture}: a pool ({layer.name}) must follow a conv"
                )
            block = student.blocks[layer.name]
            assert isinstance(block, ConvBlock)
            weight, bias = fold_batchnorm(block)
            self.convs[layer.name] = FusedConv(weight, bias, layer.stride, layer.padding)
            follower = body[i + 1] if i + 1 < len(body) else None
            if follower is not None and not isinstance(follower, ConvLayer):
                self.stages.append(_Stage(layer.name, follower.name, follower.kernel))
                i += 2
            else:
                self.stages.append(_Stage(layer.name, None, 1))
                i += 1
        heads = [h for h in student.heads.values() if isinstance(h, nn.Conv1d)]
        self.head = nn.Conv1d(
            heads[0].in_channels,
            sum(h.out_channels for h in heads),
            student.head_spec.kernel,
            student.head_spec.stride,
            student.head_spec.padding,
        )
        assert self.head.bias is not None
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([h.weight for h in heads]))
            self.head.bias.copy_(torch.cat([h.bias for h in heads if h.bias is not None]))
        self.head.requires_grad_(False)
        self._order = {info.name: i for i, info in enumerate(self.feature_info)}
        self.dtype = torch.float32
        self._body: Callable[[torch.Tensor, frozenset[str], str], dict[str, torch.Tensor]] = (
            self._run
        )
        self.eval()

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run in ``dtype`` (features are still returned as float32)."""
        self.to(dtype)
        self.dtype = dtype

    # -- geometry, delegated to the original student ----------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.feature_info]

    def feature(self, name: str) -> FeatureInfo:
        return self._geometry.feature(name)

    def output_length(self, layer: str, samples: int) -> int:
        return self._geometry.output_length(layer, samples)

    def min_samples(self, layer: str) -> int:
        return self._geometry.min_samples(layer)

    # -- forward ------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, wanted: frozenset[str], last: str) -> dict[str, torch.Tensor]:
        taps: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            y = self.convs[stage.conv_name](x)
            if stage.pool_name is None:
                x = F.relu_(y)
                if stage.conv_name in wanted:
                    taps[stage.conv_name] = x
                if stage.conv_name == last:
                    return taps
                continue
            if stage.conv_name in wanted:
                taps[stage.conv_name] = F.relu(y)
            if stage.conv_name == last:
                return taps
            x = F.relu_(F.max_pool1d(y, stage.pool, stage.pool))
            if stage.pool_name in wanted:
                taps[stage.pool_name] = x
            if stage.pool_name == last:
                return taps
        taps[self.head_spec.name] = self.head(x)
        return taps

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The same taps as ``ConvStudent.forward_features``, in float32."""
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise UsageProblem(f"no layer requested; valid layers: {', '.join(self.layer_names)}")
        last = max(layers, key=lambda name: self._geometry._tap_index_of(name))
        x = ConvStudent._as_batch(wave)
        if self.output_length(last, x.shape[-1]) == 0:
            # The original raises the same AudioError, with its wording.
            self._geometry.forward_features(x[..., :0], [last])
        with torch.inference_mode():
            taps = self._body(x.to(self.dtype), frozenset(layers), last)
            return {name: taps[name].float() for name in layers}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-probabilities per head, as the original's ``forward``."""
        logits = self.forward_features(wave, [self.head_spec.name])[self.head_spec.name]
        out, start = {}, 0
        for head in self.head_specs:
            out[head.name] = F.log_softmax(logits[:, start : start + head.size], dim=1)
            start += head.size
        return out


def probe_signal(seconds: float = 12.0, sample_rate: int = 22050) -> torch.Tensor:
    """A fixed test sound (tones, a chirp, noise; scaled as real input) for precision checks."""
    generator = torch.Generator().manual_seed(1234)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(
        2 * torch.pi * (200 + 300 * t) * t
    )
    wave += 0.1 * torch.randn(t.shape, generator=generator, dtype=torch.float64)
    return (wave * 256).float()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    scale = reference.abs().max().item()
    return (ours.float() - reference.float()).abs().max().item() / (scale if scale > 0 else 1.0)


def precision_error(fast: FastStudent, layers: Sequence[str], dtype: torch.dtype) -> float:
    """Worst relative error of ``layers`` in ``dtype`` against float32, on the probe signal."""
    device = next(fast.parameters()).device
    wave = probe_signal(sample_rate=fast.sample_rate).to(device)
    previous = fast.dtype
    try:
        fast.set_dtype(torch.float32)
        reference = fast.forward_features(wave, layers)
        fast.set_dtype(dtype)
        ours = fast.forward_features(wave, layers)
    finally:
        fast.set_dtype(previous)
    return max(relative_error(ours[name], reference[name]) for name in layers)


def optimise(
    model: nn.Module,
    *,
    layers: Sequence[str] = ("pool5",),
    precision: str = "fp32",
    tolerance: float | None = None,
    compile: bool = False,
    announce: Callable[[str], None] | None = None,
) -> Any:
    """The fastest equivalent of ``model`` for ``layers``, on the model's device.

    A model that is not a :class:`ConvStudent` (a plugin's own architecture) is returned as is.
    Half precision is allowed only where the device supports it and the probe check passes;
    otherwise float32 is kept and ``announce`` says why.
    """
    if precision not in PRECISIONS:
        raise UsageProblem(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if not isinstance(model, ConvStudent):
        return model
    device = next(model.parameters()).device
    fast = FastStudent(model).to(device)
    if precision != "fp32":
        dtype = _DTYPES[precision]
        limit = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
        try:
            error = precision_error(fast, layers, dtype)
        except RuntimeError as exc:  # e.g. fp16 convolutions unsupported on this device
            error, reason = float("inf"), f"not supported here ({str(exc).splitlines()[0]})"
        else:
            reason = f"relative error {error:.2e} exceeds the tolerance {limit:.0e}"
        if error <= limit:
            fast.set_dtype(dtype)
        elif announce is not None:
            announce(f"{precision}: {reason}; using fp32")
    if compile:
        fast._body = torch.compile(fast._run, dynamic=True)
    return fast
