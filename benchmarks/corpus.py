"""The corpus data path at the paper's clip size: tar shards into distillation batches.

Builds a synthetic tar-shard corpus of 20-s 22,050-Hz clips (int16 audio, two heads of 1000 and
401 categories, 4 frames a clip), then measures:

1. the data pipeline alone (no model): clips/s of distill batches (shard reading, the bounded
   shuffle, crops, targets) from local shards, and through a local HTTP server (a separate
   `python -m http.server` process on 127.0.0.1);
2. the audio encoding: bytes per clip and decode clips/s, int16 `.npy` against FLAC;
3. the distill step rate on this CPU (SoundNet-8, the given batch, 20-s crops);
4. from 1 and a stated GPU step rate: how many GPUs one node's data path can feed.

    python benchmarks/corpus.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/corpus.py --json --clips 512 --gpu-steps-per-s 20
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RATE = 22050
SECONDS = 20.0


def build_corpus(root: Path, clips: int, per_shard: int) -> Path:
    """A directory corpus of ``clips`` 20-s clips, converted to tar shards in ``root/tars``."""
    from soundnet_cli.corpus.format import (
        ClipData,
        CorpusManifest,
        HeadInfo,
        ShardWriter,
        VideoRecord,
        write_manifest,
    )
    from soundnet_cli.corpus.shards import convert

    manifest = CorpusManifest(
        sample_rate=RATE,
        clip_seconds=SECONDS,
        frame_interval=5.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": "objects-teacher"}, {"name": "scenes-teacher"}),
        heads=(
            HeadInfo("objects", "objects-teacher", tuple(f"o{i}" for i in range(1000))),
            HeadInfo("scenes", "scenes-teacher", tuple(f"s{i}" for i in range(401))),
        ),
    )
    dirs = root / "dirs"
    write_manifest(dirs, manifest)
    samples = int(RATE * SECONDS)
    writer = ShardWriter(dirs, manifest, shard_bytes=per_shard * (samples * 2 + 4 * 1401 * 2))
    rng = np.random.default_rng(0)
    noise = rng.integers(-3000, 3000, samples + 1000, dtype=np.int16)
    for v in range(clips):
        posteriors = {
            "objects": rng.dirichlet(np.ones(1000), 4).astype(np.float32),
            "scenes": rng.dirichlet(np.ones(401), 4).astype(np.float32),
        }
        offset = int(rng.integers(0, 1000))
        clip = ClipData(0.0, noise[offset : offset + samples], [2.5, 7.5, 12.5, 17.5], posteriors)
        writer.add_video(VideoRecord(f"/videos/{v:07d}.mp4", f"{v:07d}.mp4", SECONDS), [clip])
    writer.flush()
    convert(dirs, root / "tars", "shards")
    return root / "tars"


def pipeline_rate(spec: str, batch: int, seconds: float, workers: int) -> float:
    """Clips/s of distill batches (int16 audio, float32 targets) read from ``spec``."""
    import torch

    from soundnet_cli.corpus.shards import ShardSet
    from soundnet_cli.training.distillation.data import crop_plan
    from soundnet_cli.training.distillation.streaming import make_plan, stream_loader

    data = ShardSet(spec)
    plan = make_plan(data, set(), ["objects", "scenes"], crop_plan(data, SECONDS), seed=0,
                     rank=0, world=1, workers=workers, batch_size=batch, start_step=0)  # fmt: skip
    torch.set_num_threads(1)
    batches = stream_loader(plan, workers, pin_memory=False)
    next(batches)  # workers started, first shard opened
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        audio, targets = next(batches)
        assert audio.dtype == torch.int16 and audio.shape == (batch, int(RATE * SECONDS))
        count += len(audio)
    rate = count / (time.perf_counter() - began)
    del batches
    return rate


@contextlib.contextmanager
def http_server(folder: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def encoding_figures(clips: int = 20) -> dict[str, float]:
    """int16 .npy against FLAC for one 20-s clip of speech-like noise: bytes and decodes/s."""
    import soundfile

    from soundnet_cli.corpus.tario import parse_npy

    rng = np.random.default_rng(1)
    t = np.arange(int(RATE * SECONDS)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)
    wave = 3000 * envelope * np.sin(2 * np.pi * 440 * t) + 400 * rng.standard_normal(len(t))
    wave = wave.astype(np.int16)
    buffer = io.BytesIO()
    np.save(buffer, wave)
    npy = buffer.getvalue()
    flac_buffer = io.BytesIO()
    soundfile.write(flac_buffer, wave, RATE, format="FLAC", subtype="PCM_16")
    flac = flac_buffer.getvalue()
    began = time.perf_counter()
    for _ in range(clips * 50):
        decoded = parse_npy(npy, 0, len(npy), "x")
        decoded.astype(np.float32)  # what the model step does with it (on the device in distill)
    npy_rate = clips * 50 / (time.perf_counter() - began)
    began = time.perf_counter()
    for _ in range(clips):
        decoded, _ = soundfile.read(io.BytesIO(flac), dtype="int16")
        decoded.astype(np.float32)
    flac_rate = clips / (time.perf_counter() - began)
    assert np.array_equal(decoded, wave)
    return {
        "int16_bytes_per_clip": len(npy),
        "flac_bytes_per_clip": len(flac),
        "int16_decode_clips_per_s": round(npy_rate, 1),
        "flac_decode_clips_per_s": round(flac_rate, 1),
    }


def distill_rate(spec: str, batch: int, steps: int, workdir: Path) -> float:
    """Steps/s of SoundNet-8 distillation on this CPU (the first step, warm-up, left out)."""
    from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics

    config = DistillConfig(batch_size=batch, steps=steps, crop_seconds=SECONDS, workers=1,
                           log_every=1, eval_every=10**6, held_out=0.0, device="cpu")  # fmt: skip
    distill(spec, workdir / "run", config)
    rates = [m["samples_per_s"] for m in read_metrics(workdir / "run")[1:]]
    return float(np.mean(rates)) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=384, help="clips in the corpus [384]")
    parser.add_argument("--per-shard", type=int, default=64, help="clips per shard [64]")
    parser.add_argument("--batch-size", type=int, default=64, help="pipeline batch [64]")
    parser.add_argument("--seconds", type=float, default=10.0, help="per pipeline figure [10]")
    parser.add_argument("--workers", type=int, default=0, help="loader workers [0: in process]")
    parser.add_argument("--distill-batch", type=int, default=4, help="CPU step batch [4]")
    parser.add_argument("--distill-steps", type=int, default=4, help="CPU steps [4]")
    parser.add_argument(
        "--gpu-steps-per-s",
        type=float,
        default=10.0,
        help="the stated GPU rate, steps/s at --gpu-batch [10, an assumption, not measured]",
    )
    parser.add_argument("--gpu-batch", type=int, default=64, help="[64, the paper's]")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        tars = build_corpus(root, args.clips, args.per_shard)
        shards = sorted(p.name for p in (tars / "shards").glob("*.tar"))
        local = "::".join(str(tars / "shards" / name) for name in shards)
        built = time.perf_counter() - began
        shard_mb = (tars / "shards" / shards[0]).stat().st_size / 2**20
        local_rate = pipeline_rate(local, args.batch_size, args.seconds, args.workers)
        with http_server(tars) as base:
            remote = "::".join(f"{base}/shards/{name}" for name in shards)
            http_rate = pipeline_rate(remote, args.batch_size, args.seconds, args.workers)
        encoding = encoding_figures()
        steps_per_s = distill_rate(local, args.distill_batch, args.distill_steps, root)
    gpu_clips = args.gpu_steps_per_s * args.gpu_batch
    result = {
        "clip_seconds": SECONDS,
        "sample_rate": RATE,
        "clips": args.clips,
        "shards": len(shards),
        "shard_mb": round(shard_mb, 1),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "pipeline_local_clips_per_s": round(local_rate, 1),
        "pipeline_http_clips_per_s": round(http_rate, 1),
        "pipeline_local_gb_per_s": round(local_rate * RATE * SECONDS * 2 / 1e9, 2),
        **encoding,
        "distill_steps_per_s": round(steps_per_s, 4),
        "distill_batch_size": args.distill_batch,
        "gpu_steps_per_s_stated": args.gpu_steps_per_s,
        "gpu_batch_size": args.gpu_batch,
        "gpus_fed_local": round(local_rate / gpu_clips, 2),
        "gpus_fed_http": round(http_rate / gpu_clips, 2),
        "build_seconds": round(built, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"corpus: {args.clips} clips of 20 s at 22,050 Hz in {len(shards)} tar shards "
          f"({shard_mb:.0f} MB each), built in {built:.0f} s")  # fmt: skip
    print(f"pipeline, local shards: {local_rate:,.0f} clips/s "
          f"({result['pipeline_local_gb_per_s']} GB/s of int16 audio)")  # fmt: skip
    print(f"pipeline, local HTTP server: {http_rate:,.0f} clips/s")
    print(f"encoding: int16 .npy {encoding['int16_bytes_per_clip'] / 1e3:.0f} kB/clip, "
          f"{encoding['int16_decode_clips_per_s']:,.0f} clips/s; FLAC "
          f"{encoding['flac_bytes_per_clip'] / 1e3:.0f} kB/clip, "
          f"{encoding['flac_decode_clips_per_s']:,.0f} clips/s (one core)")  # fmt: skip
    print(f"distill on this CPU: {steps_per_s:.3f} steps/s at batch {args.distill_batch}")
    print(f"GPUs one node feeds at a stated {args.gpu_steps_per_s:g} steps/s x batch "
          f"{args.gpu_batch}: {result['gpus_fed_local']} (local), {result['gpus_fed_http']} "
          "(HTTP)")  # fmt: skip


if __name__ == "__main__":
    main()
