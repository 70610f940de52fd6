"""Probe solvers compared: time, CPU time and peak memory per layer, accuracy and agreement.

Runs the evaluation protocol of a dataset (its splits, C = 0.01, SoundNet-8 features) once per
(layer, solver), each in its own process so that peak memory is that run's alone, and writes one
``.npz`` per run (accuracies, clip decision values, timings) under ``--results``. Runs whose file
exists are not repeated, so the slow liblinear reference runs once. The summary compares the
solvers layer by layer: accuracy difference in points and the correlation of clip decision
values over every split.

    python benchmarks/probes.py esc50 ../shared/data/esc50-fold4 --results bench-probes
    python benchmarks/probes.py esc10 ../shared/data/esc10 -l pool5 --solver torch --runs 2

Features come from the evaluation cache (computed on first use); ``--features-dir`` points at
an existing cache folder instead. Wall time depends on what else runs on the machine; CPU time
(this process and its children) much less so.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = ["conv4", "conv5", "pool5", "conv6", "conv7", "conv8"]


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_bytes() -> int:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(me.ru_maxrss, kids.ru_maxrss) * 1024


def _features(args: argparse.Namespace, layer: str) -> tuple[Any, Any, list[Any], int]:
    import torch

    from soundnet_cli.evaluation.features import FeatureCache, compute_features, model_key
    from soundnet_cli.media.audio import RESAMPLER
    from soundnet_cli.models import load_student
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.probes import window_steps

    torch.manual_seed(0)
    model = load_student("soundnet8", pretrained=True, device="cpu")
    dataset = get_plugins().datasets.create(args.dataset)
    clips = dataset.clips(Path(args.root))
    protocol = dataset.protocol
    if args.features_dir:
        cache = FeatureCache(Path(args.features_dir))
    else:
        tag = f"{dataset.name}-repeat{protocol.repeat_to}-first-{RESAMPLER}"
        cache = FeatureCache(FeatureCache.default_root(model_key(model), tag))
    features = compute_features(
        model, [c.path for c in clips], [layer], repeat_to=protocol.repeat_to, cache=cache
    )
    student: Any = model
    stride = next(i.stride for i in student.feature_info if i.name == layer)
    steps = window_steps(stride, protocol.window_seconds, student.sample_rate)
    return dataset, clips, [f[layer] for f in features], steps


def run_one(args: argparse.Namespace, layer: str, solver: str, out: Path) -> None:
    """One (layer, solver) over every split; writes ``out``."""
    from soundnet_cli.probes import ClipProbe, LinearSVMProbe, build_probe

    dataset, clips, features, steps = _features(args, layer)
    labels = np.array([c.label for c in clips])
    splits = dataset.splits(clips)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    arrays: dict[str, np.ndarray] = {}
    accuracy, fits = [], []
    for n, split in enumerate(splits):
        estimator = build_probe(LinearSVMProbe, args.C, solver=solver, device=args.device)
        probe = ClipProbe(estimator, steps).fit(
            [features[i] for i in split.train], labels[split.train]
        )
        decisions = probe.decision_function([features[i] for i in split.test])
        predicted = probe.classes_[decisions.argmax(1)]
        accuracy.append(float(np.mean(predicted == labels[split.test])))
        report = probe.fit_report
        fits.append(None if report is None else report.as_dict())
        arrays[f"decisions_{n}"] = decisions
        arrays[f"test_{n}"] = np.asarray(split.test)
        arrays[f"classes_{n}"] = np.asarray(probe.classes_)
    wall = time.perf_counter() - wall
    try:  # liblinear's worker processes: reap them so that their CPU time is counted
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    except ImportError:
        pass
    meta = {
        "dataset": args.dataset,
        "layer": layer,
        "solver": solver,
        "device": args.device,
        "seconds": wall,
        "cpu_seconds": _cpu_seconds() - cpu,
        "peak_bytes": _peak_bytes(),
        "accuracy": accuracy,
        "splits": [s.name for s in splits],
        "steps": steps,
        "fits": fits,
        "converged": all(f is None or f["converged"] for f in fits),
    }
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
    print(json.dumps(meta), flush=True)


def load(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """A run's metadata and its clip decisions over every split, flattened, in split order."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        parts = [data[f"decisions_{n}"].ravel() for n in range(len(meta["accuracy"]))]
    return meta, np.concatenate(parts)  # a split may lack a class: flatten each


