"""ESC-10 with the mfcc student and a linear SVM, written with scikit-learn alone.

A cross-check for `soundnet evaluate esc10 ROOT --student mfcc`, following PAPER.md's protocol:
each 5-s clip is repeated to 10 s, the layer's sequence is cut into 1-s windows (sliding by one
step), a linear SVM (one-vs-rest, L2 loss) trains on windows, a test clip's decision values are
averaged over its windows, and accuracy is the mean over the 5 folds.

    python plugins/soundnet-mfcc/examples/esc10_svm.py ../shared/data/esc10 [--layer summary]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from soundnet_mfcc.student import MfccStudent

from soundnet_cli.media.audio import load_audio, tile
from soundnet_cli.students import feature_of


def windows(features: np.ndarray, steps: int) -> np.ndarray:
    """(channels, time) -> (windows, channels * steps), sliding by one step."""
    count = features.shape[1] - steps + 1
    return np.stack([features[:, i : i + steps].ravel() for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--layer", default="summary")
    parser.add_argument("--C", type=float, default=0.01)
    parser.add_argument("--standardize", action="store_true")
    args = parser.parse_args()

    with open(args.root / "meta" / "esc50.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["esc10"] == "True"]
    model = MfccStudent().eval()
    info = feature_of(model, args.layer)
    steps = max(1, round(model.sample_rate / info.stride))
    start = time.perf_counter()
    clips = []
    with torch.inference_mode():
        for row in rows:
            wave = load_audio(args.root / "audio" / row["filename"]).samples
            wave = tile(wave, 10 * model.sample_rate)
            feats = model.forward_features(torch.from_numpy(wave), [args.layer])[args.layer]
            clips.append(windows(feats[0].numpy(), steps))
    seconds = time.perf_counter() - start
    labels = np.array([int(r["target"]) for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    accuracies = []
    for fold in sorted(set(folds)):
        train = [i for i in range(len(rows)) if folds[i] != fold]
        test = [i for i in range(len(rows)) if folds[i] == fold]
        x = np.concatenate([clips[i] for i in train])
        y = np.concatenate([[labels[i]] * len(clips[i]) for i in train])
        svm = LinearSVC(C=args.C, loss="squared_hinge", max_iter=20000)
        probe = make_pipeline(StandardScaler(), svm) if args.standardize else svm
        probe.fit(x, y)
        classes = probe.classes_
        predicted = [classes[probe.decision_function(clips[i]).mean(axis=0).argmax()] for i in test]
        accuracies.append(float(np.mean(np.array(predicted) == labels[test])))
    print(
        f"mfcc/{args.layer} ESC-10, C={args.C}, standardize={args.standardize}: "
        f"{100 * np.mean(accuracies):.1f}% +- {100 * np.std(accuracies):.1f} "
        f"(folds {', '.join(f'{100 * a:.1f}' for a in accuracies)}); "
        f"features for {len(rows)} clips in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
