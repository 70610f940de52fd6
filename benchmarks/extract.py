"""Benchmark `soundnet extract` as a user runs it: whole processes, next to a naive baseline.

One workload: the ESC-50 fold-4 clips (400 five-second 44.1-kHz FLAC files) copied ``--copies``
times under distinct names (default 4: 1,600 files, 8,000 s of audio). Printed, each as
x realtime (audio seconds per wall second, median of ``--runs`` whole processes, start-up
included):

  naive  - a plain loop in its own process: libsndfile decode, torchaudio resampling, the
           model as defined (no rewrites), batch 1, np.save per file (`extract.py naive`)
  fp32   - `soundnet extract DIR --out OUT` (defaults)
  bf16   - `soundnet extract DIR --out OUT --precision bf16`

then the largest relative error of bf16 pool5 features against fp32 over all files, the time
of `soundnet extract one.flac` (and where it goes), and a stage breakdown in one process:
decode, resample (soxr as used; torchaudio for comparison), model (plain, rewritten fp32,
rewritten bf16; batch 16 x 5 s), write. The official SoundNet-8 weights are used (fetched once).

    python benchmarks/extract.py
    python benchmarks/extract.py --copies 1 --runs 1        # quicker: 400 files
    python benchmarks/extract.py --stages-only
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
ESC = REPO.parent / "shared" / "data" / "esc50-fold4" / "audio"
SOUNDNET = [str(Path(sys.executable).with_name("soundnet"))]  # the installed command


# -- the naive baseline (run in its own process) ----------------------------------------------
def naive(folder: Path, out: Path, layer: str = "pool5") -> None:
    """Decode, resample, plain model, batch 1, save: one file at a time."""
    import soundfile as sf
    import torch
    import torchaudio.functional as taf

    from soundnet_cli.models import load_student

    model = load_student("soundnet8", pretrained=True)
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(folder.glob("*.flac"))):
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        wave = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
        if rate != 22050:
            wave = taf.resample(wave, rate, 22050)
        with torch.inference_mode():
            feats = model.forward_features(wave * 256, [layer])[layer]
        np.save(out / f"{i}.npy", feats[0].T.numpy())


# -- whole processes -------------------------------------------------------------------------
def workload(folder: Path, copies: int) -> tuple[Path, float]:
    """The fold-4 clips copied ``copies`` times with distinct names; (folder, audio seconds)."""
    import soundfile as sf

    clips = sorted(ESC.glob("*.flac"))
    if not clips:
        sys.exit(f"no clips in {ESC}")
    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for copy in range(copies):
        for clip in clips:
            shutil.copyfile(clip, folder / f"c{copy}-{clip.name}")
            seconds += sf.info(str(clip)).duration
    return folder, seconds


def timed(command: list[str]) -> float:
    """Wall seconds of one whole process."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def whole_processes(folder: Path, seconds: float, tmp: Path, runs: int) -> dict[str, dict]:
    """Each run writes a new folder: deleting the last one first would time the file system
    reusing 1,600 just-deleted inodes (ext4 scans past them), which a user's run does not."""

    def commands(run: int) -> dict[str, list[str]]:
        out = {name: str(tmp / f"{name}-{run}") for name in ("naive", "fp32", "bf16")}
        return {
            "naive": [sys.executable, __file__, "naive", str(folder), out["naive"]],
            "fp32": [*SOUNDNET, "extract", str(folder), "--out", out["fp32"]],
            "bf16": [*SOUNDNET, "extract", str(folder), "--out", out["bf16"]]
            + ["--precision", "bf16"],
        }

    walls: dict[str, list[float]] = {name: [] for name in commands(0)}
    subprocess.run([*SOUNDNET, "weights", "fetch"], check=False, capture_output=True)
    for run in range(runs):  # interleaved, so that drifts in machine load hit all alike
        for name, command in commands(run).items():
            walls[name].append(timed(command))
    results = {}
    for name, values in walls.items():
        wall = statistics.median(values)
        results[name] = {"wall_s": round(wall, 2), "x_realtime": round(seconds / wall, 1)}
    for name in ("fp32", "bf16"):
        results[name]["vs_naive"] = round(results["naive"]["wall_s"] / results[name]["wall_s"], 2)
    return results


def bf16_error(tmp: Path) -> dict[str, float]:
    """Per-file relative error of bf16 pool5 features against fp32, elementwise (max |bf16 -
    fp32| / max |fp32|, the measure the precision check uses) and norm-wise (||bf16 - fp32|| /
    ||fp32||)."""
    elementwise, normwise = [], []
    for reference in sorted((tmp / "fp32-0").rglob("*.pool5.npy")):
        ours = np.load(tmp / "bf16-0" / reference.relative_to(tmp / "fp32-0"))
        ref = np.load(reference)
        elementwise.append(float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)))
        normwise.append(float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-12)))
    if not elementwise:
        return {"files": 0}
    return {
        "files": len(elementwise),
        "max": round(max(elementwise), 4),
        "median": round(float(np.median(elementwise)), 4),
        "above_3e-2": sum(e > 3e-2 for e in elementwise),
        "normwise_max": round(max(normwise), 4),
        "normwise_median": round(float(np.median(normwise)), 4),
    }


