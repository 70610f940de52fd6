"""`soundnet visualize filters | units | tsne | curves`: files written, JSON summaries, exit
codes; offline, with a random student and tiny synthetic clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ..conftest import tone, write_wav

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def said(text: str, message: str) -> bool:
    """``message`` is in ``text`` once rich's wrapping and error box are undone."""
    flat = "".join(text.replace("│", "").split())
    return "".join(message.split()) in flat


@pytest.mark.parametrize("command", ["filters", "units", "tsne", "curves"])
def test_help_has_examples(run, command):
    result = run("visualize", command, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout


def test_filters_of_a_fresh_student(run, tmp_path):
    result = run(
        "visualize", "filters", "--student", "soundnet5", "-o", str(tmp_path / "f.png"), "--json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["filters"] == 32 and summary["taps"] == 64 and len(summary["peak_hz"]) == 32
    assert (tmp_path / "f.png").read_bytes().startswith(PNG_MAGIC)


def test_filters_of_a_checkpoint_is_deterministic(run, tmp_path, named_checkpoint):
    for name in ("a.png", "b.png"):
        target = str(tmp_path / name)
        result = run("visualize", "filters", "--checkpoint", str(named_checkpoint), "-o", target)
        assert result.exit_code == 0, result.stderr
        assert "16 filters" in result.stdout
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    for i, freq in enumerate((300.0, 1200.0, 4000.0)):
        write_wav(folder / f"c{i}" / f"tone{i}.wav", tone(1.5, freq=freq))
    (folder / "labels.csv").write_text(
        "path,label\nc0/tone0.wav,low\nc1/tone1.wav,mid\nc2/tone2.wav,high\n"
    )
    return folder


def test_units_page_and_json(run, tmp_path, clips, named_checkpoint):
    out = tmp_path / "report"
    result = run(
        "visualize", "units", str(clips), "--checkpoint", str(named_checkpoint),
        "--layer", "conv5", "--top-units", "2", "--k", "2", "--labels",
        str(clips / "labels.csv"), "--out", str(out), "--json", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layer"] == "conv5" and summary["clips"] == 3 and summary["k"] == 2
    assert len(summary["units"]) == 2 and summary["heads"] == ["objects", "scenes"]
    for unit in summary["units"]:
        assert len(unit["top"]) == 2
        for hit in unit["top"]:
            assert hit["label"] in {"low", "mid", "high"}
            assert 0.0 <= hit["time"] <= 1.5 and hit["excerpt"][0] <= hit["time"]
            assert set(hit["predictions"]) == {"objects", "scenes"}
            assert hit["predictions"]["scenes"]["label"] in {"beach", "forest"}
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == page.count("<audio") == 4
    assert json.loads((out / "units.json").read_text())["units"] == summary["units"]


def test_units_chosen_by_number_with_a_table(run, tmp_path, clips, named_checkpoint):
    result = run(
        "visualize", "units", str(clips), "--checkpoint", str(named_checkpoint),
        "--layer", "conv5", "--units", "3,1", "--k", "1", "-o", str(tmp_path / "r"),
        "--excerpt-seconds", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert said(result.stdout, "conv5: top units") and "wrote" in result.stdout
    summary = json.loads((tmp_path / "r" / "units.json").read_text())
    assert [u["unit"] for u in summary["units"]] == [3, 1]
    start, end = summary["units"][0]["top"][0]["excerpt"]
    assert end - start == pytest.approx(0.5, abs=1e-3)


def test_units_of_a_model_without_category_names_skip_predictions(run, tmp_path, clips):
    result = run(
        "visualize", "units", str(clips / "c0"), "--student", "soundnet5", "--layer", "conv4",
        "--top-units", "1", "--k", "1", "-o", str(tmp_path / "r"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["heads"] == [] and summary["units"][0]["top"][0]["predictions"] == {}


def test_units_carry_on_past_a_bad_file_and_exit_1(run, tmp_path, clips, named_checkpoint):
    (clips / "broken.wav").write_bytes(b"not audio")
    result = run(
        "visualize", "units", str(clips), "--checkpoint", str(named_checkpoint),
        "--layer", "conv5", "--top-units", "1", "--k", "1", "-o", str(tmp_path / "r"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert said(result.stderr, "broken.wav")
    summary = json.loads((tmp_path / "r" / "units.json").read_text())
    assert summary["clips"] == 3 and summary["errors"][0]["path"].endswith("broken.wav")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "conv99"], "no layer 'conv99'"),
        (["--layer", "conv5", "--units", "256"], "unit 256 does not exist"),
        (["--units", "a,b"], "--units takes unit numbers"),
        (["--mix", "left"], "'--mix': must be one of"),
    ],
)
def test_units_usage_errors_exit_2(run, tmp_path, clips, named_checkpoint, extra, message):
    result = run(
        "visualize", "units", str(clips), "--checkpoint", str(named_checkpoint),
        "-o", str(tmp_path / "r"), *extra,
    )  # fmt: skip
    assert result.exit_code == 2
    assert said(result.stderr, message)


def _features(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["filename,category"]
    for i in range(9):
        group = ("dog", "rain", "sea")[i % 3]
        target = folder / "audio" / f"{group}{i}.pool5.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, (rng.normal(size=(3, 16)) + 4 * (i % 3)).astype(np.float32))
        rows.append(f"audio/{group}{i}.ogg,{group}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_tsne_png_and_json_are_deterministic(run, tmp_path):
    feats = _features(tmp_path / "feats")
    outputs = []
    for name in ("a.png", "b.png"):
        result = run(
            "visualize", "tsne", str(feats), "--labels", str(feats / "labels.csv"),
            "--out", str(tmp_path / name), "--seed", "1", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        outputs.append(json.loads(result.stdout))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert outputs[0]["points"] == outputs[1]["points"]
    assert outputs[0]["clips"] == 9 and outputs[0]["layer"] == "pool5"
    assert {p["label"] for p in outputs[0]["points"]} == {"dog", "rain", "sea"}


def test_tsne_text_output_and_missing_folder(run, tmp_path):
    feats = _features(tmp_path / "feats")
    result = run("visualize", "tsne", str(feats), "-o", str(tmp_path / "t.png"))
    assert result.exit_code == 0 and said(result.stdout, "9 clips")
    result = run("visualize", "tsne", str(tmp_path / "nope"), "-o", str(tmp_path / "t.png"))
    assert result.exit_code == 2 and said(result.stderr, "no such features folder")


def test_curves_png_and_json(run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"step": s, "loss": 10.0 / s, "heads": {"objects": 0.1 / s}, "samples_per_s": 4.0}
        for s in range(1, 6)
    ]
    rows[-1]["agreement"] = {"objects": 0.25}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("visualize", "curves", str(run_dir), "-o", str(tmp_path / "c.png"), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 5 and summary["loss"]["last"] == {"step": 5, "value": 2.0}
    assert summary["agreement"] == {"objects": {"step": 5, "value": 0.25}}
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    result = run("visualize", "curves", str(tmp_path), "-o", str(tmp_path / "c.png"))
    assert result.exit_code == 2 and said(result.stderr, "no metrics.jsonl here")
