"""`soundnet extract`: features of every audio file under some folders, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common, _live, _options

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

MAX_FAILURES_SHOWN = 20


def extract_command(
    paths: list[str] = typer.Argument(
        None,
        help="Audio or video files, folders (searched recursively, following links once), or "
        "URLs (http(s)://, file://, s3://, gs://, ... through fsspec); or one live input: - "
        "(stdin), a stream URL (rtsp://, srt://, ...; http(s):// with --follow or "
        "--reconnect) or mic:NAME.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (mirrors the input tree)."),
    layer: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to extract (repeatable; one pass for all; default: the model's, pool5 "
        "for SoundNet-8).",
    ),
    checkpoint: Path = _options.checkpoint(),
    student: str = _options.student(),
    fmt: str = typer.Option(
        "npy",
        "--format",
        help="npy: one file per layer; npz: one file per input, with times; parquet: one table "
        "(part files) for every input (needs soundnet-cli[parquet]).",
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
    dtype: str = typer.Option(
        "float32", "--dtype", help="Stored vectors: float32, or float16 (parquet only)."
    ),
    part_size: int = typer.Option(
        None, "--part-size", min=1, help="Inputs per Parquet part file [default: 256]."
    ),
    files_from: str = typer.Option(
        None,
        "--files-from",
        help="A text file (or - for stdin) listing inputs, one path or URL a line.",
    ),
    shard_text: str = typer.Option(
        None,
        "--shard",
        help="I/N: only slice I (from 0) of N of the sorted inputs, e.g. a Slurm array task.",
    ),
    engine: str = _options.engine("local (threads here) or ray (needs soundnet-cli[ray])."),
    ray_address: str = _options.ray_address(),
    ray_actors: int = _options.ray_actors(),
    ray_gpus: float = _options.ray_gpus_per_actor(),
    ray_decode_tasks: int = _options.ray_decode_tasks(),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo inputs whose outputs exist (default: skip them)."
    ),
    device: str = _options.device(),
    batch_size: int = typer.Option(
        16, "--batch-size", min=1, help="Inputs of equal length run together."
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        help="Decoding threads [default: half the cores; on GPU all but one].",
    ),
    threads: int = _options.threads(),
    mix: str = _options.mix(help="Channel handling: first or mean."),
    precision: str = _options.precision(),
    compile_model: bool = typer.Option(False, "--compile", help="Use torch.compile."),
    plain: bool = typer.Option(
        False, "--plain", help="Run the model as defined (no inference rewrites)."
    ),
    chunk_seconds: float = _options.number(
        None,
        "--chunk-seconds",
        at_least=1.0,
        at_most=_options.MAX_CHUNK_SECONDS,
        help="Longer inputs are streamed in chunks this long (1 s to 1 h) [default: 60; 6 for "
        "live input, whose latency is the layer's receptive field plus one chunk].",
    ),
    follow: bool = _live.follow_option(
        "Live input: append features to the folder in pieces as the audio arrives "
        "(<name>/NNNNNN), so a reader can tail it."
    ),
    name: str = typer.Option(
        None,
        "--name",
        help="Live input: its name (output stem) in the folder [default: stdin for -, "
        "mic-NAME, or the URL's host and path].",
    ),
    raw_format: str = _live.raw_format_option(),
    rate: int = _live.rate_option(),
    channels: int = _live.channels_option(),
    device_input: str = _live.device_input_option(),
    reconnect: bool = _live.reconnect_option(),
    stall_seconds: float = _live.stall_seconds_option(),
    window: float = _live.window_option("With --pool: one vector per sliding window this long."),
    hop: float = _live.hop_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    json_output: bool = _options.json_flag("Print the summary as JSON."),
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

    * `soundnet extract --files-from urls.txt --format parquet --out feats --shard 3/10`

    * `soundnet extract s3://bucket/audio --format parquet --engine ray --ray-address auto -o f`

    * `soundnet extract ./clips --pool mean --window 5 --hop 1 --out windows`

    * `ffmpeg -i rtsp://cam/stream -f wav - | soundnet extract - --follow --format parquet -o f`
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.cli._progress import file_progress
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.engine import POOLS, extract
    from soundnet_cli.models import default_layer
    from soundnet_cli.runtime import device_for, wait_for_ranks, world_from_env

    if pool is not None and pool not in POOLS:
        raise UsageProblem(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if window is None and hop is not None:
        raise UsageProblem("--hop is the step between windows: give --window too")
    if window is not None and pool is None:
        raise UsageProblem("--window pools features over windows: give --pool mean or max too")
    live_options = _live.LiveOptions(
        follow, raw_format, rate, channels, device_input, reconnect,
        chunk_seconds or 6.0, stall_seconds, window, hop,
    )  # fmt: skip
    source = _live.live_input(list(paths or []), live_options, command="extract", http_files=True)
    if source is not None:
        _check_live(files_from, shard_text, engine, pool, window, follow, fmt, dtype)
        model = load_model(checkpoint, student, device_for(device, world_from_env()))
        _live.extract_live(
            source, model, live_options, layers=layer or [default_layer(model)], out=out,
            name=name, fmt=fmt, pool=pool, mix=mix, precision=precision, optimise=not plain,
            dtype=dtype, overwrite=overwrite, quiet=quiet or _common.state.quiet, window=window,
            hop=hop, json_output=json_output, compile_model=compile_model, threads=threads,
        )  # fmt: skip
        return
    if name is not None:
        raise UsageProblem("--name names a live input (-, a stream URL or mic:NAME)")
    chunk_seconds = chunk_seconds or 60.0
    job = world_from_env()
    inputs, shard_of = _inputs(paths, files_from, shard_text)  # usage errors before the model
    _check_engine_and_format(engine, fmt, dtype)
    model = load_model(checkpoint, student, device_for(device, job))
    layer = layer or [default_layer(model)]
    quiet = quiet or _common.state.quiet  # `soundnet -q extract` too
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
            inputs,
            layer,
            out,
            model=cast("Student", model),  # load_model gives a student
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
            dtype=dtype,
            part_size=part_size,
            window=window,
            hop=hop,
            shard_of=shard_of,
            engine=engine,
            engine_options={
                "address": ray_address,
                "actors": ray_actors,
                "gpus_per_actor": ray_gpus,
                "decode_tasks": ray_decode_tasks,
            },
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


def _inputs(
    paths: list[str] | None, files_from: str | None, shard_text: str | None
) -> tuple[list[str], tuple[int, int] | None]:
    """The inputs named on the command line and in ``--files-from``, and the ``--shard``
    slice; usage errors (exit 2) for a bad slice, an unknown URL scheme or no input."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.inputs import parse_shard, read_file_list
    from soundnet_cli.media.urls import check_url, is_url

    shard_of = parse_shard(shard_text) if shard_text is not None else None
    inputs = list(paths or [])
    if files_from is not None:
        inputs.extend(read_file_list(files_from))
    if not inputs:
        raise UsageProblem("give input files, folders or URLs, or --files-from LIST")
    for item in inputs:
        if is_url(item):
            check_url(item)
    return inputs, shard_of


