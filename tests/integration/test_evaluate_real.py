"""The paper's ESC protocol with the official SoundNet-8 on the real clips in ../shared/data,
checked against an independent computation with scikit-learn written here."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.svm import LinearSVC

from soundnet_cli.evaluation.protocol import evaluate
from soundnet_cli.media.audio import load_audio
from soundnet_cli.plugins import get_plugins

from ..conftest import SHARED_DATA, missing


def dataset_root(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "meta" / "esc50.csv").is_file():
        missing(f"real audio not found: {root} (see ../shared/data/README.md)")
    return root


def independent_accuracy(model, root: Path, esc10: bool) -> float:
    """pool5 of each clip repeated to 10 s; 3-step (1 s) windows sliding by one step; a
    one-vs-rest L2-loss SVM with C = 0.01; a clip's decision values averaged over its windows;
    leave one fold out, or 5 grouped stratified splits when one fold is present."""
    from sklearn.model_selection import StratifiedGroupKFold

    with open(root / "meta" / "esc50.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if not esc10 or r["esc10"] == "True"]
    feats = []
    for row in rows:
        wave = load_audio(root / "audio" / row["filename"]).samples
        wave = np.resize(wave, 220500)  # np.resize repeats the array circularly
        with torch.inference_mode():
            pool5 = model.forward_features(torch.from_numpy(wave), ["pool5"])["pool5"][0]
        x = pool5.T.numpy()  # (time, 256)
        feats.append(np.stack([x[t : t + 3].reshape(-1) for t in range(len(x) - 2)]))
    labels = np.array([r["category"] for r in rows])
    folds = np.array([r["fold"] for r in rows])
    if len(set(folds)) > 1:
        splits = [
            (np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in sorted(set(folds))
        ]
    else:
        groups = np.array([r["src_file"] for r in rows])
        splits = list(StratifiedGroupKFold(5).split(labels, labels, groups))
    accuracies = []
    for train, test in splits:
        X = np.concatenate([feats[i] for i in train])
        y = np.concatenate([[labels[i]] * len(feats[i]) for i in train])
        svm = LinearSVC(C=0.01, loss="squared_hinge", dual=False).fit(X, y)
        scores = np.stack([svm.decision_function(feats[i]).mean(0) for i in test])
        accuracies.append(np.mean(svm.classes_[scores.argmax(1)] == labels[test]))
    return float(np.mean(accuracies))


@pytest.mark.parametrize("name,dataset", [("esc10", "esc10"), ("esc50-fold4", "esc50")])
def test_evaluate_matches_an_independent_computation(official_model, name, dataset):
    root = dataset_root(name)
    report = evaluate(
        get_plugins().datasets.create(dataset),
        root,
        official_model,
        ["pool5"],
        C=0.01,
        use_cache=False,
    )
    ours, _ = report.layer_summary("pool5")
    reference = independent_accuracy(official_model, root, esc10=dataset == "esc10")
    print(f"{name}: soundnet evaluate {ours:.1%}, independent {reference:.1%}")
    assert abs(ours - reference) <= 0.01
    assert ours > 0.6  # far above chance (10% / 2%): the features carry the classes


def test_probe_fit_and_predict_reproduce_the_evaluation(official_home, tmp_path):
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app
    from soundnet_cli.models import load_student

    root = dataset_root("esc10")
    report = evaluate(
        get_plugins().datasets.create("esc10"),
        root,
        load_student("soundnet8", pretrained=True),
        ["pool5"],
        C=0.01,
    )
    fold1 = next(r for r in report.results if r.split == "fold 1")
    with open(root / "meta" / "esc50.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = tmp_path / "train.csv"
    labels.write_text(
        "filename,category,src_file\n"
        + "".join(
            f"audio/{r['filename']},{r['category']},{r['src_file']}\n"
            for r in rows
            if r["fold"] != "1"
        )
    )
    runner, app = CliRunner(), build_app()
    fitted = runner.invoke(
        app,
        [
            "probe",
            "fit",
            str(root),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "esc10.probe.npz"),
        ],
    )
    assert fitted.exit_code == 0, fitted.stderr
    test_files = [p for p, _, _ in fold1.predictions]
    predicted = runner.invoke(
        app, ["probe", "predict", str(tmp_path / "esc10.probe.npz"), *test_files, "--json"]
    )
    assert predicted.exit_code == 0, predicted.stderr
    import json

    labels_out = [r["label"] for r in json.loads(predicted.stdout)]
    assert labels_out == [q for _, _, q in fold1.predictions]
