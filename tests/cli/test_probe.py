import csv
import json

import numpy as np
import pytest

from ..fakes import make_esc_tree

CLASSES = {"low": 200.0, "mid": 1200.0, "high": 4000.0}


@pytest.fixture
def labeled(tmp_path):
    root = make_esc_tree(tmp_path / "esc", CLASSES, per_class=4, folds=2, seconds=1.0)
    with open(root / "meta" / "esc50.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,group\n"
        + "".join(f"audio/{r['filename']},{r['category']},{r['src_file']}\n" for r in rows)
    )
    return root, labels


def test_fit_then_predict(run, labeled, named_checkpoint, tmp_path):
    root, labels = labeled
    probe = tmp_path / "tones.probe.npz"
    fitted = run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(labels),
        "--out",
        str(probe),
        "--checkpoint",
        str(named_checkpoint),
        "--C",
        "1",
        "--json",
    )
    assert fitted.exit_code == 0, fitted.stderr
    meta = json.loads(fitted.stdout)
    assert meta["classes"] == ["high", "low", "mid"] and meta["features"]["layer"] == "pool5"
    assert meta["window_steps"] == 3 and meta["trained_on"] == 12
    predicted = run("probe", "predict", str(probe), str(root / "audio"), "--json")
    assert predicted.exit_code == 0, predicted.stderr
    results = json.loads(predicted.stdout)
    truth = dict(line.split(",")[:2] for line in labels.read_text().splitlines()[1:])
    correct = [r["label"] == truth["audio/" + r["path"].rsplit("/", 1)[-1]] for r in results]
    assert len(results) == 12 and np.mean(correct) >= 0.9
    assert set(results[0]["scores"]) == {"high", "low", "mid"}
    table = run("probe", "predict", str(probe), str(root / "audio"))
    assert table.exit_code == 0 and "runner-up" in table.stdout


def test_auto_c_and_logreg(run, labeled, named_checkpoint, tmp_path):
    root, labels = labeled
    result = run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "p.npz"),
        "--checkpoint",
        str(named_checkpoint),
        "--C",
        "auto",
        "--probe",
        "logreg",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["probe"] == "logreg" and meta["C_requested"] == "auto"


def test_tampered_probe_fails_clearly(run, labeled, named_checkpoint, tmp_path):
    root, labels = labeled
    probe = tmp_path / "p.npz"
    run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(labels),
        "--out",
        str(probe),
        "--checkpoint",
        str(named_checkpoint),
    )
    data = bytearray(probe.read_bytes())
    data[len(data) // 2] ^= 0xFF
    probe.write_bytes(bytes(data))
    result = run("probe", "predict", str(probe), str(root / "audio"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "probe" in result.stderr
    assert "Traceback" not in result.stderr


def test_probe_refuses_another_model(run, labeled, named_checkpoint, tmp_path):
    import torch

    from soundnet_cli.students import HeadSpec, soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    root, labels = labeled
    probe = tmp_path / "p.npz"
    run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(labels),
        "--out",
        str(probe),
        "--checkpoint",
        str(named_checkpoint),
    )
    torch.manual_seed(9)
    other = save_checkpoint(soundnet8(heads=(HeadSpec("x", 2),)), tmp_path / "other.safetensors")
    result = run("probe", "predict", str(probe), str(root / "audio"), "--checkpoint", str(other))
    assert result.exit_code == 1 and "trained on features of" in result.stderr


def test_labels_problems(run, labeled, named_checkpoint, tmp_path):
    root, _ = labeled
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx.wav,a\n")
    result = run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(bad),
        "--out",
        str(tmp_path / "p"),
        "--checkpoint",
        str(named_checkpoint),
    )
    assert result.exit_code == 2 and "no path column" in result.stderr
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nnope.wav,a\nnope2.wav,b\n")
    result = run(
        "probe",
        "fit",
        str(root),
        "--labels",
        str(missing),
        "--out",
        str(tmp_path / "p"),
        "--checkpoint",
        str(named_checkpoint),
    )
    assert result.exit_code == 1 and "nope.wav not found" in result.stderr


def test_a_fit_beyond_the_memory_budget_is_refused_before_any_feature(
    run, labeled, named_checkpoint, tmp_path, monkeypatch
):
    """conv2 with 1-s windows is 22,049 weights: over a small --max-memory it is refused in
    one line saying which windows fit, before a single clip is decoded."""
    from soundnet_cli.evaluation import probing

    def never(*args, **kwargs):
        raise AssertionError("features were computed")

    monkeypatch.setattr(probing, "compute_features", never)
    root, labels = labeled
    out = tmp_path / "p.npz"
    args = ("probe", "fit", str(root), "--labels", str(labels), "--out", str(out))
    result = run(*args, "--checkpoint", str(named_checkpoint), "--layer", "conv2",
                 "--max-memory", "256M")  # fmt: skip
    assert result.exit_code == 1, result.stdout
    message = " ".join(result.stderr.split())
    assert message.startswith("Error: a torch probe fit on conv2 with 689-step windows")
    assert "22,049 weights" in message and "256.0 MB budget (--max-memory)" in message
    assert "windows of at most" in message and "unexpected" not in message
    assert len(result.stderr.strip().splitlines()) <= 3 and not out.exists()
    bad = run(*args, "--checkpoint", str(named_checkpoint), "--max-memory", "lots")
    assert bad.exit_code == 2 and "--max-memory" in bad.stderr
