"""A distillation run's settings: defaults (the paper's recipe), TOML files, and what a resumed
run may change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from soundnet_cli.errors import UsageProblem

LOSSES = ("kl", "l2")
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

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise UsageProblem(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise UsageProblem(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.held_out < 1:
            raise UsageProblem("--held-out must be in [0, 1)")
        if self.lr <= 0 or self.workers < 0:
            raise UsageProblem("--lr must be positive and --workers >= 0")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = list(self.teachers)
        return data

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: DistillConfig | None = None
    ) -> DistillConfig:
        """``base`` updated with ``values`` (keys as in the dataclass, or with dashes)."""
        data = updated_settings((base or cls()).as_dict(), values, {f.name for f in fields(cls)})
        data["teachers"] = tuple(data["teachers"] or ())
        return cls(**data)


def updated_settings(
    data: dict[str, Any], values: Mapping[str, Any], known: set[str]
) -> dict[str, Any]:
    """``data`` with ``values`` applied (keys as in the dataclass, or with dashes); an unknown
    key is a usage error listing the known ones. Shared by distill's and finetune's settings."""
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UsageProblem(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
        data[name] = value
    return data


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
    """A new run's settings: defaults, then the TOML file, then the options given."""
    base = DistillConfig.from_mapping(read_toml(config_file)) if config_file else None
    config = DistillConfig.from_mapping(dict(given) | {"teachers": tuple(teachers)}, base)
    config.check()
    return config


def refuse_changed_settings(given: Mapping[str, Any], resumable: frozenset[str]) -> None:
    """A resumed run (distillation or fine-tuning) keeps its recorded settings: refuse any given
    setting outside ``resumable``, naming the options that may change."""
    changed = set(given) - resumable
    if changed:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(resumable))
        raise UsageProblem(
            f"a resumed run keeps its settings; only {allowed} may change "
            f"(got {', '.join(sorted(changed))})"
        )


def resumed_config(recorded: DistillConfig, given: Mapping[str, Any]) -> DistillConfig:
    """A resumed run keeps its recorded settings; only :data:`RESUMABLE` ones may change."""
    refuse_changed_settings(given, RESUMABLE)
    config = DistillConfig.from_mapping(given, recorded)
    config.check()
    return config
