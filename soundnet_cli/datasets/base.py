"""Evaluation datasets: which clips a root folder holds, their labels and folds, and how the
paper's protocol treats them. Builtins (``esc50``, ``esc10``, ``dcase2013``) register through the
``register_datasets`` hook like any plugin's."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundnet_cli.errors import SoundnetError
from soundnet_cli.evaluation.labels import check_labels, read_table
from soundnet_cli.media.files import MEDIA_EXTENSIONS, walk


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


class ESC50(Dataset):
    """The ESC-50 layout: ``ROOT/meta/esc50.csv`` (filename, fold, target, category, esc10,
    src_file, take) and ``ROOT/audio/<filename>``. Clips are 5 s; the protocol repeats them to
    10 s and uses 1-s windows."""

    name = "esc50"
    protocol = Protocol(repeat_to=10.0, window_seconds=1.0)
    esc10_only = False

    def clips(self, root: Path) -> list[Clip]:
        meta = root / "meta" / "esc50.csv"
        if not meta.is_file():
            raise DatasetError(f"{root}: not an ESC-50 layout (no meta/esc50.csv)")
        header, rows = read_table(meta, error=DatasetError)
        needed = {"filename", "fold", "category", "src_file", "esc10"}
        if not needed <= set(header):
            raise DatasetError(f"{meta}: expected columns {', '.join(sorted(needed))}")
        for row in rows:
            if not row["fold"].strip():
                raise DatasetError(f"{meta} line {row.line}: the fold is empty")
        check_labels(
            meta,
            [(r.line, r["filename"], r["category"]) for r in rows],
            inside=root / "audio",
            error=DatasetError,
        )
        if self.esc10_only:
            rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
        clips = [
            Clip(root / "audio" / r["filename"], r["category"], r["fold"].strip(), r["src_file"])
            for r in rows
        ]
        missing = [c.path.name for c in clips if not c.path.is_file()]
        if missing:
            raise DatasetError(
                f"{root}/audio lacks {len(missing)} clip(s) listed in "
                f"meta/esc50.csv, e.g. {missing[0]}"
            )
        if not clips:
            raise DatasetError(f"{meta}: no clips")
        return sorted(clips, key=lambda c: c.path.name)


class ESC10(ESC50):
    """The ESC-10 subset: the rows of an ESC-50 layout whose ``esc10`` column is True."""

    name = "esc10"
    esc10_only = True


class DCASE2013(Dataset):
    """DCASE 2013 acoustic scenes: 10 classes of 30-s recordings, 5-s windows.

    Layout: ``ROOT/train/`` and, optionally, ``ROOT/test/``, each holding either files named
    ``<class><number>.wav`` (``bus01.wav``, as the challenge published them) or one folder per
    class. With a test folder, the probe trains on train and is scored on test (the paper's
    protocol: 10 clips per class to train, 100 to test); without one, stratified 5-fold
    cross-validation on train (the challenge's development protocol).
    """

    name = "dcase2013"
    protocol = Protocol(repeat_to=None, window_seconds=5.0)

    def clips(self, root: Path) -> list[Clip]:
        if not (root / "train").is_dir():
            raise DatasetError(f"{root}: not a DCASE 2013 layout (no train/ folder)")
        clips = [
            clip
            for part in ("train", "test")
            if (root / part).is_dir()
            for clip in self._part(root / part, part)
        ]
        if not clips:
            raise DatasetError(f"{root}/train holds no audio files")
        return clips

    @staticmethod
    def _part(folder: Path, part: str) -> list[Clip]:
        found = []
        for route in walk([folder], extensions=MEDIA_EXTENSIONS):
            path = route.path
            if not path.is_file():
                continue
            # In a class folder the folder names the class; else the name does (bus01.wav).
            nested = "/" in route.rel
            label = path.parent.name if nested else re.sub(r"[\d_\-]+$", "", path.stem)
            found.append(Clip(path, label, part, f"{part}/{route.rel}"))
        return found

    def splits(self, clips: Sequence[Clip]) -> list[Split]:
        test = [i for i, c in enumerate(clips) if c.fold == "test"]
        if test:
            train = [i for i, c in enumerate(clips) if c.fold == "train"]
            return [Split("train -> test", train, test)]
        return grouped_kfold(clips, 5)
