"""Benchmark `soundnet extract --engine ray` next to the local engine on the same files.

Workload: the ESC-50 fold-4 clips (400 five-second 44.1-kHz FLAC files) copied ``--copies``
times under distinct names (default 4: 1,600 files, 8,000 s of audio). Each run is a whole
process writing a Parquet folder (start-up included), the official SoundNet-8, pool5:

  local - `soundnet extract DIR --out OUT --format parquet`
  ray   - the same with `--engine ray` (a local Ray started by the run: ``ray.init()`` on this
          machine, decode tasks and one model actor per two CPUs)

Printed as JSON: wall seconds and x realtime (median of ``--runs``, interleaved), the cost of
starting and stopping Ray alone (``ray.init()`` + ``ray.shutdown()`` in a fresh process), and
how the two tables compare (inputs, largest relative difference of a vector, vectors
bit-identical). On one machine Ray adds its start-up, serialisation of decoded audio and
features through its object store, and its scheduler; the figures state how much.

    python benchmarks/extract_ray.py
    python benchmarks/extract_ray.py --copies 1 --runs 1      # quicker: 400 files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SOUNDNET_TEST_DATA", REPO.parent / "shared" / "data"))
ESC = DATA / "esc50-fold4" / "audio"
SOUNDNET = [sys.executable, "-m", "soundnet_cli"]


def workload(folder: Path, copies: int) -> float:
    """``copies`` of every fold-4 clip under distinct names; returns the audio seconds."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for clip in sorted(ESC.glob("*.flac")):
        duration = sf.info(str(clip)).duration
        for copy in range(copies):
            shutil.copyfile(clip, folder / f"c{copy}-{clip.name}")
            seconds += duration
    return seconds


def timed(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall


RAY_ALONE = "import ray; ray.init(include_dashboard=False, log_to_driver=False); ray.shutdown()"


def compare(local: Path, on_ray: Path) -> dict[str, object]:
    from soundnet_cli.extraction.folder import list_feature_files, read_feature_file

    _, mine = list_feature_files(local, "pool5")
    _, theirs = list_feature_files(on_ray, "pool5")
    by_key = {f.key: f for f in theirs}
    worst, identical = 0.0, 0
    for item in mine:
        a, b = read_feature_file(item), read_feature_file(by_key[item.key])
        identical += int(np.array_equal(a, b))
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
    return {
        "inputs_local": len(mine),
        "inputs_ray": len(theirs),
        "same_keys": sorted(by_key) == sorted(f.key for f in mine),
        "bit_identical": identical,
        "max_relative_difference": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if not ESC.is_dir():
        raise SystemExit(f"{ESC} not found (../shared/data)")
    with tempfile.TemporaryDirectory(prefix="soundnet-bench-ray-") as scratch:
        tmp = Path(scratch)
        seconds = workload(tmp / "in", args.copies)
        subprocess.run([*SOUNDNET, "weights", "fetch"], check=False, capture_output=True)
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        for run in range(args.runs):  # interleaved: drifts in machine load hit both alike
            for name in walls:
                out = tmp / f"{name}-{run}"
                command = [*SOUNDNET, "extract", str(tmp / "in"), "--out", str(out)]
                command += ["--format", "parquet", "--json"]
                if name == "ray":
                    command += ["--engine", "ray"]
                walls[name].append(timed(command))
        ray_alone = timed([sys.executable, "-c", RAY_ALONE])
        results: dict[str, object] = {
            "files": 400 * args.copies,
            "audio_seconds": round(seconds, 1),
            "cpus": os.cpu_count(),
        }
        for name, values in walls.items():
            wall = statistics.median(values)
            results[name] = {
                "wall_s": round(wall, 2),
                "x_realtime": round(seconds / wall, 1),
                "runs": [round(v, 2) for v in values],
            }
        local_wall = statistics.median(walls["local"])
        ray_wall = statistics.median(walls["ray"])
        results["ray_overhead"] = {
            "extra_s": round(ray_wall - local_wall, 2),
            "ratio": round(ray_wall / local_wall, 2),
            "ray_init_and_shutdown_alone_s": round(ray_alone, 2),
        }
        results["tables"] = compare(tmp / "local-0", tmp / "ray-0")
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
