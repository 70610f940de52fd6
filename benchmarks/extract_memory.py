"""Benchmark `soundnet extract` memory on one long file: peak resident memory of the process.

Writes a long 44.1-kHz FLAC (default 2 hours, in blocks, never whole in memory), saves a randomly
initialised SoundNet-8 checkpoint, runs `soundnet extract` on the file in a child process and
prints the child's peak RSS (target: under 1.5 GB for 2 hours on CPU) and its speed. A second,
shorter file shows that the peak does not grow with length.

    python benchmarks/extract_memory.py
    python benchmarks/extract_memory.py --hours 0.5 --layer conv7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_long(path: Path, hours: float, rate: int = 44100) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = rate * 60
    total = int(hours * 3600 * rate)
    t = np.arange(block) / rate
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as handle:
        for start in range(0, total, block):
            n = min(block, total - start)
            tone = 0.3 * np.sin(2 * np.pi * (200 + (start // block) % 20 * 40) * t[:n])
            handle.write((tone + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return path


def peak_rss_of(command: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stdout) of one child process."""
    script = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'peak': peak, 'wall': wall, 'out': p.stdout,"
        " 'err': p.stderr[-2000:]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        sys.exit(f"extract failed ({result['rc']}): {result['err']}")
    return result["peak"], result["wall"], result["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--layer", default="pool5")
    parser.add_argument("--chunk-seconds", type=float, default=60.0)
    args = parser.parse_args()

    import torch

    from soundnet_cli.students import soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    results = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(soundnet8(), folder / "student.safetensors")
        for hours in (args.hours / 8, args.hours):
            started = time.perf_counter()
            audio = write_long(folder / f"long-{hours:g}h.flac", hours)
            made = time.perf_counter() - started
            command = [
                sys.executable, "-m", "soundnet_cli", "extract", str(audio),
                "--out", str(folder / f"out-{hours:g}"), "--checkpoint", str(checkpoint),
                "--layer", args.layer, "--chunk-seconds", str(args.chunk_seconds),
                "--device", "cpu", "--json",
            ]  # fmt: skip
            peak, wall, out = peak_rss_of(command)
            summary = json.loads(out)
            results[f"{hours:g}h"] = {
                "peak_rss_mib": round(peak),
                "wall_seconds": round(wall, 1),
                "x_realtime": summary["x_realtime"],
                "file_mib": round(audio.stat().st_size / 2**20),
            }
            print(
                f"{hours:g} h ({audio.stat().st_size / 2**20:.0f} MiB FLAC, made in {made:.0f} s): "
                f"peak RSS {peak:.0f} MiB, {wall:.1f} s, {summary['x_realtime']:.0f}x realtime"
            )
            audio.unlink()
    print(json.dumps({"layer": args.layer, **results}, indent=2))


if __name__ == "__main__":
    main()
