"""End-to-end check of distillation on real sound (ESC-10), and training throughput.

1. Pair every ESC-10 clip (real audio) with synthetic frames whose colour is the clip's class,
   muxed into an mp4 (H.264 + AAC) with PyAV.
2. `prepare` those videos with a small teacher defined here, `class-colour`, whose posterior
   follows the picture (a softmax over the 10 class colours).
3. `distill` a fresh SoundNet-8 for a few CPU minutes on 80 % of the videos.
4. Report the held-out teacher-student top-1 agreement against chance, and the ESC-10 accuracy
   (the paper's protocol, `soundnet evaluate esc10`, pool5, linear SVM, 5 folds) of the
   distilled student against the same student at random init; plus samples/s and data wait.

    python benchmarks/distill_esc10.py                       # about 15 minutes on 2 CPU cores
    python benchmarks/distill_esc10.py --steps 200 --batch-size 32 --device cuda
    python benchmarks/distill_esc10.py --shards-over-http    # tar shards from a local server
    python benchmarks/distill_esc10.py --skip-probe --compare-storage 0,1,2,3,4 --work W
        # folder vs tar shards over HTTP, one run each per seed: agreement mean and spread
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ESC10 = Path(os.environ.get("SOUNDNET_ESC10", REPO.parent / "shared" / "data" / "esc10"))
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128),
]  # fmt: skip


def esc10_rows(root: Path = ESC10) -> list[dict[str, str]]:
    with open(root / "meta" / "esc50.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["esc10"].strip().lower() == "true"]
    return [dict(r, path=str(root / "audio" / r["filename"])) for r in rows]


def class_colour_teacher(classes: list[str], sharpness: float = 1e-4):
    """Posterior over the classes from the frame's mean colour (nearest palette colours win)."""
    import torch
    from torch import nn

    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

    class ColourNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.palette = nn.Parameter(torch.tensor(PALETTE[: len(classes)], dtype=torch.float32))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            mean = pixels.mean(dim=(2, 3)) * 255  # (N, 3)
            return -sharpness * torch.cdist(mean, self.palette) ** 2

    transform = FrameTransform(resize=32, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    head = TeacherHead("class-colour", tuple(classes))
    return Teacher("class-colour", ColourNet(), [head], transform, {"weights": "palette"})


def make_paired_video(wav: Path, out: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """An mp4 holding the clip's real audio and frames of its class colour with a little noise."""
    import av
    import soundfile as sf

    audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    rng = np.random.default_rng(seed)
    fps = 5
    frames = int(np.ceil(len(audio) / rate * fps))
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=rate)
        sound.layout = "mono"
        for n in range(frames):
            picture = np.clip(
                np.array(colour, np.float32) + rng.normal(0, 20, (48, 64, 3)), 0, 255
            ).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        block = 1024
        for start in range(0, len(audio), block):
            chunk = np.ascontiguousarray(audio[start : start + block, :1].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)
    return out


def build_videos(rows: list[dict[str, str]], folder: Path, classes: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_paired_video(
            Path(r["path"]),
            folder / f"{Path(r['filename']).stem}.mp4",
            PALETTE[classes.index(r["category"])],
            seed=i,
        )
        for i, r in enumerate(rows)
    ]


def prepare(videos: list[Path], corpus: Path, classes: list[str]) -> dict:
    from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus

    report = prepare_corpus(
        videos, corpus, [class_colour_teacher(classes)], PrepareSettings(batch_size=64)
    )
    return report.as_dict()


def random_init_checkpoint(corpus: Path, out: Path, student: str, seed: int) -> Path:
    """The student exactly as distill initialises it (same seed, same heads), saved natively."""
    import torch

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students import HeadSpec
    from soundnet_cli.weights.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    heads = [HeadSpec(h.name, h.size, h.categories) for h in Corpus(corpus).manifest.heads]
    model = get_plugins().students.create(student, heads=heads)
    return save_checkpoint(model, out, provenance={"source": "random init", "seed": seed})


def evaluate(checkpoint: Path, root: Path) -> dict:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "evaluate", "esc10", str(root),
         "--checkpoint", str(checkpoint), "--layer", "pool5", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def accuracy_of(report: dict) -> float:
    """Mean accuracy over the 5 folds for pool5 (evaluate's JSON summary)."""
    return round(float(report["summary"]["pool5"]["mean"]), 4)


@contextlib.contextmanager
def corpus_source(work: Path, over_http: bool):
    """The corpus folder, or its tar shards served by `python -m http.server` on 127.0.0.1."""
    if not over_http:
        yield str(work / "corpus")
        return
    from soundnet_cli.corpus.shards import convert

    if not (work / "corpus-tar" / "manifest.json").is_file():
        convert(work / "corpus", work / "corpus-tar", "shards")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=work / "corpus-tar",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        names = sorted(p.name for p in (work / "corpus-tar" / "shards").glob("*.tar"))
        yield "::".join(f"http://127.0.0.1:{port}/shards/{name}" for name in names)
    finally:
        server.terminate()
        server.wait()


def distill_config(args: argparse.Namespace, seed: int):
    from soundnet_cli.training.distillation import DistillConfig

    return DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        workers=args.workers,
        held_out=args.held_out,
        seed=seed,
        log_every=5,
        eval_every=max(10, args.steps // 4),
        checkpoint_every=args.steps,
    )


def compare_storage(work: Path, seeds: list[int], args: argparse.Namespace) -> dict:
    """Held-out agreement per seed from the folder and from HTTP shards; mean and sd each."""
    from soundnet_cli.training.distillation import distill

    found: dict[str, list[float]] = {"folder": [], "http_shards": []}
    for seed in seeds:
        for name, over_http in (("folder", False), ("http_shards", True)):
            with corpus_source(work, over_http) as source:
                result = distill(
                    source, work / f"run-{name}-seed{seed}", distill_config(args, seed),
                    overwrite=True,
                )  # fmt: skip
            found[name].append(round(float(result.agreement["class-colour"]), 4))
    summary: dict[str, object] = {"seeds": seeds, **found}
    for name, values in found.items():
        summary[f"{name}_mean"] = round(float(np.mean(values)), 4)
        summary[f"{name}_sd"] = round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="init, order and crops [0]")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N clips")
    parser.add_argument("--work", type=Path, default=None, help="keep files here")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument(
        "--shards-over-http",
        action="store_true",
        help="convert the corpus to tar shards and distill from a local HTTP server",
    )
    parser.add_argument(
        "--compare-storage",
        default="",
        metavar="SEEDS",
        help="distill once from the folder and once from HTTP shards per seed (e.g. 0,1,2) and "
        "print the held-out agreement of each with its mean and standard deviation",
    )
    args = parser.parse_args()

    from soundnet_cli.training.distillation import distill, read_metrics

    rows = esc10_rows()
    if args.limit:
        rows = rows[: args.limit]
    classes = sorted({r["category"] for r in rows})
    work = args.work or Path(tempfile.mkdtemp(prefix="distill-esc10-"))
    figures: dict[str, object] = {"clips": len(rows), "classes": len(classes), "work": str(work)}
    if (work / "corpus" / "manifest.json").is_file() and args.work:
        figures["prepared"] = "reused " + str(work / "corpus")
    else:
        started = time.perf_counter()
        videos = build_videos(rows, work / "videos", classes)
        figures["make_videos_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        report = prepare(videos, work / "corpus", classes)
        figures["prepare_s"] = round(time.perf_counter() - started, 1)
        figures["prepared"] = report["prepared"]
        figures["failed"] = len(report["failed"])
    if args.compare_storage:
        seeds = [int(s) for s in args.compare_storage.split(",")]
        figures |= compare_storage(work, seeds, args)
        print(json.dumps(figures, indent=2))
        return

    config = distill_config(args, args.seed)
    started = time.perf_counter()
    run = work / (("run-http" if args.shards_over_http else "run") + f"-seed{args.seed}")
    with corpus_source(work, args.shards_over_http) as source:
        figures["corpus_source"] = source
        result = distill(source, run, config, overwrite=True)
    figures["distill_s"] = round(time.perf_counter() - started, 1)
    metrics = read_metrics(run)
    figures["steps"] = result.steps
    figures["loss_first_last"] = [round(metrics[0]["loss"], 3), round(metrics[-1]["loss"], 3)]
    figures["samples_per_s"] = round(float(np.mean([m["samples_per_s"] for m in metrics])), 2)
    figures["data_wait"] = round(float(np.mean([m["data_wait"] for m in metrics])), 4)
    figures["held_out_agreement"] = result.agreement
    figures["chance_most_frequent"] = result.chance
    figures["chance_uniform"] = round(1 / len(classes), 4)
    figures["agreement_curve"] = [
        (m["step"], m["agreement"]["class-colour"]) for m in metrics if "agreement" in m
    ]
    if not args.skip_probe and not args.limit:
        random_ckpt = random_init_checkpoint(
            work / "corpus", work / "random-init.safetensors", "soundnet8", config.seed
        )
        figures["esc10_pool5_random_init"] = accuracy_of(evaluate(random_ckpt, ESC10))
        figures["esc10_pool5_distilled"] = accuracy_of(evaluate(result.student, ESC10))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
