"""The student contract: what every command uses of a student, and the checks they share.

A student is a ``torch.nn.Module`` with the members of :class:`Student`. Builtins and plugins
may subclass :class:`StudentBase`, which supplies ``device``, ``layer_names`` and the
argument checks of ``forward_features`` (:meth:`StudentBase.forward_inputs`), so that
every student words its errors the same way. ``soundnet_cli.testing.check_student`` checks
every member; a student that passes it runs through extract, predict, evaluate and HEAR.
Commands use nothing else: a layer's entry is :func:`feature_of` (not a method), and a student
with output heads keeps :class:`HeadedStudent` too. The contract's types (:class:`FeatureInfo`,
:class:`HeadSpec`) live here; ``students.base`` builds on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from soundnet_cli.errors import AudioError, LayerError, SoundnetError
from soundnet_cli.media.audio import SAMPLE_RATE

HEAD_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class HeadSpec:
    """One output head (one per teacher head): a name and its categories."""

    name: str
    size: int
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not HEAD_NAME.match(self.name):
            raise SoundnetError(
                f"head name {self.name!r} must be lower-case letters, digits, - or _"
            )
        if self.size < 1:
            raise SoundnetError(f"head {self.name!r} needs at least one category")
        if self.categories is not None and len(self.categories) != self.size:
            raise SoundnetError(
                f"head {self.name!r}: {len(self.categories)} category names for {self.size} outputs"
            )


@dataclass(frozen=True)
class FeatureInfo:
    """A feature tap. ``stride`` and ``receptive_field`` are in input samples; ``offset`` is the
    input sample (negative inside the zero padding) where step 0's receptive field begins."""

    name: str
    channels: int
    stride: int
    receptive_field: int
    offset: int

    def step_centres(self, steps: int, sample_rate: int = SAMPLE_RATE) -> list[float]:
        """Centre of each time step's receptive field, in seconds."""
        half = (self.receptive_field - 1) / 2
        return [(self.offset + i * self.stride + half) / sample_rate for i in range(steps)]


