"""Zero-shot evaluation: a dataset's classes as text, scored by a student's embedding head, next
to the linear probe on the same features.

Per split (the dataset's protocol: leave one fold out), on the test clips: ``zero_shot`` with
the default prompt (``"the sound of {}"``), ``zero_shot_ensemble`` with the default prompt
ensemble, and ``probe``, the dataset's linear probe trained on the split's training clips over
the same layer. A clip's sound vector is the head's projection of the mean of its layer's
features (the clip repeated to the protocol's length, as for the probe); class names become text
(``chirping_birds`` -> "chirping birds").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.evaluation.features import FeatureCache, compute_features, model_key
from soundnet_cli.evaluation.protocol import _run_split, plan_layer_fit


def evaluate_zero_shot(
    dataset: Any,
    root: Path,
    model: Any,
    head: Any,
    encoder: Any,
    *,
    probe: str = "linear-svm",
    C: float | str = 0.01,
    use_cache: bool = True,
    device: str = "cpu",
    mix: str = "first",
    solver: str | None = None,
    max_memory: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    from soundnet_cli.media.audio import RESAMPLER
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.probes import build_probe
    from soundnet_cli.students.embedding import clip_vector
    from soundnet_cli.teachers.text import DEFAULT_ENSEMBLE, DEFAULT_PROMPT, class_text

    started = time.perf_counter()
    layer = head.spec.layer
    clips = dataset.clips(Path(root))
    splits = dataset.splits(clips)
    protocol = dataset.protocol
    tag = f"{dataset.name}-repeat{protocol.repeat_to}-{mix}-{RESAMPLER}"
    cache = FeatureCache(FeatureCache.default_root(model_key(model), tag)) if use_cache else None
    make_entry = get_plugins().probes.get(probe)

    def make(c: float) -> Any:
        return build_probe(make_entry.factory, c, solver=solver, device=device)

    plan_layer_fit(
        model,
        layer,
        make,
        protocol.window_seconds,
        max((len(split.train) for split in splits), default=0),
        len({c.label for c in clips}),
        protocol.repeat_to,
        max_memory,
    )  # the probe beside zero-shot keeps the same memory budget, refused before any feature
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("features", done[0], len(clips))

    features = compute_features(
        model,
        [c.path for c in clips],
        [layer],
        repeat_to=protocol.repeat_to,
        mix=mix,  # type: ignore[arg-type]
        cache=cache,
        device=device,
        on_clip=tick,
    )
    classes = sorted({c.label for c in clips})
    words = [class_text(c) for c in classes]
    single = encoder.labels(words, [DEFAULT_PROMPT])
    ensemble = encoder.labels(words, list(DEFAULT_ENSEMBLE))
    vectors = np.stack([clip_vector(head, f[layer]) for f in features])
    guess_single = np.asarray(classes)[np.argmax(vectors @ single.T, axis=1)]
    guess_ensemble = np.asarray(classes)[np.argmax(vectors @ ensemble.T, axis=1)]
    truth = np.asarray([c.label for c in clips])
    rows = []
    for n, split in enumerate(splits):
        test = np.asarray(split.test)
        probed = _run_split(clips, features, split, layer, model, dataset, make, C, max_memory)
        rows.append(
            {
                "split": split.name,
                "clips": len(test),
                "zero_shot": float(np.mean(guess_single[test] == truth[test])),
                "zero_shot_ensemble": float(np.mean(guess_ensemble[test] == truth[test])),
                "probe": probed.accuracy,
            }
        )
        if progress:
            progress("probes", n + 1, len(splits))
    mean = {
        key: float(np.mean([r[key] for r in rows]))
        for key in ("zero_shot", "zero_shot_ensemble", "probe")
    }
    return {
        "dataset": dataset.name,
        "root": str(root),
        "layer": layer,
        "head": head.spec.name,
        "teacher": head.spec.teacher,
        "clip": head.spec.clip,
        "classes": classes,
        "class_text": words,
        "prompt": DEFAULT_PROMPT,
        "ensemble": list(DEFAULT_ENSEMBLE),
        "probe": probe,
        "splits": rows,
        "mean": mean,
        "seconds": round(time.perf_counter() - started, 3),
    }