def _check_live(
    files_from: str | None,
    shard_text: str | None,
    engine: str,
    pool: str | None,
    window: float | None,
    follow: bool,
    fmt: str,
    dtype: str,
) -> None:
    """Usage errors for options that cannot go with a live input, before the model loads."""
    from soundnet_cli.errors import UsageProblem

    if files_from is not None:
        raise UsageProblem("a live input must be the only input; it cannot go with --files-from")
    if shard_text is not None:
        raise UsageProblem("--shard splits a list of inputs; a live input is one")
    if engine != "local":
        raise UsageProblem("a live input runs here: --engine local only")
    if follow and pool is not None and window is None:
        raise UsageProblem(
            "--pool reduces a whole input to one vector; it cannot go with --follow unless "
            "--window pools it over windows"
        )
    _check_engine_and_format(engine, fmt, dtype)


def _check_engine_and_format(engine: str, fmt: str, dtype: str) -> None:
    """Refuse an engine or format whose optional extra is missing, before the model loads."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.engine import ENGINES
    from soundnet_cli.extraction.writers import DTYPES, FORMATS
    from soundnet_cli.runtime import require_ray

    if engine not in ENGINES:
        raise UsageProblem(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "ray":
        require_ray()
    if fmt not in FORMATS:
        raise UsageProblem(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        from soundnet_cli.extraction.writers.parquet import require_pyarrow

        require_pyarrow()
    if dtype not in DTYPES or (dtype != "float32" and fmt != "parquet"):
        raise UsageProblem(f"--dtype {dtype}: float32, or float16 with --format parquet")


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
