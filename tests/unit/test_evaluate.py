import numpy as np
import pytest

from soundnet_cli.datasets import ESC50
from soundnet_cli.errors import LayerError
from soundnet_cli.evaluation import features as features_module
from soundnet_cli.evaluation.protocol import evaluate
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..fakes import make_esc_tree

CLASSES = {"low": 200.0, "mid": 1200.0, "high": 4000.0}


@pytest.fixture
def tree(tmp_path):
    return make_esc_tree(tmp_path / "esc", CLASSES, per_class=6, folds=2, seconds=1.0)


def model_passes(monkeypatch) -> list[tuple[int, tuple[str, ...]]]:
    """Record every pass of a clip through the model: (samples, layers)."""
    calls: list[tuple[int, tuple[str, ...]]] = []
    original = features_module.clip_features

    def recording(model, wave, layers, device="cpu"):
        calls.append((len(wave), tuple(layers)))
        return original(model, wave, layers, device)

    monkeypatch.setattr(features_module, "clip_features", recording)
    return calls


def test_protocol_on_a_separable_dataset(tree, named_checkpoint, monkeypatch):
    model = load_checkpoint(named_checkpoint)
    calls = model_passes(monkeypatch)
    report = evaluate(ESC50(), tree, model, ["conv5", "pool5"], C=1.0)
    assert len(calls) == 18  # one pass per clip for both layers
    assert all(call == (220500, ("conv5", "pool5")) for call in calls)  # 1-s clips, 10 s
    assert [(r.split, r.layer) for r in report.results] == [
        ("fold 1", "conv5"),
        ("fold 1", "pool5"),
        ("fold 2", "conv5"),
        ("fold 2", "pool5"),
    ]
    mean, std = report.layer_summary("pool5")
    assert mean >= 0.8  # tones of three pitches are easy even for a random network
    assert report.confusion("pool5").sum() == 18
    payload = report.as_dict()
    assert payload["summary"]["pool5"]["mean"] == pytest.approx(mean)
    assert len(payload["splits"][0]["predictions"]) == 9


def test_features_are_cached_between_runs(tree, named_checkpoint, monkeypatch):
    model = load_checkpoint(named_checkpoint)
    calls = model_passes(monkeypatch)
    first = evaluate(ESC50(), tree, model, ["pool5"])
    assert len(calls) == 18
    calls.clear()
    second = evaluate(ESC50(), tree, model, ["pool5"])
    assert calls == []
    assert [r.accuracy for r in first.results] == [r.accuracy for r in second.results]


def test_unknown_layer(tree, named_checkpoint):
    with pytest.raises(LayerError, match="pool5"):
        evaluate(ESC50(), tree, load_checkpoint(named_checkpoint), ["pool4"])


def test_auto_c_records_the_chosen_value(tree, named_checkpoint):
    report = evaluate(
        ESC50(), tree, load_checkpoint(named_checkpoint), ["pool5"], C="auto", use_cache=False
    )
    assert all(r.C in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) for r in report.results)
    assert np.isfinite([r.accuracy for r in report.results]).all()
