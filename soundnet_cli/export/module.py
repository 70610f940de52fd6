"""The module that gets exported: raw waveform in, one named tensor per requested output.

Its input is ``waveform``, float32 (batch, samples) in [-1, 1] at the model's sample rate; the
x256 scaling the network was trained with happens inside, so another runtime only has to decode
and resample. Outputs are (batch, channels, time), as ``forward_features`` gives them: a layer's
activations, or a head's probabilities over its categories (softmax of its slice of the output
layer's logits).

The forward pass uses no Python arithmetic on shapes, so it traces to a graph whose batch and
length stay free (the student's own ``forward_features`` checks lengths first, which an exporter
would freeze into constants).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from soundnet_cli.errors import LayerError, SoundnetError, UsageProblem
from soundnet_cli.media.audio import SCALE

if TYPE_CHECKING:
    from soundnet_cli.students.base import ConvStudent
    from soundnet_cli.students.contract import Student


class ExportError(SoundnetError):
    """A model that cannot be exported, or an exported file that does not match PyTorch."""


@dataclass(frozen=True)
class OutputSpec:
    """One output of the exported model."""

    name: str
    kind: str  # "layer", "head" or "embedding" (unit vectors of an embedding head)
    channels: int
    stride: int  # input samples per time step
    receptive_field: int
    offset: int
    categories: tuple[str, ...] | None = None
    clip: dict[str, Any] | None = None  # an embedding head's CLIP identity (its text tower)

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "shape": ["batch", self.channels, "time"],
            "stride": self.stride,
            "receptive_field": self.receptive_field,
            "offset": self.offset,
        }
        if self.categories is not None:
            row["categories"] = list(self.categories)
        if self.kind == "embedding":
            row["clip"] = self.clip
        return row


@dataclass(frozen=True)
class ExportPlan:
    """What the exported model computes: its outputs in order, and the shortest valid input."""

    architecture: str
    sample_rate: int
    outputs: tuple[OutputSpec, ...]
    min_samples: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def metadata(self) -> dict[str, Any]:
        """Stored inside the exported file, so that a user of another runtime can read it."""
        return {
            "architecture": self.architecture,
            "input": {
                "name": "waveform",
                "dtype": "float32",
                "shape": ["batch", "samples"],
                "range": [-1.0, 1.0],
                "sample_rate": self.sample_rate,
                "min_samples": self.min_samples,
                "scaling": f"x{SCALE:g} inside the model",
            },
            "outputs": [o.as_dict() for o in self.outputs],
            "provenance": self.provenance,
        }


def _conv_student(model: Student) -> ConvStudent | None:
    """A layer-table student (SoundNet-8/5, fine-tuned classifiers), exported block by block;
    None for any other student, which is exported through its own ``forward_features``."""
    from soundnet_cli.students.base import ConvStudent

    return model if isinstance(model, ConvStudent) else None


def plan_export(model: Student, layers: Sequence[str] = (), heads: bool = False) -> ExportPlan:
    """Check the requested outputs against ``model`` and describe them.

    ``layers`` are feature taps (duplicates dropped, order kept); ``heads`` adds one output per
    output head, and one per embedding head the checkpoint holds (unit vectors per step of its
    layer, (batch, size, time)). With neither, the model's default layer is exported.
    """
    taps = {info.name: info for info in model.feature_info}
    wanted = list(dict.fromkeys(layers))
    for name in wanted:
        if name not in taps:
            raise LayerError(
                f"{model.architecture} has no layer {name!r}; valid layers: {', '.join(taps)}"
            )
    if not wanted and not heads:
        wanted = [str(getattr(model, "default_layer", None) or list(taps)[-1])]
    outputs = []
    for name in wanted:
        info = taps[name]
        outputs.append(
            OutputSpec(name, "layer", info.channels, info.stride, info.receptive_field, info.offset)
        )
    head_layer: str | None = None
    if heads:
        conv = _conv_student(model)
        specs = conv.head_specs if conv is not None else None
        if not specs or conv is None:
            raise UsageProblem(
                f"{model.architecture} has no output heads to export", parameter="heads"
            )
        head_layer = conv.head_layer
        info = taps[head_layer]
        for head in specs:
            if head.name in wanted:
                raise UsageProblem(
                    f"head {head.name!r} has the name of a layer; export one or the other"
                )
            outputs.append(
                OutputSpec(
                    head.name,
                    "head",
                    head.size,
                    info.stride,
                    info.receptive_field,
                    info.offset,
                    tuple(head.categories) if head.categories is not None else None,
                )
            )
    embedding = embedding_heads(model) if heads else {}
    for name, head in embedding.items():
        info = taps[head.spec.layer]
        outputs.append(
            OutputSpec(
                name,
                "embedding",
                head.spec.size,
                info.stride,
                info.receptive_field,
                info.offset,
                clip=head.spec.clip,
            )
        )
    order = list(taps)
    wanted_taps = wanted + [h.spec.layer for h in embedding.values()]
    last = max((order.index(name) for name in wanted_taps), default=-1)
    if head_layer is not None:
        last = order.index(head_layer)
    min_samples = int(model.min_samples(order[last]))
    checkpoint = getattr(model, "checkpoint_info", None)
    provenance = {"checkpoint": str(checkpoint.path)} if checkpoint is not None else {}
    return ExportPlan(
        str(model.architecture), int(model.sample_rate), tuple(outputs), min_samples, provenance
    )


def embedding_heads(model: Any) -> dict[str, Any]:
    """The embedding heads loaded with the model's checkpoint (none: empty)."""
    return dict(getattr(model, "embedding_heads", None) or {})