def one_file(tmp: Path, runs: int) -> dict[str, float]:
    """`soundnet extract one.flac` whole, then where an in-process run spends its time."""
    clip = sorted(ESC.glob("*.flac"))[0]
    walls = [
        timed([*SOUNDNET, "extract", str(clip), "--out", str(tmp / f"one-{run}")])
        for run in range(runs)
    ]
    probe = (
        "import time, sys\n"
        "from soundnet_cli.runtime import import_torch\n"
        "t0 = time.perf_counter()\n"
        "import_torch()\n"
        "t1 = time.perf_counter()\n"
        "from soundnet_cli.extraction.engine import extract\n"
        "from soundnet_cli.models import load_student\n"
        "t2 = time.perf_counter()\n"
        "m = load_student('soundnet8', pretrained=True)\n"
        "t3 = time.perf_counter()\n"
        "extract([sys.argv[1]], ['pool5'], sys.argv[2], model=m)\n"
        "t4 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)\n"
    )
    shutil.rmtree(tmp / "one", ignore_errors=True)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe, str(clip), str(tmp / "one")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    total = time.perf_counter() - started
    torch_s, ours_s, load_s, run_s = (float(v) for v in out[-4:])
    return {
        "wall_s": round(statistics.median(walls), 2),
        "python_start_and_exit_s": round(total - torch_s - ours_s - load_s - run_s, 2),
        "import_torch_s": round(torch_s, 2),
        "import_soundnet_s": round(ours_s, 2),
        "load_weights_s": round(load_s, 2),
        "extract_call_s": round(run_s, 2),
    }


# -- stages in one process -------------------------------------------------------------------
def stages(tmp: Path, clips: int = 64) -> dict[str, float]:
    """x realtime of each stage alone, on one thread except the model (all threads)."""
    import torch
    import torchaudio.functional as taf

    from soundnet_cli.media.audio import decode, resample
    from soundnet_cli.models import load_student
    from soundnet_cli.students.inference import FastStudent

    files = sorted(ESC.glob("*.flac"))[:clips]
    decoded = []
    started = time.perf_counter()
    for path in files:
        data, rate = decode(path)  # the product's reading path
        decoded.append((np.ascontiguousarray(data[:, 0]), rate))
    decode_s = time.perf_counter() - started
    seconds = sum(len(w) / r for w, r in decoded)
    started = time.perf_counter()
    waves = [resample(w, r) for w, r in decoded]
    soxr_s = time.perf_counter() - started
    threads = torch.get_num_threads()
    started = time.perf_counter()
    for w, r in decoded:
        taf.resample(torch.from_numpy(w), r, 22050)
    torchaudio_s = time.perf_counter() - started

    model = load_student("soundnet8", pretrained=True)
    fast = FastStudent(model)
    batch = torch.from_numpy(np.stack(waves[:16])) * 256

    def speed(m, dtype=None, threads=threads) -> float:
        if dtype is not None:
            m.set_dtype(dtype)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            m.forward_features(batch, ["pool5"])
            started = time.perf_counter()
            for _ in range(3):
                m.forward_features(batch, ["pool5"])
        return 3 * len(batch) * 5.0 / (time.perf_counter() - started)

    plain, fp32, bf16 = speed(model), speed(fast, torch.float32), speed(fast, torch.bfloat16)
    one = {dtype: speed(fast, dtype, threads=1) for dtype in (torch.float32, torch.bfloat16)}
    torch.set_num_threads(threads)
    features = np.random.default_rng(0).standard_normal((13, 256)).astype(np.float32)
    started = time.perf_counter()
    for i in range(len(files)):
        np.save(tmp / f"w{i}.npy", features)
    write_s = time.perf_counter() - started
    return {
        "decode_flac_1_thread": round(seconds / decode_s),
        "resample_soxr_1_thread": round(seconds / soxr_s),
        f"resample_torchaudio_{threads}_threads": round(seconds / torchaudio_s),
        f"model_plain_fp32_{threads}_threads": round(plain),
        f"model_rewritten_fp32_{threads}_threads": round(fp32),
        f"model_rewritten_bf16_{threads}_threads": round(bf16),
        "model_rewritten_fp32_1_thread": round(one[torch.float32]),
        "model_rewritten_bf16_1_thread": round(one[torch.bfloat16]),
        "write_npy": round(seconds / write_s),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "naive":
        naive(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the 400 clips")
    parser.add_argument("--runs", type=int, default=3, help="whole processes per pipeline")
    parser.add_argument("--stages-only", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results["stages_x_realtime"] = stages(tmp)
        print("stages (x realtime):", json.dumps(results["stages_x_realtime"]), flush=True)
        if not args.stages_only:
            folder, seconds = workload(tmp / "audio", args.copies)
            results["workload"] = {"files": args.copies * 400, "audio_seconds": round(seconds)}
            results["whole_process"] = whole_processes(folder, seconds, tmp, args.runs)
            print("whole processes:", json.dumps(results["whole_process"]), flush=True)
            results["bf16_pool5_error"] = bf16_error(tmp)
            results["one_file"] = one_file(tmp, args.runs)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
