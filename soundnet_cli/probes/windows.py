"""The window protocol: fixed-length windows of a clip's feature sequence, clip scores averaged
over windows, and choosing C by inner cross-validation over clips."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError
from soundnet_cli.media.audio import SAMPLE_RATE
from soundnet_cli.probes.budget import FitPlan, check_fit

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def window_steps(stride: int, window_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Time steps of a layer (``stride`` samples apart) in a window of ``window_seconds``."""
    return max(1, int(round(window_seconds * sample_rate / stride)))


def pad_to_window(features: np.ndarray, steps: int) -> np.ndarray:
    """A (time, channels) clip, repeated circularly to one window if it is shorter."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise SoundnetError(f"expected features shaped (time, channels), got {features.shape}")
    if features.shape[0] < steps:
        reps = -(-steps // features.shape[0])
        features = np.tile(features, (reps, 1))[:steps]
    return features


def cut_windows(features: np.ndarray, steps: int) -> np.ndarray:
    """(time, channels) -> (windows, steps * channels), sliding by one time step.

    A clip shorter than one window gives a single window padded by repeating it circularly.
    """
    features = pad_to_window(features, steps)
    view = np.lib.stride_tricks.sliding_window_view(features, steps, axis=0)  # (W, C, steps)
    return view.transpose(0, 2, 1).reshape(view.shape[0], -1)


class ClipProbe:
    """A window-level estimator applied to whole clips.

    Estimators with ``fit_clips`` (the builtin linear probes) are trained on the clips' steps
    directly and score a clip without cutting its windows; any other estimator gets the windows
    cut out as (windows, steps * channels) rows.

    A fit is planned first (:mod:`soundnet_cli.probes.budget`) and refused when it would take
    more than ``max_memory`` bytes (default: half the physical memory); ``step_seconds`` (the
    layer's stride in seconds) lets the refusal say the longest window that fits in seconds.
    """

    def __init__(
        self,
        estimator: Any,
        steps: int,
        *,
        max_memory: int | None = None,
        step_seconds: float | None = None,
    ) -> None:
        self.estimator = estimator
        self.steps = steps
        self.max_memory = max_memory
        self.step_seconds = step_seconds

    def check_memory(
        self, lengths: Sequence[int], channels: int, classes: int, layer: str | None = None
    ) -> FitPlan:
        """Refuse a fit on clips of ``lengths`` steps that would exceed the memory budget."""
        return check_fit(
            solver_kind(self.estimator),
            self.steps,
            channels,
            lengths,
            classes,
            self.max_memory,
            step_seconds=self.step_seconds,
            layer=layer,
        )

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.estimator.classes_)

    def fit(self, clips: Sequence[np.ndarray], labels: Sequence[str]) -> ClipProbe:
        if len(clips) != len(labels):
            raise SoundnetError(f"{len(clips)} clips but {len(labels)} labels")
        check_finite(clips)
        if clips:
            shapes = [np.shape(c) for c in clips]
            channels = shapes[0][-1] if len(shapes[0]) == 2 else 1
            self.check_memory([s[0] if s else 0 for s in shapes], channels, len(set(labels)))
        if hasattr(self.estimator, "fit_clips"):
            self.estimator.fit_clips(clips, labels, self.steps)
            return self
        windows = [cut_windows(f, self.steps) for f in clips]
        X = np.concatenate(windows)
        y = np.repeat(np.asarray(labels).astype(str), [len(w) for w in windows])
        self.estimator.fit(X, y)
        return self

    def decision_function(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(clips, classes): each clip's decision values averaged over its windows."""
        check_finite(clips)
        if hasattr(self.estimator, "clip_decision"):
            scores = np.stack([self.estimator.clip_decision(f, self.steps) for f in clips])
        else:
            scores = np.stack(
                [
                    self.estimator.decision_function(cut_windows(f, self.steps)).mean(0)
                    for f in clips
                ]
            )
        bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        if len(bad):
            raise SoundnetError(
                f"the probe's scores of clip {int(bad[0])} are not finite (features too large "
                "for its weights); check the model and the input"
            )
        return scores

    def predict(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(clips), axis=1)]

    @property
    def fit_report(self) -> Any:
        """How the solver ended (``converged``, ``iterations``, ...), or None if unknown."""
        return getattr(self.estimator, "fit_report_", None)


def check_finite(clips: Sequence[np.ndarray], names: Sequence[str] | None = None) -> None:
    """Refuse clips whose features hold NaN or infinite values (a probe would fit or score
    ``nan``), naming the first few (by ``names``, else by position)."""
    bad = [i for i, clip in enumerate(clips) if not np.isfinite(np.asarray(clip)).all()]
    if bad:
        label = [str(names[i]) if names is not None else f"clip {i}" for i in bad[:3]]
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SoundnetError(
            f"the features of {', '.join(label)}{more} contain NaN or infinite values; "
            "check the model (its weights) and these inputs"
        )


def solver_kind(estimator: Any) -> str:
    """``torch`` or ``liblinear`` for the builtin linear probes; ``materialised`` for any other
    estimator (it is given every window as a row)."""
    if hasattr(estimator, "fit_clips"):
        return str(getattr(estimator, "solver", "torch"))
    return "materialised"


def choose_c(
    make: Callable[[float], Any],
    clips: Sequence[np.ndarray],
    labels: Sequence[str],
    groups: Sequence[str],
    steps: int,
    grid: Sequence[float] = C_GRID,
    splits: int = 3,
    max_memory: int | None = None,
) -> tuple[float, dict[float, float]]:
    """The C with the best clip accuracy in grouped, stratified inner cross-validation
    (ties go to the smaller C); also every C's mean accuracy."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    counts = np.unique(labels_arr, return_counts=True)[1]
    splits = int(min(splits, counts.min(), len(np.unique(groups_arr))))
    if splits < 2:
        raise SoundnetError("too few clips per class to choose C by cross-validation; give --C")
    folds = list(StratifiedGroupKFold(n_splits=splits).split(clips, labels_arr, groups_arr))
    scores: dict[float, float] = {}
    for c in grid:
        accuracies = []
        for train, test in folds:
            probe = ClipProbe(make(c), steps, max_memory=max_memory)
            probe.fit([clips[i] for i in train], labels_arr[train])
            predicted = probe.predict([clips[i] for i in test])
            accuracies.append(float(np.mean(predicted == labels_arr[test])))
        scores[c] = float(np.mean(accuracies))
    best = max(grid, key=lambda c: (scores[c], -c))
    return best, scores
