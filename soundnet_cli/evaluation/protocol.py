"""The paper's evaluations: features once per clip, a linear probe per split and layer, clip
accuracy averaged over splits (PAPER.md, "Probing")."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.datasets import Clip, Dataset, Split
from soundnet_cli.errors import LayerError, SoundnetError
from soundnet_cli.evaluation.features import FeatureCache, compute_features, model_key
from soundnet_cli.media.audio import Mix
from soundnet_cli.probes import ClipProbe, build_probe, choose_c, window_steps
from soundnet_cli.probes.windows import check_finite

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student


@dataclass
class SplitResult:
    split: str
    layer: str
    accuracy: float
    n_test: int
    C: float
    predictions: list[tuple[str, str, str]]  # (clip path, true label, predicted label)
    fit: dict[str, Any] | None = None  # how the solver ended (converged, iterations, ...)

    @property
    def converged(self) -> bool | None:
        return None if self.fit is None else bool(self.fit["converged"])


@dataclass
class EvaluationReport:
    dataset: str
    root: str
    model: str
    layers: list[str]
    probe: str
    C: float | str
    protocol: dict[str, Any]
    classes: list[str]
    results: list[SplitResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    solver: str = "torch"

    def unconverged(self) -> list[SplitResult]:
        """The splits whose probe stopped before its solver converged."""
        return [r for r in self.results if r.converged is False]

    def layer_summary(self, layer: str) -> tuple[float, float]:
        accs = [r.accuracy for r in self.results if r.layer == layer]
        return float(np.mean(accs)), float(np.std(accs))

    def confusion(self, layer: str) -> np.ndarray:
        """Counts, rows true class, columns predicted, over every split's test clips."""
        index = {c: i for i, c in enumerate(self.classes)}
        matrix = np.zeros((len(self.classes), len(self.classes)), dtype=int)
        for result in self.results:
            if result.layer == layer:
                for _, truth, predicted in result.predictions:
                    matrix[index[truth], index[predicted]] += 1
        return matrix

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "model": self.model,
            "layers": self.layers,
            "probe": self.probe,
            "solver": self.solver,
            "C": self.C,
            "protocol": self.protocol,
            "classes": self.classes,
            "summary": {
                layer: dict(zip(("mean", "std"), self.layer_summary(layer), strict=True))
                for layer in self.layers
            },
            "splits": [
                {
                    "split": r.split,
                    "layer": r.layer,
                    "accuracy": r.accuracy,
                    "n_test": r.n_test,
                    "C": r.C,
                    "converged": r.converged,
                    "fit": r.fit,
                    "predictions": [
                        {"path": p, "label": t, "predicted": q} for p, t, q in r.predictions
                    ],
                }
                for r in self.results
            ],
            "confusion": {layer: self.confusion(layer).tolist() for layer in self.layers},
            "seconds": self.seconds,
        }


def check_layers(model: Student, layers: Sequence[str]) -> None:
    valid = [info.name for info in model.feature_info]
    for layer in layers:
        if layer not in valid:
            raise LayerError(
                f"{getattr(model, 'architecture', 'this model')} has no layer "
                f"{layer!r}; valid layers: {', '.join(valid)}"
            )


def fit_probe(
    make: Callable[[float], Any],
    features: Sequence[np.ndarray],
    labels: Sequence[str],
    groups: Sequence[str],
    steps: int,
    C: float | str,
    *,
    max_memory: int | None = None,
    step_seconds: float | None = None,
    layer: str | None = None,
) -> tuple[ClipProbe, float]:
    """A ClipProbe trained on ``features``; ``C="auto"`` picks C by inner cross-validation.
    ``make(C)`` builds the window-level estimator (see :func:`soundnet_cli.probes.build_probe`).
    A fit planned beyond ``max_memory`` bytes (default: half the physical memory) is refused
    before it starts (:mod:`soundnet_cli.probes.budget`)."""
    probe = ClipProbe(make(1.0), steps, max_memory=max_memory, step_seconds=step_seconds)
    channels = features[0].shape[-1] if len(features) and np.ndim(features[0]) == 2 else 1
    probe.check_memory([len(f) for f in features], channels, len(set(labels)), layer=layer)
    chosen = (
        choose_c(make, features, labels, groups, steps, max_memory=max_memory)[0]
        if C == "auto"
        else float(C)
    )
    probe = ClipProbe(make(chosen), steps, max_memory=max_memory, step_seconds=step_seconds)
    return probe.fit(features, labels), chosen


