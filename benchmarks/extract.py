"""Benchmark `soundnet extract`: audio seconds per second (x realtime), next to a naive baseline.

Two workloads, each run by the engine (decode threads overlapped with compute, equal-length
batches, the inference rewrites) and by a naive pipeline in the same process (one file at a time,
`audio.load_audio`, the unfused model, batch 1, `np.save`), with their ratio:

  clips - the 400 44.1-kHz FLAC clips of ../shared/data/esc50-fold4 (decoding and resampling count)
  long  - one 30-minute 44.1-kHz FLAC file (streamed in chunks by the engine)

Also the forward pass alone (pool5, batch 16 x 5 s) for the plain and the rewritten model.
The model is a randomly initialised SoundNet-8 (same arithmetic as the official weights).

    python benchmarks/extract.py
    python benchmarks/extract.py --workloads clips --batch-size 32 --device cuda
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
ESC = REPO.parent / "shared" / "data" / "esc50-fold4" / "audio"


def naive(files: list[Path], model, out: Path, layer: str, device: str) -> float:
    """Audio seconds extracted per second, one file at a time, plain model, batch 1."""
    import torch

    from soundnet_cli.media.audio import load_audio

    out.mkdir(parents=True, exist_ok=True)
    audio = 0.0
    start = time.perf_counter()
    for i, path in enumerate(files):
        wave = load_audio(path)
        with torch.inference_mode():
            feats = model.forward_features(torch.from_numpy(wave.samples).to(device), [layer])
        np.save(out / f"{i}.npy", feats[layer][0].T.cpu().numpy())
        audio += wave.duration
    return audio / (time.perf_counter() - start)


def engine(files: list[Path], model, out: Path, layer: str, args) -> tuple[float, float]:
    """(steady-state x realtime after the first batch, end to end x realtime) of extract()."""
    from soundnet_cli.extraction.engine import extract

    marks: list[tuple[float, float]] = []
    summary = extract(
        [str(f) for f in files],
        [layer],
        out,
        model=model,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=lambda p: marks.append((p.elapsed, p.audio_seconds)),
    )
    assert not summary.failures, summary.failures[:3]
    skip = min(args.batch_size, len(marks) - 1)
    (t0, a0), (t1, a1) = marks[skip - 1] if skip > 0 else (0.0, 0.0), marks[-1]
    steady = (a1 - a0) / (t1 - t0) if t1 > t0 else summary.realtime
    return steady, summary.realtime


def forward_only(model, fast, device: str, layer: str) -> tuple[float, float]:
    import torch

    x = torch.randn(16, 5 * 22050, device=device) * 50
    speeds = []
    for m in (model, fast):
        with torch.inference_mode():
            for _ in range(2):
                m.forward_features(x, [layer])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start, runs = time.perf_counter(), 5
            for _ in range(runs):
                m.forward_features(x, [layer])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        speeds.append(16 * 5 * runs / (time.perf_counter() - start))
    return speeds[0], speeds[1]


def long_file(folder: Path, minutes: float) -> Path:
    """A long 44.1-kHz FLAC made of ESC clips (or noise if they are absent), written in blocks."""
    import soundfile as sf

    path = folder / f"long-{minutes:g}min.flac"
    clips = sorted(ESC.glob("*.flac"))[:60]
    blocks = [sf.read(str(c), dtype="float32")[0] for c in clips] or [
        (0.1 * np.random.default_rng(0).standard_normal(44100 * 5)).astype(np.float32)
    ]
    total = int(minutes * 60 * 44100)
    with sf.SoundFile(str(path), "w", 44100, 1, "PCM_16") as handle:
        written, i = 0, 0
        while written < total:
            block = blocks[i % len(blocks)][: total - written]
            handle.write(block)
            written += len(block)
            i += 1
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="clips,long")
    parser.add_argument("--layer", default="pool5")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clips", type=int, default=400)
    args = parser.parse_args()

    import torch

    from soundnet_cli.students import soundnet8
    from soundnet_cli.students.inference import optimise

    torch.manual_seed(0)
    model = soundnet8().to(args.device).eval()
    fast = optimise(model, layers=[args.layer])
    results: dict[str, object] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "layer": args.layer,
    }
    plain_fw, fast_fw = forward_only(model, fast, args.device, args.layer)
    results["forward_only_x_realtime"] = {"plain": round(plain_fw), "optimised": round(fast_fw)}
    print(f"forward pass alone (batch 16 x 5 s): plain {plain_fw:.0f}x, optimised {fast_fw:.0f}x")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workloads = args.workloads.split(",")
        if "clips" in workloads:
            files = sorted(ESC.glob("*.flac"))[: args.clips]
            if not files:
                sys.exit(f"no clips in {ESC}")
            base = naive(files, model, folder / "naive", args.layer, args.device)
            steady, end_to_end = engine(files, model, folder / "engine", args.layer, args)
            results["clips"] = {
                "files": len(files),
                "naive_x_realtime": round(base),
                "engine_x_realtime_steady": round(steady),
                "engine_x_realtime_end_to_end": round(end_to_end),
                "ratio": round(steady / base, 2),
            }
            print(
                f"{len(files)} clips: naive {base:.0f}x, engine {steady:.0f}x steady "
                f"({end_to_end:.0f}x end to end, with setup), ratio {steady / base:.2f}"
            )
        if "long" in workloads:
            path = long_file(folder, args.minutes)
            base = naive([path], model, folder / "naive-long", args.layer, args.device)
            _, end_to_end = engine([path], model, folder / "engine-long", args.layer, args)
            results["long"] = {
                "minutes": args.minutes,
                "naive_x_realtime": round(base),
                "engine_x_realtime": round(end_to_end),
                "ratio": round(end_to_end / base, 2),
            }
            print(
                f"one {args.minutes:g}-min file: naive {base:.0f}x, engine {end_to_end:.0f}x, "
                f"ratio {end_to_end / base:.2f}"
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
