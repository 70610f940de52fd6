"""The network a run with embedding heads trains: the student, its embedding heads and their
temperatures, in one module (so DDP, checkpoints and resume treat them as one).

``forward(wave)`` runs the student's body once, up to the deepest layer it needs, and returns
the posterior heads' log-probabilities (batch, categories, time) and the embedding heads' unit
vectors per frame interval (batch, frames, size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soundnet_cli.errors import UsageProblem
from soundnet_cli.students.embedding import EmbeddingHead, EmbeddingHeadSpec, frame_weights
from soundnet_cli.training.distillation.losses import initial_logit_scale


class DistillNet(nn.Module):
    def __init__(
        self,
        student: Any,
        posterior: Sequence[str],
        specs: Sequence[EmbeddingHeadSpec],
        *,
        crop_samples: int,
        frames: int,
        interval: float,
        temperature: float,
    ) -> None:
        super().__init__()
        self.student = student
        self.posterior = list(posterior)
        self.embedding = nn.ModuleDict({s.name: EmbeddingHead(s) for s in specs})
        self.logit_scale = nn.ParameterDict(
            {s.name: nn.Parameter(torch.tensor(initial_logit_scale(temperature))) for s in specs}
        )
        from soundnet_cli.students.contract import feature_of

        for spec in specs:
            steps = student.output_length(spec.layer, crop_samples)
            if steps < 1:
                raise UsageProblem(
                    f"{crop_samples} samples are too short for the embedding layer {spec.layer!r}"
                )
            centres = feature_of(student, spec.layer).step_centres(steps, student.sample_rate)
            self.register_buffer(
                f"frames_{spec.name.replace('-', '_')}",
                frame_weights(centres, interval, frames),
                persistent=False,
            )
        self._layers = sorted({s.layer for s in specs})
        if self.posterior:
            self._layers.append(student.head_spec.name)

    def frame_weights(self, name: str) -> torch.Tensor:
        return getattr(self, f"frames_{name.replace('-', '_')}")

    def forward(
        self, wave: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        taps = self.student.forward_features(wave, self._layers)
        log_probs: dict[str, torch.Tensor] = {}
        if self.posterior:
            logits = taps[self.student.head_spec.name]
            sizes = [h.size for h in self.student.head_specs]
            for spec, part in zip(
                self.student.head_specs, torch.split(logits, sizes, dim=1), strict=True
            ):
                if spec.name in self.posterior:
                    log_probs[spec.name] = F.log_softmax(part, dim=1)
        vectors = {}
        for name, head in self.embedding.items():
            assert isinstance(head, EmbeddingHead)
            vectors[name] = head.span_vectors(taps[head.spec.layer], self.frame_weights(name))
        return log_probs, vectors

    def heads_for_export(self) -> Mapping[str, EmbeddingHead]:
        return dict(self.embedding.items())  # type: ignore[arg-type]
