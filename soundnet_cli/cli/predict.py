"""`soundnet predict`: top objects and scenes per time step for audio files."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common, _live, _options
from soundnet_cli.cli._progress import file_progress

if TYPE_CHECKING:
    from soundnet_cli.prediction import PredictRun
    from soundnet_cli.students.predict import Prediction


def predict_command(
    paths: list[str] = typer.Argument(
        None,
        help="Audio or video files, or directories (searched recursively); or one live input: "
        "- (stdin), a stream URL (rtsp://, http://, srt://) or mic:NAME.",
    ),
    top_k: int = typer.Option(
        None,
        "--top-k",
        "-k",
        min=1,
        help="Categories per head and step (default: 5; 1 for audacity).",
    ),
    checkpoint: Path = _options.checkpoint(),
    mix: str = _options.mix(),
    device: str = _options.device(),
    precision: str = _options.precision(),
    steps: bool = typer.Option(False, "--steps", help="Show every time step (the default)."),
    summary_only: bool = typer.Option(
        False, "--summary-only", help="Show only the whole-file summary, not every step."
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        help="table (default), json, csv, tsv, jsonl (JSON, one row per line) or audacity (one "
        "label file per input).",
    ),
    segments: bool = typer.Option(
        False,
        "--segments",
        help="Merge consecutive steps with the same top label into one row (events).",
    ),
    threshold: float = _options.number(
        None,
        "--threshold",
        at_least=0.0,
        at_most=1.0,
        help="Leave out labels whose probability is below this (0 to 1).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Write to this file (or DIR/predictions.<ext>) instead of stdout; a folder for "
        "audacity.",
    ),
    labels: str = typer.Option(
        None,
        "--labels",
        metavar='"A,B,..."',
        help="Zero-shot: score these labels (comma-separated) with the checkpoint's embedding "
        "head and its CLIP text tower, instead of the posterior heads.",
    ),
    labels_file: Path = typer.Option(
        None, "--labels-file", metavar="FILE", help="Zero-shot labels, one per line."
    ),
    prompt: list[str] = typer.Option(
        [],
        "--prompt",
        metavar='"... {} ..."',
        help="Zero-shot prompt, {} for the label; repeat for an ensemble [the default "
        "ensemble of docs/clip.md].",
    ),
    json_output: bool = _options.json_flag("Same as --format json."),
    follow: bool = _live.follow_option(
        "Live input: write each row as soon as its audio has arrived (table, csv, tsv, "
        "jsonl; audacity at the end)."
    ),
    raw_format: str = _live.raw_format_option(),
    rate: int = _live.rate_option(),
    channels: int = _live.channels_option(),
    device_input: str = _live.device_input_option(),
    reconnect: bool = _live.reconnect_option(),
    chunk_seconds: float = _options.number(
        6.0,
        "--chunk-seconds",
        at_least=0.5,
        at_most=_options.MAX_CHUNK_SECONDS,
        help="Live input is run in chunks of this many seconds: the latency is the layer's "
        "receptive field plus one chunk.",
    ),
    stall_seconds: float = _live.stall_seconds_option(),
    window: float = _live.window_option("Rows pooled over sliding windows of this many seconds."),
    hop: float = _live.hop_option(),
) -> None:
    """Top objects and scenes per time step and per file, as tables, CSV or label tracks.

    For every conv8 time step of each file, and a whole-file summary (mean over steps).
    `--format csv|tsv` gives one row per file, time step, head and rank
    (path,start,end,head,rank,label,probability; seconds); `--segments` merges consecutive
    steps with the same top label into events; `--format audacity` writes one label file per
    input into `--out DIR` (File > Import > Labels in Audacity).

    Videos (.mp4 .mkv .webm .mov .avi ...) are read by their first audio stream. Clips shorter
    than the 20-s training length are tiled circularly to it (a 10-s input gives one conv8 step
    that sees only padding); the output says so, and the rows of such a clip span it whole.
    Files that fail are reported and skipped; the exit code is 1 if any failed.

    Examples:

    * `soundnet predict dog.wav`

    * `soundnet predict ./recordings --top-k 3 --summary-only`

    * `soundnet predict clip.flac --json | jq '.results[0].summary'`

    * `soundnet predict ./recordings film.mp4 --format csv --segments --out events.csv`

    * `soundnet predict long.wav --format audacity --threshold 0.2 --out labels/`

    * `ffmpeg -i rtsp://cam/stream -f wav - | soundnet predict - --follow --format csv`

    * `soundnet predict long.wav --window 10 --hop 2 --format csv`

    * `soundnet predict rec.wav --checkpoint run/ --labels "dog barking,rain,sea waves"`
      (zero-shot, for a student distilled from a CLIP teacher; see docs/clip.md)
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.media.files import find_media
    from soundnet_cli.prediction import check_output, predict_files
    from soundnet_cli.prediction.run import default_top_k
    from soundnet_cli.prediction.tables import apply_threshold, check_threshold

    if steps and summary_only:
        raise UsageProblem("--steps and --summary-only contradict each other: give one")
    steps = not summary_only
    if json_output:
        if fmt not in ("table", "json"):
            raise UsageProblem(f"--json means --format json; it cannot go with --format {fmt}")
        fmt = "json"
    check_output(fmt, out)
    check_threshold(threshold)
    zero_shot = None
    if labels is not None or labels_file is not None or prompt:
        if follow or window is not None or raw_format is not None or device_input is not None:
            raise UsageProblem("zero-shot labels work on files; not with live input or windows")
        zero_shot = _zero_shot_setup(checkpoint, labels, labels_file, prompt)
    live_options = _live.LiveOptions(
        follow, raw_format, rate, channels, device_input, reconnect, chunk_seconds,
        stall_seconds, window, hop,
    )  # fmt: skip
    source = _live.live_input(list(paths or []), live_options)
    _live.check_format(fmt, live_options, steps=steps, segments=segments)
    if source is None:
        if not paths:
            raise UsageProblem("give audio files or folders, or a live input (-, URL, mic:NAME)")
        files = find_media([Path(p) for p in paths])
        if not files:
            raise UsageProblem("no audio files found in the given paths")
    model = load_model(checkpoint, None, device)
    k = top_k or default_top_k(fmt)
    head_layer = getattr(model, "head_layer", None)  # a HeadedStudent's
    if (source is not None or window is not None) and head_layer is not None:
        from soundnet_cli.models import for_inference

        model = for_inference(model, [head_layer], precision=precision)
    if source is not None:

        def write_offline(run: PredictRun) -> None:
            if fmt == "table" and out is None and steps:
                for prediction in run.predictions:
                    _show(_common.out, apply_threshold(prediction, threshold), segments)
            _write(run, fmt, out, steps=steps, segments=segments, top_k=k, threshold=threshold)

        _live.predict_live(
            source, model, live_options, fmt=fmt, out=out, mix=mix, top_k=k, threshold=threshold,
            segments=segments, write_offline=write_offline,
        )  # fmt: skip
        return
    if window is not None:
        failed = _live.predict_windows(
            files, model, live_options, fmt=fmt, out=out, mix=mix, top_k=k, threshold=threshold
        )
        if failed:
            raise typer.Exit(1)
        return
    quiet = fmt == "json" and out is None  # errors go into the JSON document
    live = fmt == "table" and out is None and steps

    with file_progress(enabled=len(files) > 1) as bar:
        task = bar.add_task("predicting", total=len(files))

        def on_file(path: Path, prediction: Prediction | None, error: str | None) -> None:
            if error is not None and not quiet:
                _common.error(error)
            if prediction is not None and live:
                _show(_common.out, apply_threshold(prediction, threshold), segments)
            bar.advance(task)

        if zero_shot is not None:
            from soundnet_cli.prediction.zeroshot import zero_shot_files

            head, names, vectors, _ = zero_shot
            run = zero_shot_files(
                files, model, head, names, vectors, top_k=k, mix=mix, on_file=on_file
            )
        else:
            run = predict_files(
                files,
                model,
                top_k=k,
                mix=mix,
                precision=precision,
                on_file=on_file,
            )
    header = (zero_shot[1], zero_shot[3]) if zero_shot is not None else None
    _write(
        run, fmt, out, steps=steps, segments=segments, top_k=k, threshold=threshold, header=header
    )
    if not quiet and len(files) > 1:
        _common.info(f"{len(run.predictions)} predicted, {len(run.failures)} failed")
    if run.failures:
        raise typer.Exit(1)