def summary(args: argparse.Namespace, results: Path) -> None:
    print(f"\n{args.dataset}: C={args.C}, {', '.join(args.solver)}")
    header = f"{'layer':6} {'solver':9} {'accuracy':>15} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}"
    print(header + "  converged  agreement")
    for layer in args.layer:
        runs = {}
        for solver in args.solver:
            path = results / f"{args.dataset}-{solver}-{layer}.npz"
            if path.exists():
                runs[solver] = load(path)
        for solver, (meta, _) in runs.items():
            acc = np.array(meta["accuracy"]) * 100
            line = (
                f"{layer:6} {solver:9} {acc.mean():6.1f}% ± {acc.std():4.1f} "
                f"{meta['seconds']:8.1f} {meta.get('cpu_seconds', float('nan')):8.1f} "
                f"{meta['peak_bytes'] / 2**20:8.0f}  {str(meta.get('converged')):9}"
            )
            if solver != "liblinear" and "liblinear" in runs:
                ref_meta, ref_dec = runs["liblinear"]
                diff = (np.mean(meta["accuracy"]) - np.mean(ref_meta["accuracy"])) * 100
                corr = np.corrcoef(runs[solver][1], ref_dec)[0, 1]
                line += f"  {diff:+.2f} points, r = {corr:.4f}"
            print(line)
        for run in range(2, args.runs + 1):
            again = results / f"{args.dataset}-torch-{layer}-run{run}.npz"
            first = results / f"{args.dataset}-torch-{layer}.npz"
            if again.exists() and first.exists():
                same = np.array_equal(load(again)[1], load(first)[1])
                print(
                    f"{layer:6} torch run {run}: {'identical' if same else 'DIFFERENT'} decisions"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("root")
    parser.add_argument("-l", "--layer", action="append", help="default: all six")
    parser.add_argument("--solver", action="append", choices=["torch", "liblinear"])
    parser.add_argument("--C", type=float, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=Path("bench-probes"))
    parser.add_argument("--features-dir", help="an existing feature cache folder")
    parser.add_argument("--runs", type=int, default=1, help="torch runs (2: check determinism)")
    parser.add_argument("--summary", action="store_true", help="only summarise existing runs")
    parser.add_argument(
        "--child", nargs=3, metavar=("LAYER", "SOLVER", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    args.layer = args.layer or LAYERS
    args.solver = args.solver or ["torch", "liblinear"]
    if args.child:
        run_one(args, args.child[0], args.child[1], Path(args.child[2]))
        return
    if args.summary:
        summary(args, args.results)
        return
    args.results.mkdir(parents=True, exist_ok=True)
    passthrough = [args.dataset, args.root, "--C", str(args.C), "--device", args.device]
    if args.features_dir:
        passthrough += ["--features-dir", args.features_dir]
    for layer in args.layer:
        for solver in args.solver:
            names = (
                [""] + [f"-run{n}" for n in range(2, args.runs + 1)] if solver == "torch" else [""]
            )
            for suffix in names:
                out = args.results / f"{args.dataset}-{solver}-{layer}{suffix}.npz"
                if not out.exists():
                    child = [
                        sys.executable,
                        __file__,
                        *passthrough,
                        "--child",
                        layer,
                        solver,
                        str(out),
                    ]
                    subprocess.run(child, check=True)
    summary(args, args.results)


if __name__ == "__main__":
    main()
