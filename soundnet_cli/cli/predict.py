"""`soundnet predict`: top objects and scenes per time step for audio files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common
from soundnet_cli.cli._progress import file_progress


def predict_command(
    paths: list[Path] = typer.Argument(
        ..., help="Audio files or directories (searched recursively)."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Categories shown per head."),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="A student checkpoint (.safetensors) instead of the official SoundNet-8.",
    ),
    mix: str = typer.Option(
        "first", "--mix", help="Channel handling: first (as the authors' release) or mean."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    steps: bool = typer.Option(
        True, "--steps/--summary-only", help="Show every time step, or only the whole-file summary."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Top objects and scenes per time step and per file.

    For every conv8 time step of each file, and a whole-file summary (mean over steps).

    Clips shorter than the 20-s training length are tiled circularly to it (a 10-s input gives
    one conv8 step that sees only padding); the output says so. Files that fail are reported
    and skipped; the exit code is 1 if any failed.

    Examples:

    * `soundnet predict dog.wav`

    * `soundnet predict ./recordings --top-k 3 --summary-only`

    * `soundnet predict clip.flac --json | jq '.results[0].summary'`
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.errors import SoundnetError, UsageProblem
    from soundnet_cli.media.audio import find_audio, load_audio
    from soundnet_cli.students.predict import predict_waveform

    _common.check_mix(mix)
    files = find_audio(paths)
    if not files:
        raise UsageProblem("no audio files found in the given paths")
    model = load_model(checkpoint, None, device)
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    with file_progress(enabled=len(files) > 1) as bar:
        task = bar.add_task("predicting", total=len(files))
        for path in files:
            try:
                wave = load_audio(path, mix=mix)  # type: ignore[arg-type]
                result = predict_waveform(model, wave, top_k=top_k, path=str(path))
            except SoundnetError as exc:
                failures.append({"path": str(path), "error": str(exc)})
                if not json_output:
                    _common.error(str(exc))
            else:
                results.append(result.as_dict())
                if not json_output and steps:
                    _render(result.as_dict())
            bar.advance(task)
    if not json_output and not steps and results:
        _render_summaries(results)
    if json_output:
        _common.print_json({"results": results, "errors": failures})
    elif len(files) > 1:
        _common.err.print(f"{len(results)} predicted, {len(failures)} failed")
    if failures:
        raise typer.Exit(1)


def _short(label: str) -> str:
    return label.split(",")[0]


def _cell(head: dict[str, Any]) -> Text:
    return Text(", ".join(f"{_short(t['label'])} {t['probability']:.2f}" for t in head["top"]))


def _render(result: dict[str, Any]) -> None:
    title = f"{result['path']}  ({result['duration']:.2f} s"
    if result["tiled_to"]:
        title += f", tiled to {result['tiled_to']:.0f} s, the training length"
    title += ")"
    heads = [h["head"] for h in result["summary"]]
    table = Table(title=Text(title), title_justify="left", expand=False)
    table.add_column("time (s)", justify="right")
    for head in heads:
        table.add_column(head)
    for step in result["steps"]:
        table.add_row(f"{step['time']:.1f}", *(_cell(h) for h in step["heads"]))
    table.add_row(
        Text("mean", style="bold"),
        *(_cell(h) for h in result["summary"]),
        style="bold",
        end_section=True,
    )
    _common.out.print(table)


def _render_summaries(results: list[dict[str, Any]]) -> None:
    """One row per file: the whole-file mean of every head."""
    table = Table(
        title="mean over time steps (clips under 20 s tiled to 20 s)", title_justify="left"
    )
    table.add_column("file")
    for head in results[0]["summary"]:
        table.add_column(head["head"])
    for result in results:
        table.add_row(Text(Path(result["path"]).name), *(_cell(h) for h in result["summary"]))
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict")(_common.handle_errors(predict_command))
