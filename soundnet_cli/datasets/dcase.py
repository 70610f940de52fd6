"""The DCASE 2013 acoustic scenes layout: 10 classes of 30-s recordings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from soundnet_cli.datasets.base import Clip, Dataset, DatasetError, Protocol, Split, grouped_kfold
from soundnet_cli.media.files import MEDIA_EXTENSIONS, walk


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