def plan_layer_fit(
    model: Any,
    layer: str,
    make: Callable[[float], Any],
    window_seconds: float,
    clips: int,
    classes: int,
    repeat_to: float | None,
    max_memory: int | None,
) -> None:
    """Refuse, before any feature is computed, a probe fit on ``layer`` that cannot fit the
    memory budget even for clips as short as ``repeat_to`` (each clip is at least that long)."""
    info = next(i for i in model.feature_info if i.name == layer)
    steps = window_steps(info.stride, window_seconds, model.sample_rate)
    shortest = int(repeat_to * model.sample_rate // info.stride) if repeat_to else steps
    probe = ClipProbe(
        make(1.0), steps, max_memory=max_memory, step_seconds=info.stride / model.sample_rate
    )
    probe.check_memory([max(shortest, steps)] * clips, info.channels, classes, layer=layer)


def evaluate(
    dataset: Dataset,
    root: Path,
    model: Student,
    layers: Sequence[str],
    *,
    probe: str = "linear-svm",
    C: float | str = 0.01,
    use_cache: bool = True,
    device: str = "cpu",
    mix: Mix = "first",
    precision: str = "fp32",
    solver: str | None = None,
    max_memory: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvaluationReport:
    """Run ``dataset``'s protocol on the clips under ``root`` for each of ``layers``.

    ``precision`` bf16/fp16 runs the model in half precision where the device supports it
    (it logs a note when it falls back to fp32). ``progress(stage, done, total)`` is called
    as clips are featurised and probes trained. ``solver`` (``torch``, the default, or
    ``liblinear``, the reference) fits the builtin linear probes, on ``device``. Every layer's
    probe fit is planned before any feature is computed and refused when it would take more
    than ``max_memory`` bytes (default: half the physical memory).
    """
    from soundnet_cli.media.audio import RESAMPLER
    from soundnet_cli.models import for_inference, running_precision
    from soundnet_cli.plugins import get_plugins

    check_layers(model, layers)
    model = for_inference(model, layers, precision=precision)
    make_entry = get_plugins().probes.get(probe)
    started = time.perf_counter()
    clips = dataset.clips(Path(root))
    splits = dataset.splits(clips)
    key = model_key(model)
    protocol = dataset.protocol
    tag = f"{dataset.name}-repeat{protocol.repeat_to}-{mix}-{RESAMPLER}"
    if running_precision(model) != "fp32":
        tag += f"-{running_precision(model)}"
    cache = FeatureCache(FeatureCache.default_root(key, tag)) if use_cache else None

    def make(c: float) -> Any:
        return build_probe(make_entry.factory, c, solver=solver, device=device)

    largest = max((len(split.train) for split in splits), default=0)
    classes = len({c.label for c in clips})
    for layer in layers:
        plan_layer_fit(
            model,
            layer,
            make,
            protocol.window_seconds,
            largest,
            classes,
            protocol.repeat_to,
            max_memory,
        )
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("features", done[0], len(clips))

    features = compute_features(
        model,
        [c.path for c in clips],
        layers,
        repeat_to=protocol.repeat_to,
        mix=mix,
        cache=cache,
        device=device,
        on_clip=tick,
    )
    for layer in layers:  # name the clips, before any probe would fit or score nan
        check_finite([f[layer] for f in features], [str(c.path) for c in clips])
    featurised = time.perf_counter()
    report = EvaluationReport(
        dataset=dataset.name,
        root=str(root),
        model=key,
        layers=list(layers),
        probe=probe,
        C=C,
        protocol={
            "repeat_to": protocol.repeat_to,
            "window_seconds": protocol.window_seconds,
            "mix": mix,
        },
        classes=sorted({c.label for c in clips}),
        solver=solver or "torch",
    )

    jobs = [(split, layer) for split in splits for layer in layers]
    for n, (split, layer) in enumerate(jobs):
        report.results.append(
            _run_split(clips, features, split, layer, model, dataset, make, C, max_memory)
        )
        if progress:
            progress("probes", n + 1, len(jobs))
    report.seconds = {"features": featurised - started, "probes": time.perf_counter() - featurised}
    return report


def _run_split(
    clips: Sequence[Clip],
    features: Sequence[dict[str, np.ndarray]],
    split: Split,
    layer: str,
    model: Student,
    dataset: Dataset,
    make: Callable[[float], Any],
    C: float | str,
    max_memory: int | None = None,
) -> SplitResult:
    if not split.train or not split.test:
        raise SoundnetError(f"{split.name}: empty training or test set")
    stride = next(i.stride for i in model.feature_info if i.name == layer)
    steps = window_steps(stride, dataset.protocol.window_seconds, model.sample_rate)
    train = [features[i][layer] for i in split.train]
    probe, chosen = fit_probe(
        make,
        train,
        [clips[i].label for i in split.train],
        [clips[i].group for i in split.train],
        steps,
        C,
        max_memory=max_memory,
        step_seconds=stride / model.sample_rate,
        layer=layer,
    )
    predicted = probe.predict([features[i][layer] for i in split.test])
    truth = [clips[i].label for i in split.test]
    accuracy = float(np.mean(np.asarray(predicted) == np.asarray(truth)))
    report = probe.fit_report
    return SplitResult(
        split.name,
        layer,
        accuracy,
        len(split.test),
        chosen,
        [
            (str(clips[i].path), t, str(p))
            for i, t, p in zip(split.test, truth, predicted, strict=True)
        ],
        fit=None if report is None else report.as_dict(),
    )
