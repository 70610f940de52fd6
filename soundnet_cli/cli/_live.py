"""Live input (``-``, stream URLs, ``mic:NAME``) for `soundnet predict` and `soundnet extract`:
the options both declare (:func:`follow_option` ...), their checks (before anything is loaded),
and the runs; `predict`'s ``--follow`` rows and pooled ``--window``/``--hop`` rows."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from soundnet_cli.cli import _common, _options

if TYPE_CHECKING:
    from soundnet_cli.media.live import LiveAudio, LiveInput, RawFormat
    from soundnet_cli.prediction.tables import Row


@dataclass(frozen=True)
class LiveOptions:
    follow: bool = False
    raw_format: str | None = None
    rate: int | None = None
    channels: int | None = None
    device_input: str | None = None
    reconnect: bool = False
    chunk_seconds: float = 6.0
    stall_seconds: float = 5.0
    window: float | None = None
    hop: float | None = None


# -- the options both commands declare ---------------------------------------------------------
def follow_option(help: str) -> Any:
    return typer.Option(False, "--follow", help=help)


def raw_format_option() -> Any:
    return typer.Option(
        None, "--raw-format", help="stdin is headerless PCM: s16le, s32le or f32le."
    )


def rate_option() -> Any:
    return typer.Option(None, "--rate", help="Sample rate of --raw-format PCM (Hz).")


def channels_option() -> Any:
    return typer.Option(None, "--channels", help="Channels of --raw-format PCM (default 1).")


def device_input_option() -> Any:
    return typer.Option(
        None,
        "--device-input",
        help="Record from this sound card (name or number; see `soundnet devices`); the same "
        "as the input mic:NAME.",
    )


def reconnect_option() -> Any:
    return typer.Option(
        False, "--reconnect", help="Reopen a stream URL that ends or fails, with back-off."
    )


def stall_seconds_option() -> Any:
    return _options.number(
        5.0,
        "--stall-seconds",
        above=0.0,
        help="Report a live input that sends nothing for this long.",
    )


def window_option(help: str) -> Any:
    return _options.number(None, "--window", above=0.0, help=help)


def hop_option() -> Any:
    return _options.number(
        None, "--hop", above=0.0, help="Seconds between window starts (default: the window)."
    )


def live_input(
    inputs: list[str], options: LiveOptions, command: str = "predict", http_files: bool = False
) -> LiveInput | None:
    """The one live input among ``inputs`` (with ``--device-input``), or None for files;
    usage errors for every combination that cannot work, before anything is loaded.
    ``http_files``: an http(s) URL is a file to fetch (extract) unless ``--follow`` or
    ``--reconnect`` says it is a stream."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.windows import check_window
    from soundnet_cli.media.live import LiveInput, check_device, parse_input

    check_window(options.window, options.hop)
    if options.device_input is not None:
        inputs = [*inputs, f"mic:{options.device_input}"]
    lives = [parsed for text in inputs if (parsed := parse_input(text)) is not None]
    if http_files and not (options.follow or options.reconnect):
        lives = [s for s in lives if not s.target.lower().startswith(("http://", "https://"))]
    if lives and len(inputs) > 1:
        raise UsageProblem(
            "a live input (-, a stream URL or mic:NAME) must be the only input; "
            f"got {len(inputs)} inputs"
        )
    source = lives[0] if lives else None
    if options.follow and source is None:
        raise UsageProblem("--follow needs a live input: -, a stream URL or mic:NAME")
    raw_given = options.raw_format is not None
    if (options.rate is not None or options.channels is not None) and not raw_given:
        raise UsageProblem("--rate and --channels describe raw PCM: give --raw-format too")
    if raw_given and (source is None or source.kind != "stdin"):
        raise UsageProblem("--raw-format describes raw PCM on stdin: the input must be -")
    if options.reconnect and (source is None or source.kind != "url"):
        raise UsageProblem("--reconnect needs a stream URL input")
    if options.chunk_seconds <= 0:
        raise UsageProblem(f"--chunk-seconds must be positive, not {options.chunk_seconds}")
    if options.stall_seconds <= 0:
        raise UsageProblem(f"--stall-seconds must be positive, not {options.stall_seconds}")
    raw_format(options)  # its own checks
    if source is not None and source.kind == "stdin":
        check_stdin(sys.stdin, command)
    if source is not None and source.kind == "device":
        check_device(source.target)
    return source if source is None else LiveInput(source.kind, source.target)


