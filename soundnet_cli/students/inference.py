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
- only a plain :class:`ConvStudent` is rewritten: a subclass with its own ``forward_features``
  (or another method the twin replaces, or other blocks) keeps its own forward, so that every
  command computes what ``load_student(...).forward_features`` computes;
- ``precision="bf16"`` or ``"fp16"`` runs in half precision where the device has native
  kernels for it (CUDA; CPUs with AVX512-BF16/AMX, or AVX512-FP16/AMX-FP16), after a check on
  real-looking clips (:func:`probe_clips`) that every clip's features at the requested layers
  stay within ``tolerance`` of float32. A convolution whose half-precision kernel is wrong on
  this device stays in float32 (:func:`choose_precision`); if the whole still misses the
  tolerance, float32 is used. Weights always derive from float32 copies, so a failed check
  leaves the float32 model exact.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.media.audio import SAMPLE_RATE, SCALE
from soundnet_cli.students.base import ConvBlock, ConvLayer, ConvStudent, FeatureInfo
from soundnet_cli.students.contract import (
    Student,
    StudentBase,
    as_batch,
    describe,
    forward_inputs,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TOLERANCE = {"fp32": 0.0, "bf16": 3e-2, "fp16": 1e-2}
# Polyphase pays off while the phases make a thin input (conv1: 1 channel x stride 2).
_POLYPHASE_MAX_CHANNELS = 8
# Names the kernels below in remembered precision checks (a new version measures anew).
KERNELS = "time-major-2"
# On a CPU, a stage whose output is larger than this runs in pieces (see FastStudent._stage).
_PIECE_BYTES = 4 << 20


def fold_batchnorm(block: ConvBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to conv followed by eval-mode BatchNorm."""
    conv, bn = block.conv, block.bn
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.detach().double() * scale[:, None, None]
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return weight.float(), bias.float()


def time_major(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, time) as a (batch, channels, 1, time) tensor whose memory is
    time-major: ``channels_last``, the layout oneDNN's fast 1-D convolution kernels take (about
    3x faster than channels-first for SoundNet's convolutions). A view where ``x`` is already
    time-major."""
    x4 = x[:, :, None, :]
    if x4.is_contiguous(memory_format=torch.channels_last):
        return x4
    return x4.contiguous(memory_format=torch.channels_last)


def pad_time(x4: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Zeros before and after a time-major tensor's samples, keeping it time-major; a
    negative ``right`` drops samples from the end instead."""
    if right < 0:
        x4 = x4[..., : x4.shape[-1] + right]
        right = 0
    if left == right == 0:
        return x4
    batch, channels, _, length = x4.shape
    out = x4.new_zeros((batch, 1, left + length + right, channels))
    out[:, 0, left : left + length] = x4.permute(0, 2, 3, 1)[:, 0]
    return out.permute(0, 3, 1, 2)


def max_pool_time(x4: torch.Tensor, size: int) -> torch.Tensor:
    """Max over non-overlapping windows of ``size`` steps of a time-major tensor (a trailing
    partial window is dropped, as ``max_pool1d`` does).

    In time-major memory a window is one contiguous run of ``size`` frames, so the max is
    taken between halves of each run (elementwise maxima of long contiguous rows: 1.5-3x
    faster than ``max_pool2d``, whose CPU kernel also writes indices)."""
    if x4.device.type != "cpu":
        return F.max_pool2d(x4, (1, size), (1, size))
    batch, channels, _, length = x4.shape
    windows = length // size
    rows = x4[..., : windows * size].permute(0, 2, 3, 1).reshape(batch, windows, size * channels)
    while size > 1:
        half = size // 2
        low, high = rows[..., : half * channels], rows[..., half * channels : 2 * half * channels]
        odd = rows[..., 2 * half * channels :] if size % 2 else None
        rows = torch.maximum(low, high)
        if odd is not None:  # an odd window: its last frame joins the first half's maxima
            rows[..., :channels] = torch.maximum(rows[..., :channels], odd)
        size = half
    return rows.view(batch, 1, windows, channels).permute(0, 3, 1, 2)


def _empty_time_major(batch: int, channels: int, steps: int, like: torch.Tensor) -> torch.Tensor:
    out = like.new_empty((batch, 1, steps, channels))
    return out.permute(0, 3, 1, 2)


class FusedConv(nn.Module):
    """A Conv1d (BN folded in) on time-major tensors, optionally computed over the input's
    stride phases.

    ``forward`` takes an already padded (batch, channels, 1, time) time-major tensor and
    returns the valid convolution, time-major; :meth:`conv1d` is the plain (batch, channels,
    time) equivalent of ``F.conv1d(x, weight, bias, stride, padding)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> None:
        super().__init__()
        out_channels, in_channels, kernel = weight.shape
        self.stride, self.padding, self.kernel = stride, padding, kernel
        self.polyphase = (
            stride > 1 and kernel % stride == 0 and in_channels * stride <= _POLYPHASE_MAX_CHANNELS
        )
        if self.polyphase:
            # w[o, c, s*j + r] becomes the weight of phase channel (r, c) at tap j: in a
            # time-major input, phase r of channel c sits at r * channels + c of each frame of
            # ``stride`` samples, so the phases are a free view.
            phased = weight.reshape(out_channels, in_channels, kernel // stride, stride)
            weight = phased.permute(0, 3, 1, 2).reshape(
                out_channels, stride * in_channels, kernel // stride
            )
        self.weight = nn.Parameter(
            weight[:, :, None, :].contiguous(memory_format=torch.channels_last),
            requires_grad=False,
        )
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)

    def steps(self, length: int) -> int:
        """Output steps for ``length`` input samples (padding included by the caller)."""
        return (length - self.kernel) // self.stride + 1

    def padded(self, x4: torch.Tensor) -> torch.Tensor:
        """``x4`` with the convolution's zero padding, rounded up to whole phases."""
        length = x4.shape[-1] + 2 * self.padding
        steps = self.steps(length)
        needed = self.stride * (steps - 1) + self.kernel
        return pad_time(x4, self.padding, needed - length + self.padding)

    def forward(self, x4: torch.Tensor) -> torch.Tensor:
        if not self.polyphase:
            return F.conv2d(x4, self.weight, self.bias, (1, self.stride))
        batch, channels, _, length = x4.shape
        steps = self.steps(length)
        usable = length // self.stride * self.stride  # a last partial phase meets no output
        frames = x4[..., :usable].permute(0, 2, 3, 1)
        phases = frames.reshape(batch, 1, usable // self.stride, self.stride * channels)
        return F.conv2d(phases.permute(0, 3, 1, 2), self.weight, self.bias)[..., :steps]

    def conv1d(self, x: torch.Tensor) -> torch.Tensor:
        """``F.conv1d(x, weight, bias, stride, padding)`` for (batch, channels, time)."""
        out: torch.Tensor = self(self.padded(time_major(x)))
        return out[:, :, 0, :]


@dataclass(frozen=True)
class _Stage:
    conv_name: str
    pool_name: str | None
    pool: int


class FastStudent(StudentBase):
    """The inference-only twin of a :class:`ConvStudent`: same taps, same geometry."""

    def __init__(self, student: ConvStudent) -> None:
        super().__init__()
        self.architecture = student.architecture
        self.sample_rate = student.sample_rate
        self.default_layer = student.default_layer
        self.head_specs = student.head_specs
        self.head_spec = student.head_spec
        self.feature_info: list[FeatureInfo] = list(student.feature_info)
        self.checkpoint_info = getattr(student, "checkpoint_info", None)
        # Lengths and errors come from the original's own code. Held outside the module tree,
        # so that moving or casting this twin never touches the caller's model.
        self._geometry: ConvStudent
        object.__setattr__(self, "_geometry", student)
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
        spec = student.head_spec
        self.head = FusedConv(
            torch.cat([h.weight.detach() for h in heads]),
            torch.cat([h.bias.detach() for h in heads if h.bias is not None]),
            spec.stride,
            spec.padding,
        )
        self._order = {info.name: i for i, info in enumerate(self.feature_info)}
        self.dtype = torch.float32
        self.fp32_convs: tuple[str, ...] = ()
        # float32 originals (shared with the parameters until set_dtype swaps them: no copy)
        self._fp32 = {name: p.detach() for name, p in self.named_parameters()}
        self._body: Callable[[torch.Tensor, frozenset[str], str], dict[str, torch.Tensor]] = (
            self._run
        )
        self.eval()

    def set_dtype(self, dtype: torch.dtype, keep_fp32: Sequence[str] = ()) -> None:
        """Run in ``dtype``, except the convolutions named in ``keep_fp32`` (features are still
        returned as float32). Weights always come from the float32 originals, so going to half
        precision and back loses nothing."""
        for name, param in self.named_parameters():
            conv = name.split(".")[1] if name.startswith("convs.") else None
            wanted = torch.float32 if conv in keep_fp32 else dtype
            param.data = self._fp32[name].to(device=param.device, dtype=wanted)
        self.dtype = dtype
        self.fp32_convs = tuple(keep_fp32) if dtype != torch.float32 else ()

    @property
    def head_layer(self) -> str:
        return self.head_spec.name

    def conv(self, name: str) -> FusedConv:
        """The fused convolution of layer ``name``."""
        conv = self.convs[name]
        assert isinstance(conv, FusedConv)
        return conv

    # -- geometry, delegated to the original student ----------------------------------------
    def output_length(self, layer: str, samples: int) -> int:
        return self._geometry.output_length(layer, samples)

    def min_samples(self, layer: str) -> int:
        return self._geometry.min_samples(layer)

    # -- forward ------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, wanted: frozenset[str], last: str) -> dict[str, torch.Tensor]:
        """Taps of a (batch, samples) float32 waveform, time-major (batch, channels, time)."""
        taps: dict[str, torch.Tensor] = {}
        x = x[:, None, None, :]  # one channel: time-major as it is
        for stage in self.stages:
            conv = self.conv(stage.conv_name)
            weight = conv.weight
            if x.dtype != weight.dtype:  # a layer kept in float32 (see set_dtype)
                x = x.to(weight.dtype)
            conv_tap, x = self._stage(conv, stage, x, stage.conv_name in wanted)
            if conv_tap is not None:
                taps[stage.conv_name] = conv_tap[:, :, 0]
            if stage.conv_name == last:
                return taps
            if stage.pool_name is not None and stage.pool_name in wanted:
                taps[stage.pool_name] = x[:, :, 0]
            if stage.pool_name == last:
                return taps
        head_weight: torch.Tensor = self.head.weight
        x = x.to(head_weight.dtype)
        taps[self.head_spec.name] = self.head(self.head.padded(x))[:, :, 0]
        return taps

    def _stage(
        self, conv: FusedConv, stage: _Stage, x: torch.Tensor, keep_conv: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One convolution, its ReLU and the pool after it (max-pool first: fewer values to
        rectify). Returns (the rectified convolution output when ``keep_conv``, else None;
        the stage's output). On a CPU, a large output is computed in pieces that stay in cache
        (conv1 of 16 five-second clips at once: 56 MB and 3x slower than clip by clip)."""
        padded = conv.padded(x)
        batch, steps, pool = padded.shape[0], conv.steps(padded.shape[-1]), stage.pool
        channels = conv.weight.shape[0]
        size = batch * steps * channels * padded.element_size()
        if padded.device.type != "cpu" or size <= _PIECE_BYTES:
            y = conv(padded)
            if pool == 1:
                y = F.relu_(y)
                return (y if keep_conv else None), y
            kept = F.relu(y) if keep_conv else None
            return kept, F.relu_(max_pool_time(y, pool))
        per_piece = max(pool, _PIECE_BYTES // (channels * padded.element_size()) // pool * pool)
        clips = max(1, per_piece // steps)
        out = _empty_time_major(batch, channels, steps // pool, padded)
        kept = _empty_time_major(batch, channels, steps, padded) if keep_conv and pool > 1 else None
        for first in range(0, batch, clips):
            rows = slice(first, first + clips)
            for start in range(0, steps, per_piece):
                end = min(steps, start + per_piece)
                first_sample, end_sample = (
                    start * conv.stride,
                    (end - 1) * conv.stride + conv.kernel,
                )
                y = conv(padded[rows, :, :, first_sample:end_sample])
                if kept is not None:
                    kept[rows, :, :, start:end] = F.relu(y)
                if pool > 1:
                    if y.shape[-1] < pool:  # the steps after the last whole window
                        continue
                    y = max_pool_time(y, pool)
                out[rows, :, :, start // pool : start // pool + y.shape[-1]] = y
        out = F.relu_(out)
        return (kept if kept is not None else out if keep_conv else None), out

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The same taps as ``ConvStudent.forward_features``, in float32."""
        x, layers = forward_inputs(self, wave, layers)
        last = max(layers, key=lambda name: self._geometry._tap_index_of(name))
        with torch.inference_mode():
            taps = self._body(x.float().contiguous(), frozenset(layers), last)
            return {name: taps[name].float() for name in layers}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-probabilities per head, as the original's ``forward``."""
        logits = self.forward_features(wave, [self.head_spec.name])[self.head_spec.name]
        out, start = {}, 0
        for head in self.head_specs:
            out[head.name] = F.log_softmax(logits[:, start : start + head.size], dim=1)
            start += head.size
        return out


def probe_clips(
    count: int = 4, seconds: float = 5.0, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Fixed, real-looking test sounds for precision checks: (count, samples), scaled as input.

    Each clip mixes what recordings hold: harmonic tones with vibrato and decaying notes,
    low-passed noise in bursts, clicks, mains hum, silent gaps, and a quiet passage ~40 dB
    below the loud one, so the check sees the dynamic range of real audio rather than one
    steady signal.
    """
    generator = torch.Generator().manual_seed(1234)
    n = int(seconds * sample_rate)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    clips = []
    for index in range(count):
        rand = torch.rand(8, generator=generator, dtype=torch.float64)
        pitch = 150 + 600 * rand[0]
        vibrato = 1 + 0.01 * torch.sin(2 * torch.pi * (4 + 3 * rand[1]) * t)
        phase = 2 * torch.pi * torch.cumsum(pitch * vibrato, 0) / sample_rate
        tone = sum(torch.sin(k * phase) / k for k in range(1, 6))
        notes = torch.exp(-((t * (1.5 + rand[2])) % 1.0) * 4)  # struck notes, decaying
        noise = torch.randn(n, generator=generator, dtype=torch.float64)
        corner = 300 + 4000 * rand[3]  # a gentle low-pass: darker or brighter noise
        freqs = torch.fft.rfftfreq(n, 1 / sample_rate, dtype=torch.float64)
        noise = torch.fft.irfft(torch.fft.rfft(noise) / (1 + freqs / corner), n)
        noise = noise / noise.abs().max()
        bursts = (torch.sin(2 * torch.pi * (0.7 + rand[4]) * t) > 0.3).double()
        clicks = torch.zeros(n, dtype=torch.float64)
        where = torch.randint(0, n, (int(20 + 40 * rand[5]),), generator=generator)
        clicks[where] = torch.randn(len(where), generator=generator, dtype=torch.float64)
        hum = 0.02 * torch.sin(2 * torch.pi * 50 * t)
        mix = 0.3 * tone * notes + 0.4 * noise * bursts + 0.8 * clicks + hum
        level = torch.ones(n, dtype=torch.float64)
        quiet = slice(int(n * (0.55 + 0.1 * rand[6])), int(n * (0.75 + 0.1 * rand[6])))
        level[quiet] = 0.01  # about -40 dB
        level[: int(n * 0.05 * (index % 3))] = 0.0  # some clips start with silence
        mix = mix * level
        peak = mix.abs().max().clamp_min(1e-9)
        clips.append(mix / peak * (0.1 + 0.8 * rand[7]))  # peaks from -20 dB to about 0 dB
    return (torch.stack(clips) * SCALE).float()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    scale = reference.abs().max().item()
    return (ours.float() - reference.float()).abs().max().item() / (scale if scale > 0 else 1.0)


def clip_errors(ours: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """:func:`relative_error` of each clip of a batch (batch, channels, time): the measure a
    features file is judged by."""
    return [relative_error(a, b) for a, b in zip(ours, reference, strict=True)]


def precision_error(
    fast: FastStudent,
    layers: Sequence[str],
    dtype: torch.dtype,
    wave: torch.Tensor | None = None,
    keep_fp32: Sequence[str] = (),
) -> float:
    """Worst relative error of any clip at any of ``layers`` in ``dtype`` against float32, on
    ``wave`` (default: :func:`probe_clips`), with the convolutions ``keep_fp32`` in float32."""
    if wave is None:
        needed = max(fast.min_samples(name) for name in layers) / fast.sample_rate
        wave = probe_clips(seconds=max(5.0, needed + 1.0), sample_rate=fast.sample_rate)
    wave = wave.to(fast.device)
    previous = (fast.dtype, fast.fp32_convs)
    try:
        fast.set_dtype(torch.float32)
        reference = fast.forward_features(wave, layers)
        fast.set_dtype(dtype, keep_fp32=keep_fp32)
        ours = fast.forward_features(wave, layers)
    finally:
        fast.set_dtype(previous[0], keep_fp32=previous[1])
    return max(max(clip_errors(ours[name], reference[name])) for name in layers)


def stage_errors(fast: FastStudent, dtype: torch.dtype, wave: torch.Tensor) -> dict[str, float]:
    """Each convolution alone in ``dtype``, fed the float32 input it sees in a float32 run:
    its output's worst relative error per clip. Finds the one layer a CPU's half-precision
    kernel gets wrong (a whole-model error does not say where)."""
    errors: dict[str, float] = {}
    previous = (fast.dtype, fast.fp32_convs)
    try:
        fast.set_dtype(torch.float32)
        with torch.inference_mode():
            x = as_batch(wave).to(fast.device, torch.float32)[:, None]
            for stage in fast.stages:
                conv = fast.conv(stage.conv_name)
                reference = conv.conv1d(x)
                half = copy.deepcopy(conv).to(dtype)
                ours = half.conv1d(x.to(dtype)).float()
                errors[stage.conv_name] = max(clip_errors(ours, reference))
                x = F.relu(reference)
                if stage.pool_name is not None:
                    x = F.max_pool1d(x, stage.pool, stage.pool)
    finally:
        fast.set_dtype(previous[0], keep_fp32=previous[1])
    return errors


def half_supported(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when ``device`` runs ``dtype`` convolutions natively, else the reason it does not
    (emulated half precision on a CPU is slower than float32, so it is not used)."""
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
        return None
    if device.type != "cpu":
        return None
    check = {
        torch.bfloat16: ("_is_mkldnn_bf16_supported", "bf16 (AVX512-BF16 or AMX)"),
        torch.float16: ("_is_mkldnn_fp16_supported", "fp16 (AVX512-FP16 or AMX-FP16)"),
    }[dtype]
    try:
        native = bool(getattr(torch.ops.mkldnn, check[0])())
    except (AttributeError, RuntimeError):
        native = False
    return None if native else f"this CPU has no {check[1]} instructions"


class ProbeCache(Protocol):
    """Where :func:`optimise` remembers a precision check (``weights.identity.PrecisionCache``)."""

    def get(self, precision: str, layers: Sequence[str]) -> dict[str, Any] | None: ...

    def put(self, precision: str, layers: Sequence[str], value: dict[str, Any]) -> None: ...


def choose_precision(
    fast: FastStudent,
    precision: str,
    layers: Sequence[str],
    limit: float,
    cache: ProbeCache | None = None,
) -> tuple[tuple[str, ...] | None, float, str]:
    """(convolutions kept in float32, or None for all-float32; the measured error; a note).

    Each convolution is checked alone (one whose own error exceeds ``limit`` stays in float32),
    then the whole model at ``layers``, on :func:`probe_clips`.
    """
    dtype = _DTYPES[precision]
    unsupported = half_supported(fast.device, dtype)
    if unsupported is not None:
        return None, float("inf"), f"{unsupported}"
    cached = cache.get(precision, layers) if cache is not None else None
    if cached is not None and isinstance(cached.get("error"), (int, float)):
        remembered = cached.get("keep_fp32")
        error = float(cached["error"])
        if error <= limit and isinstance(remembered, list):
            return tuple(remembered), error, str(cached.get("note", ""))
        if error > limit:
            return None, error, f"relative error {error:.2e} exceeds the tolerance {limit:.0e}"
    needed = max(fast.min_samples(name) for name in layers) / fast.sample_rate
    wave = probe_clips(seconds=max(5.0, needed + 1.0), sample_rate=fast.sample_rate)
    try:
        # Rounding gives each convolution an error of a few 1e-3; one above the tolerance on
        # its own has a kernel that is wrong on this device (even where later layers hide it).
        per_stage = stage_errors(fast, dtype, wave)
        kept = tuple(name for name, e in per_stage.items() if e > limit)
        if len(kept) == len(per_stage):  # nothing left to run in half precision
            worst = max(per_stage.values())
            return None, worst, f"relative error {worst:.2e} exceeds the tolerance {limit:.0e}"
        error = precision_error(fast, layers, dtype, wave, keep_fp32=kept)
        note = f"{', '.join(kept)} kept in fp32 (wrong in {precision} here)" if kept else ""
    except RuntimeError as exc:  # e.g. fp16 convolutions unsupported on this device
        return None, float("inf"), f"not supported here ({str(exc).splitlines()[0]})"
    if cache is not None:
        cache.put(precision, layers, {"error": error, "keep_fp32": list(kept), "note": note})
    if error > limit:
        return None, error, f"relative error {error:.2e} exceeds the tolerance {limit:.0e}"
    return kept, error, note


def rewrite_equals_forward(model: Student) -> str | None:
    """None when :class:`FastStudent` computes exactly what ``model``'s own code does, else why
    not. Only a :class:`ConvStudent` built of the plain layers it knows qualifies: a subclass
    that overrides a method the twin replaces (``forward_features``, ``forward``, the geometry)
    or holds another kind of block keeps its own forward."""
    if not isinstance(model, ConvStudent):
        return "it is not a layer-table conv student"
    cls = type(model)
    for method in _REWRITTEN_METHODS:
        if getattr(cls, method) is not getattr(ConvStudent, method):
            return f"{cls.__name__} overrides {method}"
    plain = {ConvBlock: nn.Conv1d, nn.MaxPool1d: None}
    for name, block in model.blocks.items():
        if type(block) not in plain:
            return f"its layer {name!r} is a {type(block).__name__}"
        if isinstance(block, ConvBlock) and (
            type(block.conv) is not nn.Conv1d or type(block.bn) is not nn.BatchNorm1d
        ):
            return f"its layer {name!r} is not a plain conv + BatchNorm"
    for name, head in model.heads.items():
        if type(head) is not nn.Conv1d:
            return f"its head {name!r} is a {type(head).__name__}"
    if model._forward_hooks or model._forward_pre_hooks:
        return "it has forward hooks"
    return None


# What FastStudent computes in place of the original's own code.
_REWRITTEN_METHODS = (
    "forward_features",
    "forward",
    "forward_inputs",
    "output_length",
    "min_samples",
    "_geometry",
    "_tap_index_of",
)


def optimise(
    model: Student,
    *,
    layers: Sequence[str] = ("pool5",),
    precision: str = "fp32",
    tolerance: float | None = None,
    compile: bool = False,
    cache: ProbeCache | None = None,
) -> Student:
    """The fastest equivalent of ``model`` for ``layers``, on the model's device.

    Only a plain :class:`ConvStudent` is rewritten (:func:`rewrite_equals_forward`); any other
    student (a plugin's own architecture, a subclass with its own ``forward_features``) is
    returned as is, and the reason is logged. Half precision is used only where the device runs
    it natively and its features at ``layers`` stay within ``tolerance`` of float32 on
    :func:`probe_clips` (checked once per weights, device and layers when a ``cache`` is
    given); otherwise float32 is kept and a warning says why.
    """
    if precision not in PRECISIONS:
        raise UsageProblem(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    reason = rewrite_equals_forward(model)
    if reason is not None or not isinstance(model, ConvStudent):
        log.info("%s runs its own forward (no inference rewrite: %s)", describe(model), reason)
        if precision != "fp32":
            log.warning("%s: %s has no half-precision path; using fp32", precision, describe(model))
        return model
    device = model.device
    fast = FastStudent(model).to(device)
    if precision != "fp32":
        limit = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
        kept, _error, note = choose_precision(fast, precision, layers, limit, cache)
        if kept is None:
            log.warning("%s: %s; using fp32", precision, note)
        else:
            fast.set_dtype(_DTYPES[precision], keep_fp32=kept)
            if note:
                log.info("%s: %s", precision, note)
    if compile:
        fast._body = torch.compile(fast._run, dynamic=True)
    return fast
