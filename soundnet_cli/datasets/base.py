"""Labelled sound datasets: which clips a root folder holds, their labels and folds, and how the
paper's protocol treats them. The builtins (``esc50``, ``esc10`` in :mod:`.esc`, ``dcase2013`` in
:mod:`.dcase`) register through the ``register_datasets`` hook like any plugin's."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundnet_cli.errors import SoundnetError


class DatasetError(SoundnetError):
    """A dataset folder that does not have the expected layout."""


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    fold: str  # the predefined fold, or "train"/"test" for a fixed split
    group: str  # clips cut from the same source recording share a group


@dataclass(frozen=True)
class Split:
    name: str
    train: list[int]
    test: list[int]


@dataclass(frozen=True)
class Protocol:
    """``repeat_to``: clips shorter than this many seconds are repeated circularly to it (None:
    as they are); ``window_seconds``: the probe's window."""

    repeat_to: float | None
    window_seconds: float


class Dataset(ABC):
    name: str
    protocol: Protocol

    @abstractmethod
    def clips(self, root: Path) -> list[Clip]:
        """Every clip under ``root``, sorted; raise DatasetError for a bad layout."""

    def splits(self, clips: Sequence[Clip]) -> list[Split]:
        """Leave one fold out over the folds present; with a single fold, grouped stratified
        5-fold cross-validation inside it (groups never straddle train and test)."""
        folds = sorted({c.fold for c in clips}, key=_fold_key)
        if len(folds) >= 2:
            return [
                Split(
                    f"fold {f}",
                    [i for i, c in enumerate(clips) if c.fold != f],
                    [i for i, c in enumerate(clips) if c.fold == f],
                )
                for f in folds
            ]
        return grouped_kfold(clips, 5, prefix=f"fold {folds[0]} / split" if folds else "split")


def _fold_key(fold: str) -> tuple[int, str]:
    return (int(fold), "") if fold.isdigit() else (1 << 30, fold)


def grouped_kfold(clips: Sequence[Clip], k: int, prefix: str = "split") -> list[Split]:
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.array([c.label for c in clips])
    groups = np.array([c.group for c in clips])
    k = min(k, int(np.unique(labels, return_counts=True)[1].min()), len(set(groups)))
    if k < 2:
        raise DatasetError("too few clips per class for cross-validation")
    return [
        Split(f"{prefix} {n + 1}", list(map(int, train)), list(map(int, test)))
        for n, (train, test) in enumerate(
            StratifiedGroupKFold(n_splits=k).split(np.zeros(len(clips)), labels, groups)
        )
    ]