def check_stdin(stream: Any, command: str = "predict") -> None:
    """A usage error for ``-`` when stdin is a terminal: nothing is piped in."""
    from soundnet_cli.errors import UsageProblem

    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        raise UsageProblem(
            "the input - reads audio from stdin, which is a terminal: pipe audio in "
            f"(ffmpeg -i SOURCE -f wav - | soundnet {command} -)"
        )


def open_live_audio(source: LiveInput, options: LiveOptions, mix: str) -> LiveAudio:
    """The live input ``source`` opened as the options ask (raw PCM, reconnects, stalls)."""
    from soundnet_cli.media.live import LiveAudio

    return LiveAudio(
        source,
        raw=raw_format(options),
        mix=mix,  # type: ignore[arg-type]
        reconnect=options.reconnect,
        stall_seconds=options.stall_seconds,
    )


def raw_format(options: LiveOptions) -> RawFormat | None:
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.media.live import RawFormat

    if options.raw_format is None:
        return None
    if options.rate is None:
        raise UsageProblem("--raw-format needs --rate (the stream's sample rate in Hz)")
    return RawFormat(options.raw_format, options.rate, options.channels or 1)


def check_format(fmt: str, options: LiveOptions, *, steps: bool, segments: bool) -> None:
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.prediction.live import FOLLOW_FORMATS

    if options.follow and fmt not in FOLLOW_FORMATS:
        raise UsageProblem(
            f"--follow writes rows as they happen: --format {', '.join(FOLLOW_FORMATS)}, "
            f"not {fmt} (jsonl is JSON, one row per line)"
        )
    if options.follow and not steps:
        raise UsageProblem("--summary-only needs the whole input; it cannot go with --follow")
    if options.window is not None:
        if segments:
            raise UsageProblem("--window pools rows over time; it cannot go with --segments")
        if fmt == "json":
            raise UsageProblem("--window writes rows: use --format jsonl, csv, tsv or table")
        if not steps:
            raise UsageProblem("--window writes rows per window; it cannot go with --summary-only")


def _rows(model: Any, name: str, options: LiveOptions, **kwargs: Any) -> Any:
    from soundnet_cli.prediction.follow import RowStream

    return RowStream(
        model,
        name,
        window=options.window,
        hop=options.hop,
        chunk_seconds=options.chunk_seconds,
        **kwargs,
    )


def render_rows(rows: list[Row], fmt: str, out: Path | None, label_name: str) -> None:
    """Rows written once complete: to stdout or ``--out`` (audacity: a label file in it)."""
    from soundnet_cli.atomic import atomic_path
    from soundnet_cli.prediction.live import make_writer
    from soundnet_cli.prediction.run import output_file

    if fmt == "audacity":
        writer = make_writer(fmt, sys.stdout, out, label_name)
        writer.write(rows)
        writer.close()
        return
    if out is None:
        writer = make_writer(fmt, sys.stdout, None, label_name)
        writer.start()
        writer.write(rows)
        writer.close()
        return
    target = output_file(out, fmt)
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        writer = make_writer(fmt, handle, None, label_name)
        writer.start()
        writer.write(rows)
    _common.info(f"wrote {target}")


