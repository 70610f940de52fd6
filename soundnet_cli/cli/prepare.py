"""`soundnet prepare`: decode videos and label their frames with vision teachers into a corpus."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from soundnet_cli.cli import _common, _options


def prepare_command(
    videos: list[str] = typer.Argument(
        None,
        help="Video files, directories (searched recursively) or URLs (http(s)://, file://, "
        "s3://, gs://, ... through fsspec).",
        show_default=False,
    ),
    teacher: list[str] = typer.Option(
        ...,
        "--teacher",
        "-t",
        metavar="NAME",
        help="A vision teacher (repeatable): vgg16-imagenet, vgg16-places, alexnet-imagenet, "
        "alexnet-places, resnet50-places, timm:<model>, or a plugin's.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The corpus directory (created or resumed)."),
    clip_seconds: float = _options.number(
        20.0, "--clip-seconds", above=0.0, help="Clip length; longer videos are cut into clips."
    ),
    frame_interval: float = _options.number(
        5.0,
        "--frame-interval",
        above=0.0,
        help="Seconds between labelled frames (one per interval).",
    ),
    frame_at: str = typer.Option(
        "centre", "--frame-at", help="Where in each interval the frame is taken: centre or start."
    ),
    teacher_weights: list[str] = _options.teacher_weights(
        "Local weights for a teacher (repeatable), instead of downloading them."
    ),
    random_init: bool = _options.random_init("Randomly initialised teachers (tests and dry runs)."),
    device: str = _options.device(),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Frames per teacher batch."),
    workers: int = typer.Option(
        min(4, os.cpu_count() or 1), "--workers", min=0, help="Decode threads (0: decode inline)."
    ),
    shard_mb: float = _options.number(
        128.0, "--shard-mb", at_least=0.001, help="Commit a shard when this many MB are buffered."
    ),
    mix: str = _options.mix(help="Audio channels: first (as the release) or mean."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Try again the videos an earlier run recorded as bad."
    ),
    rank: int = typer.Option(
        None, "--rank", help="This process's share (default: $RANK, as torchrun sets it, or 0)."
    ),
    world_size: int = typer.Option(
        None, "--world-size", help="Number of shares (default: $WORLD_SIZE or 1)."
    ),
    files_from: str = typer.Option(
        None, "--files-from", help="A text file (or - for stdin) listing videos, one a line."
    ),
    engine: str = _options.engine(
        "local (threads here, or torchrun ranks) or ray (a Ray cluster; needs soundnet-cli[ray])."
    ),
    ray_address: str = _options.ray_address(),
    ray_actors: int = _options.ray_actors("Teacher"),
    ray_gpus: float = _options.ray_gpus_per_actor("teacher"),
    ray_decode_tasks: int = _options.ray_decode_tasks(),
    json_output: bool = _options.json_flag("Print a JSON report for scripts."),
) -> None:
    """Turn a folder of videos into a distillation corpus.

    Decodes each video's soundtrack to 22,050 Hz mono int16, takes one frame per
    `--frame-interval` (seeking, not decoding every frame), labels the frames with every
    `--teacher` in large batches, and writes the corpus format of docs/commands/prepare.md.
    Rerunning with the same `--out` resumes: finished videos are skipped. Under `torchrun`, each
    rank takes its share of the videos and writes its own shards. With `--engine ray`, videos
    are decoded in Ray tasks and labelled in teacher actors across a cluster, and the corpus is
    written as tar shards; a killed job resumes the same way. Bad videos (no audio or video
    stream, corrupt, shorter than one interval, a URL that cannot be fetched) are recorded with
    a reason and skipped; the exit code is then 1.

    Examples:

    * `soundnet prepare ./videos --teacher vgg16-imagenet --teacher resnet50-places --out corpus`

    * `soundnet prepare clips/ -t vgg16-places --teacher-weights vgg16-places=vgg.caffemodel -o out`

    * `torchrun --nproc-per-node 4 -m soundnet_cli prepare ./videos -t vgg16-imagenet -o corpus`

    * `soundnet prepare ./videos -t timm:resnet18 --random-init -o /tmp/dry-run --json`

    * `soundnet prepare s3://bucket/videos -t vgg16-places --engine ray --ray-address auto
      --ray-gpus-per-actor 1 -o corpus`
    """
    from soundnet_cli.corpus.prepare import PrepareSettings
    from soundnet_cli.runtime import wait_for_ranks, world_from_env
    from soundnet_cli.teachers import parse_weight_specs

    inputs = _inputs(videos, files_from)  # usage errors before any teacher loads
    world = world_from_env(rank, world_size)
    settings = PrepareSettings(
        clip_seconds=clip_seconds,
        frame_interval=frame_interval,
        frame_at=frame_at,
        mix=mix,
        batch_size=batch_size,
        workers=workers,
        shard_mb=shard_mb,
        retry_failed=retry_failed,
    )
    settings.check()
    weights = parse_weight_specs(teacher_weights)
    engine_options = {
        "address": ray_address,
        "actors": ray_actors,
        "gpus_per_actor": ray_gpus,
        "decode_tasks": ray_decode_tasks,
    }
    report = _run(
        inputs,
        out,
        teacher,
        settings,
        weights,
        random_init,
        device,
        world,
        json_output,
        engine,
        engine_options,
    )
    wait_for_ranks(world)  # before exiting 1 for bad videos: torchrun would stop the others
    if json_output:
        _common.print_json(report.as_dict())
    else:
        _summarise(report.as_dict())
    if report.failed:
        raise typer.Exit(1)


def _inputs(videos: list[str] | None, files_from: str | None) -> list[str]:
    """The videos named on the command line and in ``--files-from``; usage errors (exit 2)
    for none at all or an unknown URL scheme."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.extraction.inputs import read_file_list
    from soundnet_cli.media.urls import check_url, is_url

    inputs = list(videos or [])
    if files_from is not None:
        inputs.extend(read_file_list(files_from))
    if not inputs:
        raise UsageProblem("give video files, folders or URLs, or --files-from LIST")
    for item in inputs:
        if is_url(item):
            check_url(item)
    return inputs


