"""Options that several commands share, declared once.

Each factory returns a ``typer.Option`` whose validator runs while the command line is parsed,
so a bad value exits 2 with one line (``Invalid value for '--precision': ...``) before the
command creates a folder or loads a model. The library's own checks stay in place for Python
callers; these only make the CLI refuse early and name the flag.

A command uses them as defaults: ``device: str = _options.device()``. Choices that live in
modules importing torch or numpy are looked up when a value is checked, not when the CLI is
imported, so ``--help`` stays fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

DEVICE_HELP = "auto, cpu, cuda or cuda:N."
PRECISION_HELP = (
    "fp32 (default), bf16 or fp16: half precision where the device runs it natively (CUDA; "
    "CPUs with AVX512-BF16/AMX for bf16), after a check that features stay within 3e-2 "
    "(bf16) or 1e-2 (fp16) of fp32; otherwise fp32, with a note."
)
MIX_HELP = "Channel handling: first (as the authors' release) or mean."
CHECKPOINT_HELP = "A student checkpoint (.safetensors) instead of SoundNet-8."
STUDENT_HELP = "A registered student by name (untrained unless soundnet8)."
JSON_HELP = "Print JSON for scripts."
MAX_CHUNK_SECONDS = 3600.0  # an hour of float32 audio is 320 MB; more gains nothing
MAX_REPEAT_SECONDS = 600.0  # clips are repeated to this length in memory before windowing

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _check_device(value: str | None) -> str | None:
    if value is not None and not _DEVICE.fullmatch(value):
        raise typer.BadParameter(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
    return value


def _check_precision(value: str) -> str:
    from soundnet_cli.runtime import import_torch

    import_torch()  # the precisions are defined next to the code that runs them
    from soundnet_cli.students.inference import PRECISIONS

    if value not in PRECISIONS:
        raise typer.BadParameter(f"must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value


def _check_mix(value: str | None) -> str | None:
    from soundnet_cli.media.audio import MIX_CHOICES

    if value is not None and value not in MIX_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(MIX_CHOICES)}, not {value!r}")
    return value


def _check_output_file(value: Path | None) -> Path | None:
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give the path of a file to write")
    return value


def _check_checkpoint_file(value: Path | None) -> Path | None:
    if value is not None and value.is_dir() and (value / "student.safetensors").is_file():
        return value / "student.safetensors"  # a distill run folder: its exported student
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder, not a checkpoint file")
    return value


def device(default: str | None = "auto", help: str = DEVICE_HELP) -> Any:
    """``--device``: auto, cpu, cuda or cuda:N (whether CUDA is there is checked on use)."""
    return typer.Option(default, "--device", help=help, callback=_check_device)


def precision(default: str = "fp32", help: str = PRECISION_HELP) -> Any:
    """``--precision``: fp32, bf16 or fp16."""
    return typer.Option(default, "--precision", help=help, callback=_check_precision)


def mix(default: str | None = "first", help: str = MIX_HELP) -> Any:
    """``--mix``: how channels become mono (first or mean)."""
    return typer.Option(default, "--mix", help=help, callback=_check_mix)


def checkpoint(help: str = CHECKPOINT_HELP) -> Any:
    """``--checkpoint``: a student checkpoint file."""
    return typer.Option(None, "--checkpoint", help=help, callback=_check_checkpoint_file)


def student(help: str = STUDENT_HELP) -> Any:
    """``--student``: a registered student's name."""
    return typer.Option(None, "--student", help=help)


def json_flag(help: str = JSON_HELP) -> Any:
    """``--json``: machine-readable output on stdout."""
    return typer.Option(False, "--json", help=help)


def threads(help: str = "Model threads on CPU [default: the cores workers leave].") -> Any:
    """``--threads``: at least one."""
    return typer.Option(None, "--threads", min=1, help=help)


def _check_weight_specs(values: list[str]) -> list[str]:
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.teachers import parse_weight_specs

    try:
        parse_weight_specs(values)
    except UsageProblem as exc:
        raise typer.BadParameter(str(exc)) from None
    return values


def teacher_weights(help: str) -> Any:
    """``--teacher-weights NAME=PATH`` (repeatable): local weights instead of downloads."""
    return typer.Option(
        [], "--teacher-weights", metavar="NAME=PATH", help=help, callback=_check_weight_specs
    )


def random_init(help: str) -> Any:
    """``--random-init``: teachers with random weights (tests and dry runs)."""
    return typer.Option(False, "--random-init", help=help)


def output_file(default: Any = ..., *names: str, help: str) -> Any:
    """``--out`` naming one file to write: an existing folder there is refused up front (the
    work would otherwise run and then fail to rename its temporary file)."""
    return typer.Option(
        default, *(names or ("--out", "-o")), help=help, callback=_check_output_file
    )


