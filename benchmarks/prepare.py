"""Benchmark `soundnet prepare`: videos/s and seconds of video per second, and where the time goes.

Makes synthetic videos (H.264 + AAC, moving pattern and a tone), then measures, on one device:
  decode  - audio + one frame per interval, all videos, with the decode threads alone
  teacher - the teacher on that many frames alone (transform + forward), in batches
  prepare - the whole pipeline (decode threads overlapped with teacher inference) into a corpus
  ray     - with --engine ray or both: the same corpus through `prepare --engine ray` on a local
            Ray cluster started first (its start-up timed apart), clips/s beside the local one

    python benchmarks/prepare.py                          # CPU, random-init VGG16 at 224 px
    python benchmarks/prepare.py --device cuda --videos 64 --seconds 60 --batch-size 256
    python benchmarks/prepare.py --engine both --teacher alexnet-imagenet   # local vs Ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_videos(folder: Path, count: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    from tests.videos import make_video

    return [
        make_video(folder / f"v{i:03d}.mp4", seconds, freq=200 + 10 * i, size=size)
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="320x240", help="frame size WxH of the test videos")
    parser.add_argument("--teacher", default="vgg16-imagenet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--frame-interval", type=float, default=5.0)
    parser.add_argument(
        "--engine", choices=("local", "ray", "both"), default="local", help="prepare engine(s)"
    )
    parser.add_argument("--ray-actors", type=int, default=None, help="teacher actors on Ray")
    args = parser.parse_args()

    import torch

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.corpus.prepare import (
        PrepareSettings,
        _decoded,
        build_manifest,
        label,
        prepare_corpus,
    )
    from soundnet_cli.teachers import get_teacher

    width, height = (int(x) for x in args.size.split("x"))
    settings = PrepareSettings(
        clip_seconds=4 * args.frame_interval,
        frame_interval=args.frame_interval,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    teacher = get_teacher(args.teacher, random_init=True).to(args.device)
    results: dict[str, object] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "teacher": f"{args.teacher} (random init)",
        "videos": args.videos,
        "seconds_each": args.seconds,
        "frame_size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        started = time.perf_counter()
        videos = make_videos(folder, args.videos, args.seconds, (width, height))
        results["make_videos_s"] = round(time.perf_counter() - started, 2)
        manifest = build_manifest([teacher], settings)

        started = time.perf_counter()
        decoded = [item for _, item in _decoded(videos, manifest, settings)]
        decode_s = time.perf_counter() - started
        frames = sum(len(d.frames) for d in decoded)  # type: ignore[union-attr]

        label([teacher], decoded[:1], args.batch_size)  # warm-up (cuDNN autotune, allocations)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        label([teacher], decoded, args.batch_size)  # type: ignore[arg-type]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        teacher_s = time.perf_counter() - started

        total_s = None
        if args.engine in ("local", "both"):
            started = time.perf_counter()
            report = prepare_corpus(videos, Path(tmp) / "corpus", [teacher], settings)
            total_s = time.perf_counter() - started
            corpus = Corpus(Path(tmp) / "corpus")
            assert len(corpus.videos) == args.videos, report.failed
            results["clips"] = len(corpus)
            results["prepare_clips_per_s"] = round(len(corpus) / total_s, 3)
        if args.engine in ("ray", "both"):
            results.update(ray_figures(videos, Path(tmp) / "ray", teacher, settings, args))

    video_seconds = args.videos * args.seconds
    results.update(
        {
            "frames": frames,
            "decode_only_s": round(decode_s, 2),
            "decode_videos_per_s": round(args.videos / decode_s, 2),
            "teacher_only_s": round(teacher_s, 2),
            "teacher_frames_per_s": round(frames / teacher_s, 2),
        }
    )
    if total_s is not None:
        results.update(
            {
                "prepare_s": round(total_s, 2),
                "prepare_videos_per_s": round(args.videos / total_s, 3),
                "prepare_video_seconds_per_s": round(video_seconds / total_s, 2),
                "overlap_saving_s": round(decode_s + teacher_s - total_s, 2),
            }
        )
    print(json.dumps(results, indent=2))


def ray_figures(videos: list[Path], out: Path, teacher, settings, args) -> dict[str, object]:
    """`prepare --engine ray` on a local cluster of this machine's CPUs (started first and timed
    apart: a real cluster is up before the job)."""
    import ray

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.corpus.prepare import prepare_corpus

    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    start_s = time.perf_counter() - started
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        started = time.perf_counter()
        report = prepare_corpus(
            videos, out, [teacher.to("cpu")], settings, engine="ray",
            engine_options={"actors": args.ray_actors},
        )  # fmt: skip
        ray_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    clips = len(Corpus(out))
    assert len(Corpus(out).videos) == args.videos, report.failed
    return {
        "ray_cluster_cpus": cpus,
        "ray_start_s": round(start_s, 2),
        "prepare_ray_s": round(ray_s, 2),
        "prepare_ray_videos_per_s": round(args.videos / ray_s, 3),
        "prepare_ray_clips_per_s": round(clips / ray_s, 3),
    }


if __name__ == "__main__":
    main()
