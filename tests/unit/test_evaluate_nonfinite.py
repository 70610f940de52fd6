"""evaluate never reports on nan: non-finite features are one error naming the clips."""

import numpy as np
import pytest

from soundnet_cli.errors import SoundnetError
from soundnet_cli.evaluation import features as features_module
from soundnet_cli.evaluation.protocol import evaluate
from soundnet_cli.plugins import get_plugins
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..fakes import make_esc_tree


def test_nan_features_name_the_clip(tmp_path, named_checkpoint, monkeypatch):
    tree = make_esc_tree(tmp_path / "esc", {"low": 200.0, "high": 4000.0}, per_class=3, folds=2)
    original = features_module.clip_features
    calls = []

    def poisoned(model, wave, layers, device="cpu"):
        out = original(model, wave, layers, device)
        calls.append(1)
        if len(calls) == 2:
            out = {k: np.full_like(v, np.nan) for k, v in out.items()}
        return out

    monkeypatch.setattr(features_module, "clip_features", poisoned)
    model = load_checkpoint(named_checkpoint)
    dataset = get_plugins().datasets.create("esc50")
    with pytest.raises(SoundnetError, match=r"the features of .*\.wav contain NaN") as caught:
        evaluate(dataset, tree, model, ["pool5"], C=1.0, use_cache=False)
    assert "\n" not in str(caught.value)