class LayerGeometry(Protocol):
    """The part of the contract that says which layers exist and how long their outputs are."""

    @property
    def architecture(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def feature_info(self) -> Sequence[FeatureInfo]: ...

    def min_samples(self, layer: str) -> int: ...

    def output_length(self, layer: str, samples: int) -> int: ...


@runtime_checkable
class Student(LayerGeometry, Protocol):
    """Every member a command relies on.

    ``architecture`` names the network; ``sample_rate`` is 22,050; ``feature_info`` lists the
    taps (name, channels, stride, receptive field, offset); ``default_layer`` is the tap used
    when none is asked for; ``device`` is where it runs. ``forward_features(wave, layers)``
    takes (samples,), (batch, samples) or (batch, 1, samples) float32 at ``sample_rate``
    scaled to [-256, 256] and returns ``{layer: (batch, channels, time)}`` for exactly the
    requested layers, where ``channels`` is the layer's ``feature_info`` entry and ``time`` is
    ``output_length(layer, samples)``; ``min_samples(layer)`` is the shortest input giving
    one step.
    """

    @property
    def default_layer(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class HeadedStudent(Student, Protocol):
    """A student with output heads: what ``predict`` (and the units report's predictions) use.

    ``head_specs`` lists the heads (name, size, category names); ``head_layer`` is the
    ``feature_info`` tap the heads' time steps align with; calling the student on a waveform
    returns ``{head: log-probabilities (batch, categories, time)}``.
    """

    @property
    def head_specs(self) -> Sequence[HeadSpec]: ...

    @property
    def head_layer(self) -> str: ...

    def __call__(self, wave: torch.Tensor) -> dict[str, torch.Tensor]: ...


def has_named_heads(student: object) -> bool:
    """Whether ``student`` keeps :class:`HeadedStudent` with a category name for every output."""
    heads = getattr(student, "head_specs", None)
    return (
        bool(heads)
        and isinstance(getattr(student, "head_layer", None), str)
        and callable(student)
        and all(getattr(h, "categories", None) for h in heads or ())
    )


def describe(student: object) -> str:
    """How errors name a student: ``student 'soundnet8'``."""
    return f"student {getattr(student, 'architecture', type(student).__name__)!r}"


def feature_of(student: LayerGeometry, name: str) -> FeatureInfo:
    """The ``feature_info`` entry called ``name``; LayerError listing the valid ones if none."""
    for info in student.feature_info:
        if info.name == name:
            return info
    valid = ", ".join(info.name for info in student.feature_info)
    raise LayerError(f"{student.architecture} has no layer {name!r}; valid layers: {valid}")


def as_batch(wave: torch.Tensor) -> torch.Tensor:
    """(samples,), (batch, samples) or (batch, 1, samples) -> (batch, samples)."""
    if wave.dim() == 1:
        return wave[None]
    if wave.dim() == 2:
        return wave
    if wave.dim() == 3 and wave.shape[1] == 1:
        return wave[:, 0]
    raise SoundnetError(
        f"expected a waveform shaped (samples,), (batch, samples) or (batch, 1, samples); "
        f"got {tuple(wave.shape)}"
    )


def forward_inputs(
    student: LayerGeometry, wave: torch.Tensor, layers: Sequence[str] | str
) -> tuple[torch.Tensor, list[str]]:
    """The checks every ``forward_features`` starts with: known layers (LayerError), a
    waveform shape (SoundnetError), long enough for every requested layer (AudioError giving
    the minimum). Returns the waveform as (batch, samples) and the layers as a list."""
    wanted = [layers] if isinstance(layers, str) else list(layers)
    if not wanted:
        valid = ", ".join(info.name for info in student.feature_info)
        raise LayerError(f"no layer requested; valid layers: {valid}")
    for name in wanted:
        feature_of(student, name)
    batch = as_batch(wave)
    samples = batch.shape[-1]
    rate = student.sample_rate
    for name in sorted(wanted, key=student.min_samples, reverse=True):  # the deepest first
        if student.output_length(name, samples) <= 0:
            need = student.min_samples(name)
            raise AudioError(
                f"input of {samples} samples ({samples / rate:.3f} s) is too short for layer "
                f"{name!r}, which needs at least {need} samples ({need / rate:.3f} s)"
            )
    return batch, wanted


def check_taps(
    student: LayerGeometry,
    taps: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    batch: int,
    samples: int,
) -> None:
    """Stop a student that returned something else than the contract says, naming it."""
    who = describe(student)
    missing = [name for name in layers if name not in taps]
    if missing:
        raise SoundnetError(f"{who} returned no {', '.join(map(repr, missing))} layer")
    for name in layers:
        tensor = taps[name]
        info = feature_of(student, name)
        expected = (batch, info.channels, student.output_length(name, samples))
        shape = tuple(getattr(tensor, "shape", ()))
        if not isinstance(tensor, torch.Tensor) or shape != expected:
            raise SoundnetError(
                f"{who} returned layer {name!r} shaped {shape} for {batch} x {samples} samples; "
                f"its contract says {expected} (batch, channels, time)"
            )


class StudentBase(nn.Module):
    """What students share: ``device``, layer lookups and the forward argument checks.

    Subclasses set ``architecture``, ``feature_info`` and ``default_layer`` and implement
    ``output_length``, ``min_samples`` and ``forward_features``.
    """

    architecture: str
    sample_rate: int = SAMPLE_RATE
    feature_info: Sequence[FeatureInfo]
    default_layer: str

    @property
    def device(self) -> torch.device:
        """Where the student's parameters (or, for parameter-free ones, buffers) live."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.feature_info]

    def feature(self, name: str) -> FeatureInfo:
        """``feature_of(self, name)``; commands call :func:`feature_of`, which every student has."""
        return feature_of(self, name)

    def forward_inputs(
        self, wave: torch.Tensor, layers: Sequence[str] | str
    ) -> tuple[torch.Tensor, list[str]]:
        return forward_inputs(self, wave, layers)

    def output_length(self, layer: str, samples: int) -> int:
        raise NotImplementedError(f"{describe(self)} must define output_length(layer, samples)")

    def min_samples(self, layer: str) -> int:
        raise NotImplementedError(f"{describe(self)} must define min_samples(layer)")