def predict_live(
    source: LiveInput,
    model: Any,
    options: LiveOptions,
    *,
    fmt: str,
    out: Path | None,
    mix: str,
    top_k: int,
    threshold: float | None,
    segments: bool,
    write_offline: Any,
) -> None:
    """Predict a live input: rows as they happen with ``--follow``, else everything at its end
    (written by ``write_offline(run)`` as for files). Exits 130 after Ctrl-C."""
    from soundnet_cli.prediction import PredictRun
    from soundnet_cli.prediction.live import collect, describe_latency, follow, make_writer
    from soundnet_cli.prediction.run import output_file

    audio = open_live_audio(source, options, mix)
    whole = not options.follow and options.window is None
    rows = _rows(
        model,
        source.name,
        options,
        top_k=top_k,
        threshold=None if whole else threshold,
        segments=segments and not whole,
        keep_steps=whole,
    )
    if options.follow:
        describe_latency(model, options.chunk_seconds)
        if out is not None and fmt != "audacity":
            target = output_file(out, fmt)
            with open(target, "w", encoding="utf-8") as handle:
                interrupted = follow(audio, rows, make_writer(fmt, handle, out, source.name))
        else:
            interrupted = follow(audio, rows, make_writer(fmt, sys.stdout, out, source.name))
    else:
        found, interrupted = collect(audio, rows)
        if rows.predictor.received:
            if whole and fmt == "audacity":  # named after the input: stdin.txt, not -.txt
                from soundnet_cli.prediction.tables import table_rows

                labels = table_rows(
                    [rows.prediction()], segments=segments, top_k=top_k, threshold=threshold
                )
                render_rows(labels, fmt, out, source.name)
            elif whole:
                write_offline(PredictRun(predictions=[rows.prediction()]))
            else:
                render_rows(found, fmt, out, source.name)
    if interrupted:
        _common.error("interrupted")
        raise typer.Exit(130)


def predict_windows(
    files: list[Path],
    model: Any,
    options: LiveOptions,
    *,
    fmt: str,
    out: Path | None,
    mix: str,
    top_k: int,
    threshold: float | None,
) -> int:
    """Files with ``--window``: the same row stream as live input, each file pushed whole.
    Returns how many files failed (each reported)."""
    from soundnet_cli.errors import SoundnetError
    from soundnet_cli.media.audio import load_audio

    found: list[Row] = []
    failed = 0
    for path in files:
        try:
            wave = load_audio(path, mix=mix)  # type: ignore[arg-type]
            rows = _rows(model, str(path), options, top_k=top_k, threshold=threshold)
            found.extend(rows.push(wave.samples))
            found.extend(rows.finish())
        except SoundnetError as exc:
            failed += 1
            _common.error(str(exc))
    if fmt == "audacity":
        for name in sorted({r.path for r in found}, key=[r.path for r in found].index):
            render_rows([r for r in found if r.path == name], fmt, out, Path(name).stem)
    else:
        render_rows(found, fmt, out, "predictions")
    return failed


def extract_live(
    source: LiveInput,
    model: Any,
    options: LiveOptions,
    *,
    layers: list[str],
    out: Path,
    name: str | None,
    fmt: str,
    pool: str | None,
    mix: str,
    precision: str,
    optimise: bool,
    dtype: str,
    overwrite: bool,
    quiet: bool,
    json_output: bool,
    window: float | None = None,
    hop: float | None = None,
    compile_model: bool = False,
    threads: int | None = None,
) -> None:
    """`soundnet extract` of a live input: whole at its end, or in pieces with ``--follow``.
    Exits 130 after Ctrl-C (what the audio so far determines written whole)."""
    from soundnet_cli.extraction.live import extract_live as run

    audio = open_live_audio(source, options, mix)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    summary = run(
        audio,
        layers,
        out,
        model=model,
        name=name,
        follow=options.follow,
        fmt=fmt,
        pool=pool,
        chunk_seconds=options.chunk_seconds,
        optimise=optimise,
        precision=precision,
        dtype=dtype,
        overwrite=overwrite,
        window=window,
        hop=hop,
        compile=compile_model,
    )
    if json_output:
        _common.print_json(summary.as_dict())
    elif not quiet:
        pieces = f" in {summary.pieces} pieces" if options.follow else ""
        _common.info(
            f"{source.name}: {summary.audio_seconds:.1f} s of audio extracted{pieces} into "
            f"{summary.out} as {summary.name}"
        )
    if summary.interrupted:
        _common.error("interrupted")
        raise typer.Exit(130)
