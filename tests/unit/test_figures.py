"""Figures: readable content, byte-identical PNGs for equal inputs and seeds, tolerant readers;
the unit scan's top-k bookkeeping and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.datasets.labels import LabelMap, read_label_map
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.visualize.figures import (
    assign_labels,
    confusion_matrix_png,
    curves_png,
    filters_png,
    first_layer_filters,
    load_feature_folder,
    log_spectrogram,
    peak_frequencies,
    read_curves,
    spectrogram_png,
    tsne_embedding,
    tsne_png,
)
from soundnet_cli.visualize.units import (
    Hit,
    Unit,
    UnitScan,
    UnitsReport,
    choose_units,
    excerpt_window,
    wrapped_features,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATE = 22050


def _gabor(freq: float, taps: int = 64) -> np.ndarray:
    t = np.arange(taps) / RATE
    return np.hanning(taps) * np.sin(2 * np.pi * freq * t)


def test_confusion_matrix_is_still_importable_from_figures(tmp_path):
    path = confusion_matrix_png(np.eye(2, dtype=int), ["a", "b"], tmp_path / "c.png", "t")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_filter_peaks_are_found_at_their_frequency():
    filters = np.stack([_gabor(f) for f in (1000.0, 3000.0, 6000.0)])
    assert np.allclose(peak_frequencies(filters, RATE), [1000.0, 3000.0, 6000.0], atol=400)


def test_filters_png_is_byte_identical_for_equal_weights(tmp_path):
    weights = np.random.default_rng(0).normal(size=(16, 64))
    first = filters_png(weights, RATE, tmp_path / "a.png", "conv1")
    second = filters_png(weights, RATE, tmp_path / "b.png", "conv1")
    assert first.read_bytes().startswith(PNG_MAGIC)
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob(".*.part"))  # written atomically, nothing left behind


def test_first_layer_filters_of_a_student():
    from soundnet_cli.students import soundnet5, soundnet8

    assert first_layer_filters(soundnet8()).shape == (16, 64)
    assert first_layer_filters(soundnet5()).shape == (32, 64)


def test_spectrogram_of_a_tone_peaks_at_its_bin():
    t = np.arange(RATE) / RATE
    decibels, seconds, top = log_spectrogram(np.sin(2 * np.pi * 2000 * t) * 256, RATE)
    assert seconds == pytest.approx(1.0) and top == RATE / 2
    peak_hz = decibels.mean(axis=1).argmax() * top / (decibels.shape[0] - 1)
    assert abs(peak_hz - 2000) < 60
    png = spectrogram_png(np.sin(2 * np.pi * 2000 * t) * 256, RATE, marker=0.5, title="x")
    assert png.startswith(PNG_MAGIC)


# -- t-SNE -------------------------------------------------------------------------------------
def _feature_folder(root: Path, layers=("pool5",), clips: int = 9) -> list[str]:
    rng = np.random.default_rng(1)
    keys = []
    for i in range(clips):
        key = f"{'dogs' if i % 3 == 0 else 'rain' if i % 3 == 1 else 'sea'}/clip{i}"
        keys.append(key)
        for layer in layers:
            target = root / f"{key}.{layer}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, (rng.normal(size=(4, 8)) + 3 * (i % 3)).astype(np.float32))
    return keys


def test_feature_folder_is_mean_pooled_per_clip(tmp_path):
    keys = _feature_folder(tmp_path)
    loaded = load_feature_folder(tmp_path)
    assert loaded.layer == "pool5" and loaded.keys == sorted(keys)
    first = np.load(tmp_path / f"{loaded.keys[0]}.pool5.npy")
    assert np.allclose(loaded.vectors[0], first.mean(axis=0))


def test_feature_folder_with_several_layers_needs_a_layer(tmp_path):
    _feature_folder(tmp_path, layers=("pool5", "conv7"))
    with pytest.raises(UsageProblem, match=r"choose a layer \(layers: conv7, pool5\)") as caught:
        load_feature_folder(tmp_path)
    assert caught.value.parameter == "layer"  # the CLI names its --layer
    assert load_feature_folder(tmp_path, "conv7").layer == "conv7"
    with pytest.raises(UsageProblem, match="no features for layer 'conv3'"):
        load_feature_folder(tmp_path, "conv3")


def test_feature_folder_reads_pooled_npy_and_npz(tmp_path):
    np.save(tmp_path / "a.pool5.npy", np.ones(8, np.float32))  # extract --pool mean
    np.savez(tmp_path / "b.npz", pool5=np.zeros((3, 8), np.float32), pool5_times=np.arange(3.0))
    loaded = load_feature_folder(tmp_path, "pool5")
    assert loaded.keys == ["a", "b"]
    assert loaded.vectors.tolist() == [[1.0] * 8, [0.0] * 8]


def test_labels_match_with_or_without_extensions(tmp_path):
    keys = _feature_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    rows = ["filename,category"] + [f"{k}.ogg,{k.split('/')[0]}" for k in keys[:-1]]
    csv_path.write_text("\n".join(rows) + "\n")
    loaded = load_feature_folder(tmp_path)
    labels = assign_labels(loaded, read_label_map(csv_path, tmp_path))
    assert labels[:-1] == [k.split("/")[0] for k in loaded.keys[:-1]]
    assert labels[-1] == "(no label)"


def test_label_map_lookup_by_name_when_unambiguous():
    labels = LabelMap([("audio/x/1-1-A-0.ogg", "dog"), ("a/same.wav", "p"), ("b/same.wav", "q")])
    assert labels.lookup("1-1-A-0") == "dog"
    assert labels.lookup("other/1-1-A-0.wav") == "dog"
    assert labels.lookup("a/same") == "p"
    assert labels.lookup("c/same") is None  # two rows named same.wav with different labels


def test_label_csv_without_known_columns_is_a_usage_problem(tmp_path):
    bad = tmp_path / "l.csv"
    bad.write_text("name,kind\nx,y\n")
    with pytest.raises(UsageProblem, match="path column"):
        read_label_map(bad)


def test_tsne_is_deterministic_for_a_seed(tmp_path):
    _feature_folder(tmp_path / "f", clips=12)
    loaded = load_feature_folder(tmp_path / "f")
    labels = [k.split("/")[0] for k in loaded.keys]
    first = tsne_embedding(loaded.vectors, seed=3)
    assert first.shape == (12, 2)
    assert np.array_equal(first, tsne_embedding(loaded.vectors, seed=3))
    a = tsne_png(first, labels, tmp_path / "a.png", "map")
    b = tsne_png(tsne_embedding(loaded.vectors, seed=3), labels, tmp_path / "b.png", "map")
    assert a.read_bytes() == b.read_bytes()
    # the three groups are far apart in feature space, so they stay apart on the map
    centres = {g: first[np.array(labels) == g].mean(axis=0) for g in set(labels)}
    spread = max(np.linalg.norm(first[i] - centres[g]) for i, g in enumerate(labels))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in centres for b in centres if a < b]
    assert min(gaps) > spread


def test_tsne_needs_three_clips():
    with pytest.raises(UsageProblem, match="at least 3"):
        tsne_embedding(np.zeros((2, 4)))


# -- curves ------------------------------------------------------------------------------------
def _metrics(path: Path) -> Path:
    rows = [
        {"step": 1, "loss": 9.0, "heads": {"objects": 0.04, "scenes": 0.03}, "samples_per_s": 5},
        {"step": 2, "loss": 7.0, "heads": {"objects": 0.03, "scenes": 0.02}, "samples_per_s": 6},
        {"step": 2, "loss": 6.5, "heads": {"objects": 0.02, "scenes": 0.02}, "samples_per_s": 6},
        {"step": 3, "loss": 5.0, "agreement": {"objects": 0.4, "scenes": 0.5}},
    ]
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo'  # cut short
    (path / "metrics.jsonl").write_text(text)
    return path


def test_curves_reader_tolerates_missing_columns_and_cut_lines(tmp_path):
    curves = read_curves(_metrics(tmp_path / "run"))
    assert curves.steps == [1, 2, 3]
    assert curves.loss == [(1, 9.0), (2, 6.5), (3, 5.0)]  # a resumed run's later row wins
    assert curves.heads["objects"] == [(1, 0.04), (2, 0.02)]
    assert curves.agreement == {"objects": [(3, 0.4)], "scenes": [(3, 0.5)]}
    assert curves.throughput == [(1, 5.0), (2, 6.0)]
    summary = curves.summary()
    assert summary["loss"]["last"] == {"step": 3, "value": 5.0} and summary["loss"]["min"] == 5.0


def test_curves_png_is_deterministic_even_with_empty_panels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    a = curves_png(read_curves(run), tmp_path / "a.png", "run")
    b = curves_png(read_curves(run / "metrics.jsonl"), tmp_path / "b.png", "run")
    assert a.read_bytes().startswith(PNG_MAGIC) and a.read_bytes() == b.read_bytes()


def test_curves_of_a_fine_tuning_run_say_so(tmp_path, monkeypatch):
    """A run folder written by `soundnet finetune` (its config names a task) is labelled as
    fine-tuning, not as a distillation against a teacher."""
    from soundnet_cli.visualize.figures import curves as curves_module

    distill = _metrics(tmp_path / "distill")
    (distill / "config.json").write_text(json.dumps({"corpus": "c", "config": {}}))
    finetune = _metrics(tmp_path / "finetune")
    (finetune / "config.json").write_text(json.dumps({"task": {"head": "esc10"}, "config": {}}))
    assert read_curves(distill).kind == "distillation"
    assert read_curves(finetune / "metrics.jsonl").kind == "fine-tuning"
    assert read_curves(finetune).summary()["kind"] == "fine-tuning"

    titles: list[str] = []
    real_pyplot = curves_module._pyplot

    def spying_pyplot():
        plt = real_pyplot()
        original = plt.Axes.set_title

        def set_title(ax, label, *args, **kwargs):
            titles.append(label)
            return original(ax, label, *args, **kwargs)

        monkeypatch.setattr(plt.Axes, "set_title", set_title)
        return plt

    monkeypatch.setattr(curves_module, "_pyplot", spying_pyplot)
    curves_png(read_curves(finetune), tmp_path / "f.png", "run")
    assert "accuracy on the test clips" in titles
    assert not any("teacher" in title for title in titles), titles


def test_curves_without_metrics_is_a_usage_problem(tmp_path):
    with pytest.raises(UsageProblem, match="metrics.jsonl"):
        read_curves(tmp_path)


# -- units -------------------------------------------------------------------------------------
def test_unit_scan_keeps_each_units_top_clips_and_peak_times():
    scan = UnitScan(channels=2, k=2)
    times = np.array([0.5, 1.5, 2.5])
    scan.add(0, np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.1]]), times)
    scan.add(1, np.array([[5.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), times)
    scan.add(2, np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.1]]), times)
    assert scan.values[0].tolist() == [5.0, 4.0] and scan.clips[0].tolist() == [1, 2]
    assert scan.times[0].tolist() == [0.5, 2.5]
    assert scan.clips[1].tolist() == [0, 2]  # a tie keeps the earlier clip first
    assert scan.count == 3


def test_selective_units_are_chosen_first():
    scan = UnitScan(channels=3, k=1)
    rng = np.random.default_rng(0)
    for clip in range(20):
        features = np.stack([rng.uniform(0.9, 1.1, 4), np.zeros(4), rng.uniform(0, 1, 4)], axis=1)
        if clip == 7:
            features[2, 1] = 10.0  # unit 1 fires for one clip only
        scan.add(clip, features, np.arange(4.0))
    assert choose_units(scan, None, 2)[0] == 1
    assert choose_units(scan, [2, 0, 2], 5) == [2, 0]
    with pytest.raises(UsageProblem, match="unit 3 does not exist"):
        choose_units(scan, [3], 1)


def test_excerpt_window_stays_inside_the_clip():
    assert excerpt_window(2.5, 5.0, 2.0) == (1.5, 3.5)
    assert excerpt_window(0.2, 5.0, 2.0) == (0.0, 2.0)
    assert excerpt_window(4.9, 5.0, 2.0) == (3.0, 5.0)
    assert excerpt_window(1.0, 1.5, 4.0) == (0.0, 1.5)


def test_wrapped_features_see_only_the_clip():
    from soundnet_cli.students import soundnet8

    model = soundnet8()
    samples = np.random.default_rng(0).normal(size=3 * RATE).astype(np.float32)
    features, times = wrapped_features(model, samples, "conv6")
    info = model.feature("conv6")
    assert features.shape[1] == info.channels and len(features) == len(times) > 0
    assert (times >= 0).all() and (times < 3.0).all()


def _report(hits: list[Hit]) -> UnitsReport:
    return UnitsReport(
        layer="conv7",
        model="m",
        channels=4,
        k=2,
        excerpt_seconds=1.0,
        clips=2,
        heads=["scenes"],
        units=[Unit(3, 2.5, 0.1, hits)],
        failures=[],
    )


def test_units_page_embeds_images_and_audio_and_escapes_names(tmp_path):
    from soundnet_cli.visualize.report import render_units_page, write_units_page

    hit = Hit(
        "a/<b>.wav", "a/<b>.wav", 1.0, 0.5, 0.5, 1.5, "dog",
        {"scenes": {"label": "beach", "probability": 0.3}}, PNG_MAGIC + b"x", b"fLaC",
    )  # fmt: skip
    page = render_units_page(_report([hit]))
    assert "data:image/png;base64," in page and "data:audio/flac;base64," in page
    assert "&lt;b&gt;" in page and "<b>.wav" not in page
    assert 'id="unit-3"' in page and "beach" in page and "dog ×1" in page
    assert write_units_page(_report([hit]), tmp_path / "r" / "index.html").is_file()


def test_unit_summary_counts_labels_and_predictions():
    hits = [
        Hit("p", "p", 0, 1, 0, 1, "dog", {"scenes": {"label": "kennel", "probability": 0.2}}),
        Hit("q", "q", 0, 1, 0, 1, "dog", {"scenes": {"label": "yard", "probability": 0.2}}),
        Hit("r", "r", 0, 1, 0, 1, "rain", {"scenes": {"label": "yard", "probability": 0.2}}),
    ]
    unit = _report(hits).units[0]
    assert unit.label_counts() == [("dog", 2), ("rain", 1)]
    assert unit.prediction_counts("scenes") == [("yard", 2), ("kennel", 1)]
    assert unit.as_dict()["labels"] == {"dog": 2, "rain": 1}


def test_first_layer_filters_needs_a_waveform_conv():
    from torch import nn

    with pytest.raises(SoundnetError, match="no 1-D convolution"):
        first_layer_filters(nn.Linear(2, 2))
