"""A distillation run's settings: defaults (the paper's recipe), TOML files, and what a resumed
run may change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from soundnet_cli.errors import UsageProblem
from soundnet_cli.training.settings import (
    check_positive,
    refuse_changed_settings,
    updated_settings,
)

LOSSES = ("kl", "l2")
EMBEDDING_LOSSES = ("infonce", "cosine")
# Settings a resumed run may change: they do not alter what the run computes.
RESUMABLE = frozenset({"steps", "workers", "device", "log_every", "eval_every"})


@dataclass(frozen=True)
class DistillConfig:
    """Every hyper-parameter of a run; recorded in RUN_DIR/config.json."""

    student: str = "soundnet8"
    teachers: tuple[str, ...] = ()  # heads of these teachers; () = every head of the corpus
    loss: str = "kl"
    kl_scale: float = 250.0
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 64
    steps: int = 100_000
    crop_seconds: float = 20.0
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    eval_every: int = 500
    held_out: float = 0.05
    workers: int = 2
    device: str = "auto"
    compile: bool = False
    # embedding heads (teachers of kind "embedding", such as clip:...) and mixed runs
    init: str = ""  # "" (the paper's init), "official" (SoundNet-8's weights) or a checkpoint
    embedding_layer: str = ""  # the student layer embedding heads project; "" = default layer
    embedding_loss: str = "infonce"
    temperature: float = 0.07  # InfoNCE's initial temperature (learnt)
    head_weights: dict[str, float] = field(default_factory=dict)  # head -> weight (default 1)

    def __post_init__(self) -> None:
        self.check()  # every config is valid from its construction: no caller checks again

    def check(self) -> None:
        """Refuse settings no run can use, in one line naming the setting."""
        if self.loss not in LOSSES:
            raise UsageProblem(
                f"the loss must be one of {', '.join(LOSSES)}, not {self.loss!r}", parameter="loss"
            )
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise UsageProblem(f"{name.replace('_', ' ')} must be at least 1", parameter=name)
        if not 0 <= self.held_out < 1:
            raise UsageProblem(
                f"the held-out fraction must be in [0, 1), not {self.held_out:g}",
                parameter="held_out",
            )
        if self.workers < 0:
            raise UsageProblem("workers must be at least 0", parameter="workers")
        check_positive("lr", self.lr)
        check_positive("kl_scale", self.kl_scale)
        check_positive("crop_seconds", self.crop_seconds)
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise UsageProblem(
                f"the embedding loss must be one of {', '.join(EMBEDDING_LOSSES)}, not "
                f"{self.embedding_loss!r}",
                parameter="embedding_loss",
            )
        check_positive("temperature", self.temperature)
        for head, weight in self.head_weights.items():
            check_positive(f"head_weight {head}", weight, zero=True, parameter="head_weight")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            check_positive(name, value, zero=True)
            if value >= 1:
                raise UsageProblem(f"{name} must be below 1, not {value:g}", parameter=name)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = list(self.teachers)
        data["head_weights"] = dict(self.head_weights)
        return data

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: DistillConfig | None = None
    ) -> DistillConfig:
        """``base`` updated with ``values`` (keys as in the dataclass, or with dashes)."""
        data = updated_settings((base or cls()).as_dict(), values, {f.name for f in fields(cls)})
        data["teachers"] = tuple(data["teachers"] or ())
        data["head_weights"] = {str(k): float(v) for k, v in dict(data["head_weights"]).items()}
        return cls(**data)


def read_toml(path: Path) -> dict[str, Any]:
    """Settings from a TOML file: its ``[distill]`` table, or the whole file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{path}: cannot read the config ({exc})") from exc
    return dict(data.get("distill", data))


def new_config(
    given: Mapping[str, Any], teachers: tuple[str, ...] = (), config_file: Path | None = None
) -> DistillConfig:
    """A new run's settings: defaults, then the TOML file, then the options given (``teachers``
    too: none given keeps the file's)."""
    base = DistillConfig.from_mapping(read_toml(config_file)) if config_file else None
    values = dict(given) | ({"teachers": tuple(teachers)} if teachers else {})
    return DistillConfig.from_mapping(values, base)


def resumed_config(recorded: DistillConfig, given: Mapping[str, Any]) -> DistillConfig:
    """A resumed run keeps its recorded settings; only :data:`RESUMABLE` ones may change
    (a config is checked once, when it is made)."""
    refuse_changed_settings(given, RESUMABLE)
    return DistillConfig.from_mapping(given, recorded)
