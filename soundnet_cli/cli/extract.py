"""`soundnet extract`: features of every audio file under some folders, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common
from soundnet_cli.cli._model import PRECISION_HELP

MAX_FAILURES_SHOWN = 20


def extract_command(
    paths: list[Path] = typer.Argument(
        ..., help="Audio or video files, or folders (searched recursively, following links once)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (mirrors the input tree)."),
    layer: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to extract (repeatable; one pass for all; default: the model's, pool5 "
        "for SoundNet-8).",
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="A student checkpoint (.safetensors) instead of SoundNet-8."
    ),
    student: str = typer.Option(
        None, "--student", help="A registered student by name (untrained unless soundnet8)."
    ),
    fmt: str = typer.Option(
        "npy", "--format", help="npy: one file per layer; npz: one file per input, with times."
    ),
    pool: str = typer.Option(
        None, "--pool", help="Reduce over time to one vector per layer: mean or max."
    ),
    ext: list[str] = typer.Option(
        [], "--ext", help="Audio extension to pick in folders (repeatable; default: common ones)."
    ),
    glob: list[str] = typer.Option(
        [], "--glob", help="Pattern a file's relative path or name must match (repeatable)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo inputs whose outputs exist (default: skip them)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(
        16, "--batch-size", min=1, help="Inputs of equal length run together."
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        help="Decoding threads [default: half the cores; on GPU all but one].",
    ),
    threads: int = typer.Option(
        None, "--threads", min=1, help="Model threads on CPU [default: the cores workers leave]."
    ),
    mix: str = typer.Option("first", "--mix", help="Channel handling: first or mean."),
    precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
    compile_model: bool = typer.Option(False, "--compile", help="Use torch.compile."),
    plain: bool = typer.Option(
        False, "--plain", help="Run the model as defined (no inference rewrites)."
    ),
    chunk_seconds: float = typer.Option(
        60.0, "--chunk-seconds", min=1.0, help="Longer inputs are streamed in chunks this long."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Extract features of audio files into a folder of .npy (or .npz) files.

    Folders are searched recursively; the output mirrors the input tree as
    `OUT/<path without extension>.<layer>.npy` (float32, time x channels), with
    `OUT/manifest.jsonl` (one row per input) and `OUT/features.json` (model, layers, times).
    A rerun skips inputs whose outputs exist, so an interrupted run resumes. Bad files are
    recorded and skipped; the exit code is 1 if any failed. Under `torchrun`, ranks share out
    the files.

    Examples:

    * `soundnet extract ./audio --out features`

    * `soundnet extract a.wav b.flac --layer pool5 --layer conv6 --out feats --format npz`

    * `soundnet extract ./clips --pool mean --out pooled --json`

    * `torchrun --nproc-per-node 4 -m soundnet_cli extract ./audio --out features`
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.cli._progress import file_progress
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.engine import POOLS, extract
    from soundnet_cli.models import default_layer
    from soundnet_cli.runtime import device_for, wait_for_ranks, world_from_env

    if pool is not None and pool not in POOLS:
        raise UsageProblem(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    job = world_from_env()
    model = load_model(checkpoint, student, device_for(device, job))
    layer = layer or [default_layer(model)]
    bar = file_progress(enabled=not quiet and not json_output)
    with bar:
        task = bar.add_task("extracting", total=None)

        def progress(event: Any) -> None:
            speed = event.audio_seconds / event.elapsed if event.elapsed > 0 else 0.0
            bar.update(
                task,
                total=event.total,
                completed=event.done,
                status=f"{event.audio_seconds / 3600:.2f} h, {speed:.0f}x realtime",
            )

        summary = extract(
            [str(p) for p in paths],
            layer,
            out,
            model=model,
            fmt=fmt,
            pool=pool,
            extensions=ext or None,
            globs=glob or None,
            overwrite=overwrite,
            batch_size=batch_size,
            workers=workers,
            mix=mix,
            chunk_seconds=chunk_seconds,
            optimise=not plain,
            precision=precision,
            compile=compile_model,
            threads=threads,
            rank=job.rank,
            world_size=job.size,
            progress=progress,
            announce=_common.warn,
        )
    wait_for_ranks(job)  # before exiting 1 for bad files: torchrun would stop the others
    if json_output:
        _common.print_json(summary.as_dict())
    else:
        if not quiet:
            _render(summary.as_dict())
        _list_failures(summary.as_dict())
    if summary.failures:
        raise typer.Exit(1)


def _render(summary: dict[str, Any]) -> None:
    table = Table(title=Text(f"features in {summary['out']}"), title_justify="left")
    for column in ("extracted", "skipped", "failed", "audio (h)", "time (s)", "x realtime"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary["extracted"]),
        str(summary["skipped"]),
        Text(str(summary["failed"]), style="red" if summary["failed"] else ""),
        f"{summary['audio_seconds'] / 3600:.3f}",
        f"{summary['elapsed_seconds']:.1f}",
        f"{summary['x_realtime']:.0f}",
    )
    _common.out.print(table)


def _list_failures(summary: dict[str, Any]) -> None:
    for note in summary.get("redone", [])[:MAX_FAILURES_SHOWN]:
        _common.warn(f"damaged output redone: {note}")
    failures = summary["failures"]
    for failure in failures[:MAX_FAILURES_SHOWN]:
        _common.err.print(Text.assemble(("failed: ", "red"), failure["error"]), soft_wrap=True)
    if len(failures) > MAX_FAILURES_SHOWN:
        _common.err.print(
            f"... and {len(failures) - MAX_FAILURES_SHOWN} more failures; see "
            f"{Path(summary['out']) / 'manifest.jsonl'}",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("extract")(_common.torch_command(extract_command))
