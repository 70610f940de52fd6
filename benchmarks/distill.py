"""Benchmark `soundnet distill` throughput: training samples/s and the data-wait fraction, for a
sweep of batch sizes (to see where throughput stops scaling), on a synthetic corpus.

    python benchmarks/distill.py                                   # CPU: batch 4 and 8
    python benchmarks/distill.py --device cuda --batch-sizes 16,32,64,128,256 --steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_corpus(root: Path, clips: int, seconds: int = 20, heads: int = 2) -> Path:
    from soundnet_cli.corpus.format import (
        ClipData,
        CorpusManifest,
        HeadInfo,
        ShardWriter,
        VideoRecord,
        write_manifest,
    )

    sizes = (1000, 365)[:heads]
    manifest = CorpusManifest(
        sample_rate=22050,
        clip_seconds=float(seconds),
        frame_interval=5.0,
        frame_at="centre",
        mix="first",
        teachers=tuple({"name": f"t{i}"} for i in range(heads)),
        heads=tuple(
            HeadInfo(f"h{i}", f"t{i}", tuple(f"c{j}" for j in range(n)))
            for i, n in enumerate(sizes)
        ),
    )
    write_manifest(root, manifest)
    writer = ShardWriter(root, manifest)
    rng = np.random.default_rng(0)
    frames = seconds // 5
    for i in range(clips):
        posteriors = {}
        for h, n in zip(manifest.heads, sizes, strict=True):
            p = rng.random((frames, n)).astype(np.float32) ** 8
            posteriors[h.name] = p / p.sum(axis=1, keepdims=True)
        audio = rng.integers(-8000, 8000, seconds * 22050, dtype=np.int16)
        clip = ClipData(0.0, audio, [2.5 + 5 * k for k in range(frames)], posteriors)
        writer.add_video(VideoRecord(f"/v/{i}", f"{i}", float(seconds)), [clip])
    writer.flush()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--student", default="soundnet8")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import torch

    from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = synthetic_corpus(Path(tmp) / "corpus", args.clips)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            config = DistillConfig(
                student=args.student,
                steps=args.steps,
                batch_size=batch,
                workers=args.workers,
                device=args.device,
                held_out=0.0,
                log_every=1,
                eval_every=10**9,
                checkpoint_every=10**9,
                compile=args.compile,
            )
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            distill(corpus, Path(tmp) / f"run-{batch}", config)
            wall = time.perf_counter() - started
            metrics = read_metrics(Path(tmp) / f"run-{batch}")[1:]  # the first step warms up
            row = {
                "batch_size": batch,
                "samples_per_s": round(float(np.mean([m["samples_per_s"] for m in metrics])), 2),
                "data_wait": round(float(np.mean([m["data_wait"] for m in metrics])), 4),
                "wall_s": round(wall, 1),
            }
            if args.device.startswith("cuda"):
                row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(json.dumps({"device": device, "student": args.student, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