def _run(
    videos: list[str],
    out: Path,
    teachers: list[str],
    settings: Any,
    weights: dict[str, str],
    random_init: bool,
    device: str,
    world: Any,
    json_output: bool,
    engine: str,
    engine_options: dict[str, Any],
) -> Any:
    from soundnet_cli.cli._progress import file_progress
    from soundnet_cli.corpus.prepare import prepare_videos

    bar = file_progress(enabled=not json_output)
    with bar:
        where = "on ray" if engine == "ray" else f"rank {world.rank}/{world.size}"
        task = bar.add_task(f"preparing ({where})", total=None)

        def progress(p: Any) -> None:
            rate = f"{p.videos_per_second:.2f} videos/s, {p.seconds / 3600:.2f} h of video"
            bar.update(task, total=p.total, completed=p.done + p.failed, status=rate)

        def failure(path: str, reason: str) -> None:
            if not json_output:
                _common.warn(f"skipped: {reason}")

        return prepare_videos(
            videos,
            out,
            teachers,
            settings,
            weights=weights,
            random_init=random_init,
            device=device,
            world=world,
            engine=engine,
            engine_options=engine_options,
            on_progress=progress,
            on_failure=failure,
        )


def _summarise(report: dict[str, Any]) -> None:
    rate = report["videos_per_s"]
    speed = (
        f", {rate:.2f} videos/s, {report['video_seconds_per_s']:.1f} s of video per s"
        if rate
        else ""
    )
    _common.out.print(
        f"{report['out']}: {report['prepared']} videos prepared ({report['clips']} clips, "
        f"{report['hours']:.3f} h), {report['skipped']} already done, "
        f"{len(report['failed'])} failed{speed}",
        soft_wrap=True,
    )
    if report["failed"]:
        _common.out.print(
            f"the bad videos: `soundnet corpus info {report['out']} --failures`", soft_wrap=True
        )


def register(app: typer.Typer) -> None:
    app.command("prepare")(_common.torch_command(prepare_command))