class ExportModule(nn.Module):
    """``forward(waveform) -> tuple`` of the plan's outputs, in the plan's order."""

    def __init__(self, model: Student, plan: ExportPlan) -> None:
        super().__init__()
        self.plan = plan
        self.names = plan.names
        conv = _conv_student(model)
        self.direct = conv is not None
        if conv is None:
            self.student = model
        self.layers = [o.name for o in plan.outputs if o.kind == "layer"]
        self.head_names = [o.name for o in plan.outputs if o.kind == "head"]
        wanted = [o.name for o in plan.outputs if o.kind == "embedding"]
        heads = embedding_heads(model)
        self.embedding = nn.ModuleDict({name: heads[name] for name in wanted})
        self.embedding_layers = [heads[name].spec.layer for name in wanted]
        self.needed = list(dict.fromkeys(self.layers + self.embedding_layers))
        if conv is not None:
            order = [info.name for info in conv.feature_info]
            head_layer = conv.head_layer
            # the body blocks up to the deepest requested tap (all of them when heads are asked)
            stop = (
                len(order) - 1
                if self.head_names or head_layer in self.layers
                else max(order.index(name) for name in self.needed)
            )
            self.block_names = [name for name in conv.blocks if order.index(name) <= stop]
            self.body = nn.ModuleList(conv.blocks[name] for name in self.block_names)
            self.head_layer = head_layer
            self.run_heads = stop == len(order) - 1
            self.head_convs = nn.ModuleList(conv.heads.values()) if self.run_heads else None
        self.eval()

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (waveform * SCALE).unsqueeze(1)
        taps: dict[str, torch.Tensor] = {}
        if not self.direct:
            taps.update(self.student.forward_features(x, self.needed))
            for (name, head), layer in zip(
                self.embedding.items(), self.embedding_layers, strict=True
            ):
                taps[name] = F.normalize(head(taps[layer]), dim=1)
            return tuple(taps[name] for name in self.names)
        for name, block in zip(self.block_names, self.body, strict=True):
            x = block(x)
            taps[name] = x
        if self.head_convs is not None:
            logits = [conv(x) for conv in self.head_convs]
            taps[self.head_layer] = torch.cat(logits, dim=1)
            if self.head_names:
                for name, head_logits in zip(self.head_names, logits, strict=True):
                    taps[name] = F.softmax(head_logits, dim=1)
        for (name, head), layer in zip(self.embedding.items(), self.embedding_layers, strict=True):
            taps[name] = F.normalize(head(taps[layer]), dim=1)
        return tuple(taps[name] for name in self.names)


class NamedOutputs(nn.Module):
    """The same outputs as a ``{name: tensor}`` dict (TorchScript keeps the names this way)."""

    def __init__(self, inner: ExportModule) -> None:
        super().__init__()
        self.inner = inner
        self.names = inner.names

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.inner(waveform), strict=True))


def reference_outputs(
    model: Student, plan: ExportPlan, waveform: torch.Tensor
) -> list[torch.Tensor]:
    """The plan's outputs computed by the model itself in PyTorch, for verification."""
    scaled = waveform * SCALE
    layers = [o.name for o in plan.outputs if o.kind == "layer"]
    embedding = {
        o.name: embedding_heads(model)[o.name] for o in plan.outputs if o.kind == "embedding"
    }
    needed = list(dict.fromkeys(layers + [h.spec.layer for h in embedding.values()]))
    with torch.inference_mode():
        taps = dict(model.forward_features(scaled, needed)) if needed else {}
        conv = _conv_student(model)
        if conv is not None and any(o.kind == "head" for o in plan.outputs):
            taps.update({name: lp.exp() for name, lp in conv(scaled).items()})
        for name, head in embedding.items():
            taps[name] = F.normalize(head(taps[head.spec.layer]), dim=1)
    return [taps[name].float() for name in plan.names]