def _write(
    run: PredictRun,
    fmt: str,
    out: Path | None,
    *,
    steps: bool,
    segments: bool,
    top_k: int,
    threshold: float | None,
    header: tuple[list[str], list[str]] | None = None,
) -> None:
    from soundnet_cli.prediction.run import output_file, render_text, write_audacity, write_text
    from soundnet_cli.prediction.tables import apply_threshold

    if fmt == "audacity":
        assert out is not None
        written = write_audacity(run, out, segments=segments, top_k=top_k, threshold=threshold)
        _common.info(f"wrote {len(written)} label file(s) under {out}")
        return
    if fmt != "table":
        text = render_text(run, fmt, segments=segments, top_k=top_k, threshold=threshold)
        if header is not None:
            from soundnet_cli.prediction.zeroshot import with_prompts

            text = with_prompts(text, fmt, *header)
        if out is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            _common.info(f"wrote {write_text(text, output_file(out, fmt))}")
        return
    kept = [apply_threshold(p, threshold) for p in run.predictions]
    if out is None:
        if not steps and kept:
            _render_summaries(_common.out, [p.as_dict() for p in kept])
        return
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, color_system=None, highlight=False)
    if steps:
        for prediction in kept:
            _show(console, prediction, segments)
    elif kept:
        _render_summaries(console, [p.as_dict() for p in kept])
    _common.info(f"wrote {write_text(buffer.getvalue(), output_file(out, fmt))}")


