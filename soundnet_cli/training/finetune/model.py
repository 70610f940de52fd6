"""The network fine-tuning trains: the student cut at a layer with a linear classifier on every
time step, which layers learn (and how fast), and the logits of whole clips.

Pretrained layers learn with ``body_lr`` (30x lower than the classifier's ``lr``) and keep their
BatchNorm statistics (fine-tuning batches are small), and by default the first two conv layers
(generic filters, and the costliest to train on a CPU) stay fixed; a network from scratch learns
everything with ``lr`` and BatchNorm learns its statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.training.finetune.config import FinetuneConfig
from soundnet_cli.training.finetune.data import ClipAudio, Task


def build_model(config: FinetuneConfig, task: Task) -> Any:
    """The classifier student (cut at the layer, named after the task's classes), with the
    pretrained body's weights unless ``init == "scratch"``."""
    from soundnet_cli.models import load_student
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students import ConvStudent, HeadSpec
    from soundnet_cli.students.classifier import base_architecture, classifier_on

    base: Any = None
    if config.init == "pretrained":
        base = (
            load_student(config.checkpoint)
            if config.checkpoint is not None
            else load_student(config.student, pretrained=True)
        )
    architecture = base_architecture(str(base.architecture)) if base is not None else config.student
    template = get_plugins().students.create(architecture)
    if not isinstance(template, ConvStudent):
        raise UsageProblem(
            f"{architecture} is not a layer-table conv student; fine-tuning supports soundnet8, "
            "soundnet5 and students built like them"
        )
    layer = str(config.layer or (base or template).default_layer)
    heads = [HeadSpec(task.head, len(task.classes), task.classes)]
    model = classifier_on(template, layer, heads)
    body = [spec.name for spec in model.body_spec]
    if config.freeze_below not in ("auto", "none", *body):
        raise UsageProblem(
            f"freeze below must be auto, none or a layer of the network "
            f"({', '.join(body)}), not {config.freeze_below!r}",
            parameter="freeze_below",
        )
    if base is not None:
        state = {
            key: value
            for key, value in base.state_dict().items()
            if key.startswith("blocks.") and key.split(".")[1] in model.blocks
        }
        missing = [k for k in model.state_dict() if k.startswith("blocks.") and k not in state]
        if missing:
            raise SoundnetError(
                f"the pretrained {base.architecture} lacks {missing[0]} of the network to train"
            )
        model.load_state_dict(state, strict=False)
    return model


def resolve_freeze(model: Any, config: FinetuneConfig) -> str | None:
    """The first trained layer ``freeze_below`` names (None: every layer trains)."""
    from soundnet_cli.students import ConvLayer

    if config.freeze_below == "none":
        return None
    if config.freeze_below != "auto":
        return config.freeze_below
    if config.init != "pretrained":
        return None
    convs = [spec.name for spec in model.body_spec if isinstance(spec, ConvLayer)]
    return convs[2] if len(convs) > 2 else None


def frozen_layers(model: Any, config: FinetuneConfig) -> list[str]:
    """The body layers that keep their weights: those before the resolved ``freeze_below``."""
    first = resolve_freeze(model, config)
    names = [spec.name for spec in model.body_spec]
    return names[: names.index(first)] if first is not None else []


def set_training(model: Any, config: FinetuneConfig) -> None:
    """Train mode, except the BatchNorm layers that keep their statistics: every one of a
    pretrained network, and those of frozen layers."""
    model.train()
    frozen = set(frozen_layers(model, config))
    for name, block in model.blocks.items():
        if config.init == "pretrained" or name in frozen:
            for module in block.modules():
                if isinstance(module, torch.nn.BatchNorm1d | torch.nn.SyncBatchNorm):
                    module.eval()


def make_optimizer(model: Any, config: FinetuneConfig) -> Any:
    """Adam: the classifier at ``lr``; the body at ``body_lr`` when pretrained (``lr`` from
    scratch); frozen layers not at all."""
    frozen = set(frozen_layers(model, config))
    body = []
    for name, block in model.blocks.items():
        for parameter in block.parameters():
            parameter.requires_grad_(name not in frozen)
            if name not in frozen:
                body.append(parameter)
    body_lr = config.body_lr if config.init == "pretrained" else config.lr
    groups = [{"params": list(model.heads.parameters()), "lr": config.lr}]
    if body and body_lr > 0:
        groups.append({"params": body, "lr": body_lr})
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


class PooledLogits(torch.nn.Module):
    """What training calls: the classifier's logits averaged over time steps, (batch, classes).
    (A module of its own, so that DDP wraps the call that training makes.)"""

    def __init__(self, student: Any) -> None:
        super().__init__()
        self.student = student

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        tap = self.student.head_spec.name
        return self.student.forward_features(wave, [tap])[tap].mean(dim=-1)


def clip_logits(model: Any, audio: ClipAudio, indices: Sequence[int], samples: int) -> np.ndarray:
    """Each clip's logits averaged over all its time steps (clips repeated to ``samples``), in
    eval mode; clips of equal length run together."""
    tap = model.head_spec.name
    device = model.device
    out = np.zeros((len(indices), model.head_specs[0].size), np.float32)
    waves = [audio.whole(i, samples) for i in indices]
    by_length: dict[int, list[int]] = {}
    for position, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(position)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for positions in by_length.values():
                for first in range(0, len(positions), 16):
                    chunk = positions[first : first + 16]
                    batch = torch.from_numpy(np.stack([waves[p] for p in chunk])).to(device)
                    logits = model.forward_features(batch, [tap])[tap].mean(dim=-1)
                    out[chunk] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
