"""A fine-tuning run's settings and what a resumed run may change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from soundnet_cli.errors import UsageProblem
from soundnet_cli.training.settings import check_positive, updated_settings

INITS = ("pretrained", "scratch")
# Settings a resumed run may change: they do not alter what the run computes.
RESUMABLE = frozenset({"device", "threads", "log_every", "eval_every", "workers"})


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run; recorded in RUN_DIR/config.json."""

    init: str = "pretrained"
    student: str = "soundnet8"
    checkpoint: str | None = None  # --init pretrained from this file, not the official weights
    layer: str | None = None  # None: the student's default layer (pool5 for SoundNet-8)
    # layers before this one keep their weights; "auto": a pretrained network's first two conv
    # layers (and their pools), nothing from scratch; "none": train every layer
    freeze_below: str = "auto"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3  # the classifier, and every layer of a network from scratch
    body_lr: float = 1e-4  # pretrained layers
    weight_decay: float = 0.0
    crop_seconds: float = 3.0
    seed: int = 0
    eval_every: int = 0  # steps between test evaluations; 0: every 5 epochs and at the end
    log_every: int = 5
    workers: int = 2  # decoding threads
    threads: int | None = None
    device: str = "auto"
    mix: str = "first"

    def __post_init__(self) -> None:
        self.check()  # every config is valid from its construction: no caller checks again

    def check(self) -> None:
        """Refuse settings no run can use, in one line naming the setting."""
        if self.init not in INITS:
            raise UsageProblem(
                f"init must be one of {', '.join(INITS)}, not {self.init!r}", parameter="init"
            )
        if self.checkpoint is not None and self.init != "pretrained":
            raise UsageProblem(
                "a checkpoint gives the weights to start from: it goes with init 'pretrained'",
                parameter=("checkpoint", "init"),
            )
        for name in ("epochs", "batch_size", "log_every", "workers"):
            if getattr(self, name) < 1:
                raise UsageProblem(f"{name.replace('_', ' ')} must be at least 1", parameter=name)
        check_positive("lr", self.lr)
        check_positive("body_lr", self.body_lr, zero=True)
        check_positive("weight_decay", self.weight_decay, zero=True)
        check_positive("crop_seconds", self.crop_seconds)
        if self.eval_every < 0:
            raise UsageProblem("eval every must be at least 0", parameter="eval_every")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: FinetuneConfig | None = None
    ) -> FinetuneConfig:
        """``base`` updated with ``values`` (keys as in the dataclass, or with dashes)."""
        known = {f.name for f in fields(cls)}
        return cls(**updated_settings((base or cls()).as_dict(), values, known))
