"""Planted end-to-end check of the CLIP path: a student distilled from unlabeled "video" answers
text (zero-shot labels, text search), and a shuffled control does not.

1. ESC-10 clips of folds 2-5 (real audio) are muxed with frames of a per-class colour (mp4).
2. An embedding teacher defined here, ``planted-clip``, maps a frame's colour to class c and
   outputs the random-weight CLIP text tower's embedding of c's default prompt ("the sound of
   dog"); the random CLIP weights are saved to a local file, which the corpus, the run and the
   student record (model, sha256), so the text side is that same text tower.
3. SoundNet-8 from its published weights (``--init official``) gets an embedding head on pool5
   and is distilled with InfoNCE on those videos.
4. ``soundnet evaluate esc10 --zero-shot --checkpoint RUN`` on fold 1 (default prompt, ensemble,
   and the linear probe on the same features), and ``search query --text "the sound of c"``
   P@5 over fold 1's features.
5. Control: the same run with the colour -> class map shuffled for the text side (the teacher of
   class c's frames outputs another class's text vector): zero-shot stays near chance.

What it shows: the whole path (teacher -> corpus -> embedding head -> text tower by identity ->
zero-shot and search) carries class information from pictures to text through sound alone.
What it does not show: anything about real CLIP semantics (the text tower is random; the
"pictures" are colours), nor accuracy on real videos.

    python benchmarks/zeroshot_esc10.py --json                # ~30 min on 2 shared CPU cores
    python benchmarks/zeroshot_esc10.py --out /tmp/zs --steps 200 --device cuda
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from distill_esc10 import ESC10, PALETTE, esc10_rows, make_paired_video  # noqa: E402

CLIP_MODEL = "ViT-B-32"


def random_clip(model: str, folder: Path, seed: int = 0):
    """A random-weight open_clip model saved to a local file, and its identity."""
    import open_clip
    import torch

    from soundnet_cli.weights.clip import ClipIdentity, file_sha256

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}-random-{seed}.pt"
    torch.manual_seed(seed)
    network = open_clip.create_model(model, pretrained=None)
    if not path.is_file():
        torch.save(network.state_dict(), path)
    visual = network.visual
    size = visual.image_size
    identity = ClipIdentity(
        model=model,
        pretrained=None,
        sha256=file_sha256(path),
        quick_gelu=False,
        image_mean=tuple(float(x) for x in visual.image_mean),
        image_std=tuple(float(x) for x in visual.image_std),
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        weights_file=str(path.resolve()),
    )
    return identity


def planted_teacher(classes: list[str], text_vectors: np.ndarray, identity) -> object:
    """Frame colour -> class -> that class's text vector (an embedding head)."""
    import torch
    from torch import nn

    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

    class ColourToText(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.palette = nn.Parameter(torch.tensor(PALETTE[: len(classes)], dtype=torch.float32))
            self.register_buffer("vectors", torch.from_numpy(text_vectors.astype(np.float32)))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            mean = pixels.mean(dim=(2, 3)) * 255
            nearest = torch.cdist(mean, self.palette).argmin(dim=1)
            return self.vectors[nearest]

    transform = FrameTransform(resize=32, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    head = TeacherHead.embedding("planted-clip", text_vectors.shape[1])
    provenance = {"weights": "palette + random CLIP text tower", "clip": identity.as_dict()}
    return Teacher("planted-clip", ColourToText(), [head], transform, provenance)


def distill_run(
    videos: list[Path], work: Path, teacher, args: argparse.Namespace
) -> tuple[Path, dict]:
    """Prepare WORK/corpus with ``teacher`` and distill WORK/run from it."""
    from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
    from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics

    started = time.perf_counter()
    settings = PrepareSettings(clip_seconds=5.0, frame_interval=2.5, batch_size=64, workers=1)
    prepare_corpus(videos, work / "corpus", [teacher], settings)
    prepared = time.perf_counter() - started
    config = DistillConfig(
        student="soundnet8",
        init=args.init,
        embedding_layer=args.layer,
        crop_seconds=5.0,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        workers=args.workers,
        held_out=0.0,
        log_every=5,
        eval_every=args.steps,
        checkpoint_every=args.steps,
    )
    started = time.perf_counter()
    distill(work / "corpus", work / "run", config)
    metrics = read_metrics(work / "run")
    figures = {
        "prepare_s": round(prepared, 1),
        "distill_s": round(time.perf_counter() - started, 1),
        "samples_per_s": round(float(np.mean([m["samples_per_s"] for m in metrics])), 2),
        "loss_first_last": [round(metrics[0]["loss"], 3), round(metrics[-1]["loss"], 3)],
    }
    return work / "run", figures


def zero_shot(run: Path, root: Path, out: Path) -> dict:
    """`soundnet evaluate esc10 --zero-shot --checkpoint RUN --json`, the fold-1 split."""
    done = subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "evaluate", "esc10", str(root), "--zero-shot",
         "--checkpoint", str(run), "--json", "--no-cache", "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"evaluate --zero-shot failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    (fold1,) = [s for s in report["splits"] if s["split"] == "fold 1"]
    return fold1


def text_search(run: Path, rows: list[dict], features: Path) -> float:
    """Extract fold 1 at the embedding layer, then P@5 of `search query --text` per class."""
    from soundnet_cli.search.text import query_text
    from soundnet_cli.teachers.text import DEFAULT_PROMPT, class_text

    fold1 = features.parent / "fold1-audio"
    fold1.mkdir(parents=True, exist_ok=True)
    label = {}
    for r in rows:
        link = fold1 / r["filename"]
        if not link.exists():
            link.symlink_to(r["path"])
        label[Path(r["filename"]).stem] = r["category"]
    done = subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "extract", str(fold1), "--out", str(features),
         "--checkpoint", str(run / "student.safetensors"), "--layer", "pool5"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"extract failed: {done.stderr[-2000:]}")
    precisions = []
    for category in sorted(set(label.values())):
        text = DEFAULT_PROMPT.format(class_text(category))
        hits = query_text(features, text, k=5).hits
        precisions.append(np.mean([label[h.key] == category for h in hits]))
    return float(np.mean(precisions))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--layer", default="pool5")
    parser.add_argument("--init", default="official")
    parser.add_argument("--clip-model", default=CLIP_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--esc10",
        type=Path,
        default=Path(os.environ.get("SOUNDNET_ESC10", ESC10)),
        help="an ESC-50 layout with ESC-10 [$SOUNDNET_ESC10, else ../shared/data/esc10]",
    )
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep DIR/run, DIR/features")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from soundnet_cli.teachers.text import DEFAULT_PROMPT, TextEncoder, class_text

    began = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="zeroshot-esc10-"))
    rows = esc10_rows(args.esc10)
    classes = sorted({r["category"] for r in rows})
    train = [r for r in rows if r["fold"].strip() != "1"]
    test = [r for r in rows if r["fold"].strip() == "1"]
    identity = random_clip(args.clip_model, out / "clip")
    text = TextEncoder(identity).labels([class_text(c) for c in classes], [DEFAULT_PROMPT])
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos = []
    for i, r in enumerate(train):  # kept from an earlier run into the same --out
        video = out / "videos" / f"{Path(r['filename']).stem}.mp4"
        if not video.is_file():
            make_paired_video(Path(r["path"]), video, PALETTE[classes.index(r["category"])], seed=i)
        videos.append(video)
    figures: dict = {"clips_train": len(train), "clips_fold1": len(test), "out": str(out)}
    run, trained = distill_run(videos, out, planted_teacher(classes, text, identity), args)
    figures["main"] = trained
    fold1 = zero_shot(run, args.esc10, out / "evaluate")
    figures["zero_shot"] = fold1["zero_shot"]
    figures["zero_shot_ensemble"] = fold1["zero_shot_ensemble"]
    figures["probe"] = fold1["probe"]
    figures["text_p_at_5"] = text_search(run, test, out / "features")
    if not args.skip_control:
        rng = np.random.default_rng(1)
        while True:  # a derangement: no class keeps its own text
            order = rng.permutation(len(classes))
            if not np.any(order == np.arange(len(classes))):
                break
        shuffled = planted_teacher(classes, text[order], identity)
        control_run, control_figures = distill_run(videos, out / "control", shuffled, args)
        figures["control_run"] = control_figures
        figures["control"] = zero_shot(control_run, args.esc10, out / "evaluate-control")[
            "zero_shot"
        ]
    figures["seconds"] = round(time.perf_counter() - began, 1)
    if args.json:
        print(json.dumps(figures))
    else:
        print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
