"""`--precision` on predict, evaluate and probe, as on extract: half precision where the device
runs it natively (after the tolerance check), else fp32 with a note; bad values are usage errors."""

import json

import numpy as np
import pytest

from soundnet_cli.students import inference

from ..fakes import make_esc_tree
from ..numeric import assert_close_to_scale

CLASSES = {"low": 200.0, "mid": 1200.0, "high": 4000.0}


@pytest.fixture
def native_half(monkeypatch):
    """bf16 on this CPU: its own kernels where oneDNN has a bf16 path (AMX, AVX512-BF16, or
    emulated on AVX-512), PyTorch's reference kernels where it has none. The numbers differ
    between these, so the tests below compare with fp32 at bf16's scale, never exactly."""
    import torch

    if inference.half_supported(torch.device("cpu"), torch.bfloat16) is not None:
        monkeypatch.setattr(inference, "half_supported", lambda device, dtype: None)


@pytest.fixture
def tree(tmp_path):
    return make_esc_tree(tmp_path / "esc", CLASSES, per_class=4, folds=2, seconds=1.0)


def test_predict_in_bf16_gives_the_fp32_probabilities_closely(
    run, named_checkpoint, wav_factory, native_half
):
    clip = wav_factory("short.wav", seconds=5.0, rate=44100)
    results = {}
    for precision in ("fp32", "bf16"):
        result = run(
            "predict", str(clip), "--checkpoint", str(named_checkpoint), "--json",
            "--precision", precision,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert "using fp32" not in result.stderr
        results[precision] = json.loads(result.stdout)["results"][0]
    for ours, ref in zip(results["bf16"]["summary"], results["fp32"]["summary"], strict=True):
        for a, b in zip(ours["top"], ref["top"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], rel=5e-2)
    # Mutation guarded: predict ignoring --precision (bf16 silently off gives fp32's numbers).
    assert probabilities(results["bf16"]) != probabilities(results["fp32"])


def probabilities(result: dict) -> list[float]:
    """Every probability predict printed for one file, steps and summary."""
    heads = [h for step in result["steps"] for h in step["heads"]] + result["summary"]
    return [t["probability"] for h in heads for t in h["top"]]


def test_no_native_half_precision_is_a_note_not_an_error(
    run, named_checkpoint, wav_factory, monkeypatch, caplog
):
    monkeypatch.setattr(inference, "half_supported", lambda device, dtype: "no fp16 here")
    clip = wav_factory("short.wav", seconds=5.0)
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--precision", "fp16")
    assert result.exit_code == 0, result.stderr
    # a warning logged by the library (the CLI's logging handler prints it on stderr)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "fp16: no fp16 here; using fp32" in warnings


def test_evaluate_in_bf16_keeps_its_own_feature_cache(run, tree, named_checkpoint, native_half):
    import os
    from pathlib import Path

    reports = {}
    for precision in ("fp32", "bf16"):
        result = run(
            "evaluate", "esc50", str(tree), "--checkpoint", str(named_checkpoint), "--json",
            "--precision", precision, "--out", str(tree.parent / precision),
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        reports[precision] = json.loads(result.stdout)
    cache = Path(os.environ["SOUNDNET_HOME"]) / "cache" / "features"
    tags = sorted(p.name for p in cache.glob("*/*"))
    assert len(tags) == 2 and tags[1] == tags[0] + "-bf16"
    assert reports["bf16"]["classes"] == reports["fp32"]["classes"]


def test_probe_fit_and_predict_take_the_precision(run, tree, named_checkpoint, native_half):
    import csv

    with open(tree / "meta" / "esc50.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = tree.parent / "labels.csv"
    labels.write_text(
        "path,label,group\n"
        + "".join(f"audio/{r['filename']},{r['category']},{r['src_file']}\n" for r in rows)
    )
    probe = tree.parent / "p.npz"
    result = run(
        "probe", "fit", str(tree), "--labels", str(labels), "--out", str(probe),
        "--checkpoint", str(named_checkpoint), "--precision", "bf16",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    fp32_probe = tree.parent / "p32.npz"
    result = run(
        "probe", "fit", str(tree), "--labels", str(labels), "--out", str(fp32_probe),
        "--checkpoint", str(named_checkpoint), "--precision", "fp32",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # Mutation guarded: `probe fit` ignoring --precision (the same features, so the same probe).
    with np.load(probe) as half, np.load(fp32_probe) as full:
        assert sorted(half.files) == sorted(full.files)
        assert any(
            half[name].dtype.kind == "f" and not np.array_equal(half[name], full[name])
            for name in half.files
        )
    scores = {}
    for precision in ("fp32", "bf16"):
        result = run(
            "probe", "predict", str(fp32_probe), str(tree / "audio"), "--precision", precision,
            "--json", "--checkpoint", str(named_checkpoint),
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        predictions = json.loads(result.stdout)
        assert len(predictions) == len(rows)
        scores[precision] = np.array(
            [[p["scores"][name] for name in sorted(p["scores"])] for p in predictions]
        )
    # Mutation guarded: `probe predict` ignoring --precision (bf16 gives fp32's scores exactly).
    assert not np.array_equal(scores["bf16"], scores["fp32"])
    assert_close_to_scale(scores["bf16"], scores["fp32"], 5e-2, "bf16 probe scores")


@pytest.mark.parametrize("command", ["predict", "evaluate", "probe"])
def test_unknown_precision_is_a_usage_error(run, tree, named_checkpoint, tmp_path, command):
    args = {
        "predict": ["predict", str(tree / "audio")],
        "evaluate": ["evaluate", "esc50", str(tree), "--out", str(tmp_path / "r")],
        "probe": ["probe", "fit", str(tree), "--labels", str(tree / "meta" / "esc50.csv"),
                  "--out", str(tmp_path / "p.npz")],
    }[command]  # fmt: skip
    result = run(*args, "--checkpoint", str(named_checkpoint), "--precision", "fp8")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "Invalid value for '--precision': must be one of fp32, bf16, fp16" in message