def _zero_shot_setup(
    checkpoint: Path | None, labels: str | None, labels_file: Path | None, prompts: list[str]
) -> tuple[Any, list[str], Any, list[str]]:
    """The embedding head, labels, their text vectors and the prompts; every problem (no
    embedding head, no labels, another text tower) before any file is read."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.students.embedding import embedding_head
    from soundnet_cli.teachers.text import (
        DEFAULT_ENSEMBLE,
        TextEncoder,
        check_prompts,
        parse_labels,
    )

    lines: list[str] = []
    if labels_file is not None:
        try:
            lines = labels_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageProblem(f"cannot read --labels-file {labels_file} ({exc.strerror})") from exc
    names = parse_labels(labels, lines)
    chosen = check_prompts(prompts or list(DEFAULT_ENSEMBLE))
    head = embedding_head(checkpoint)
    if not head.spec.clip:
        raise UsageProblem(
            f"{checkpoint}: its embedding head records no CLIP identity, so no text tower fits it"
        )
    encoder = TextEncoder(head.spec.clip)
    return head, names, encoder.labels(names, chosen), chosen


def _show(console: Console, prediction: Prediction, segments: bool) -> None:
    if segments:
        _render_segments(console, prediction)
    else:
        _render(console, prediction.as_dict())


def _short(label: str) -> str:
    return label.split(",")[0]


def _title(result: dict[str, Any]) -> Text:
    title = f"{result['path']}  ({result['duration']:.2f} s"
    if result["tiled_to"]:
        title += f", tiled to {result['tiled_to']:.0f} s, the training length"
    return Text(title + ")")


def _cell(head: dict[str, Any]) -> Text:
    return Text(", ".join(f"{_short(t['label'])} {t['probability']:.2f}" for t in head["top"]))


def _render(console: Console, result: dict[str, Any]) -> None:
    heads = [h["head"] for h in result["summary"]]
    table = Table(title=_title(result), title_justify="left", expand=False)
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
    console.print(table)


def _render_summaries(console: Console, results: list[dict[str, Any]]) -> None:
    """One row per file: the whole-file mean of every head."""
    table = Table(
        title="mean over time steps (clips under 20 s tiled to 20 s)", title_justify="left"
    )
    table.add_column("file")
    for head in results[0]["summary"]:
        table.add_column(head["head"])
    for result in results:
        table.add_row(Text(Path(result["path"]).name), *(_cell(h) for h in result["summary"]))
    console.print(table)


def _render_segments(console: Console, prediction: Prediction) -> None:
    """One row per event: consecutive steps with the same top label, per head."""
    from soundnet_cli.prediction.tables import segment_rows

    table = Table(title=_title(prediction.as_dict()), title_justify="left", expand=False)
    for name, justify in (
        ("start (s)", "right"),
        ("end (s)", "right"),
        ("head", "left"),
        ("label", "left"),
        ("mean p", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in segment_rows(prediction):
        table.add_row(
            f"{row.start:.2f}",
            f"{row.end:.2f}",
            row.head,
            Text(_short(row.label)),
            f"{row.probability:.2f}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict")(_common.torch_command(predict_command))