SOLVERS = ("torch", "liblinear")


def _check_solver(value: str) -> str:
    if value not in SOLVERS:
        raise typer.BadParameter(f"must be torch or liblinear, not {value!r}")
    return value


def _check_regularisation(value: str) -> str:
    regularisation_value(value)
    return value


def regularisation_value(text: str) -> float | str:
    """``--C``: ``auto`` or a positive finite number."""
    if text == "auto":
        return text
    try:
        c = float(text)
    except ValueError:
        raise typer.BadParameter(f"must be a positive number or 'auto', not {text!r}") from None
    if not 0 < c < math.inf:  # also refuses nan
        raise typer.BadParameter(f"must be positive and finite, not {text}")
    return c


def solver(help: str) -> Any:
    """``--solver``: torch or liblinear, for the probes of ``probe fit`` and ``evaluate``."""
    return typer.Option("torch", "--solver", help=help, callback=_check_solver)


def regularisation(help: str) -> Any:
    """``--C``: the probe's regularisation, a positive number or ``auto``."""
    return typer.Option("0.01", "--C", help=help, callback=_check_regularisation)


def number(
    default: float | None,
    *names: str,
    help: str,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A float option that must be finite and within the bounds given (``nan``, ``inf`` and
    values out of range exit 2)."""
    return typer.Option(
        default,
        *names,
        help=help,
        callback=finite(above=above, at_least=at_least, below=below, at_most=at_most),
    )


def finite(
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> Callable[[float | None], float | None]:
    """A validator: the value (when given) is finite and within the bounds."""
    bounds = []
    if above is not None:
        bounds.append(f"above {above:g}")
    if at_least is not None:
        bounds.append(f"at least {at_least:g}")
    if below is not None:
        bounds.append(f"below {below:g}")
    if at_most is not None:
        bounds.append(f"at most {at_most:g}")
    wanted = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if (
            not math.isfinite(value)
            or (above is not None and value <= above)
            or (at_least is not None and value < at_least)
            or (below is not None and value >= below)
            or (at_most is not None and value > at_most)
        ):
            raise typer.BadParameter(f"must be {wanted}, not {value:g}")
        return value

    return check


def _check_size(value: str | None) -> str | None:
    size_value(value)
    return value


def size_value(value: str | None) -> int | None:
    """Bytes from a checked ``--max-memory`` value (None: the library's default)."""
    if value is None:
        return None
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.probes.budget import parse_size

    try:
        return parse_size(value)
    except UsageProblem as exc:
        raise typer.BadParameter(str(exc).removeprefix("--max-memory ")) from None


def max_memory(help: str) -> Any:
    """``--max-memory``: a size such as 4G or 512M (checked while parsing)."""
    return typer.Option(None, "--max-memory", help=help, callback=_check_size)


ENGINES = ("local", "ray")


def _check_engine(value: str) -> str:
    if value not in ENGINES:
        raise typer.BadParameter(f"must be one of {', '.join(ENGINES)}, not {value!r}")
    if value == "ray":
        from soundnet_cli.errors import UsageProblem
        from soundnet_cli.runtime import require_ray

        try:
            require_ray()
        except UsageProblem as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def engine(help: str = "local (here) or ray (a Ray cluster; needs soundnet-cli[ray]).") -> Any:
    """``--engine``: local or ray; ray refused up front (exit 2) when the extra is missing."""
    return typer.Option("local", "--engine", help=help, callback=_check_engine)


def ray_address() -> Any:
    """``--ray-address``: the cluster the ray engine joins."""
    return typer.Option(
        None, "--ray-address", help="auto or HOST:PORT [default: start a local Ray]."
    )


def ray_actors(what: str = "Model") -> Any:
    """``--ray-actors``: how many model (or teacher) actors."""
    return typer.Option(
        None, "--ray-actors", min=1, help=f"{what} actors [default: one a GPU, else CPUs / 2]."
    )


def ray_gpus_per_actor(what: str = "model") -> Any:
    """``--ray-gpus-per-actor``: 0 runs the actors on CPUs."""
    return typer.Option(
        0.0,
        "--ray-gpus-per-actor",
        min=0.0,
        help=f"GPUs per {what} actor (1: one a GPU; 0: CPU actors).",
    )


def ray_decode_tasks() -> Any:
    """``--ray-decode-tasks``: concurrent decode tasks."""
    return typer.Option(
        None, "--ray-decode-tasks", min=1, help="Concurrent decode tasks [default: up to CPUs]."
    )
