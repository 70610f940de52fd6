"""What fine-tuning learns: labelled clips split into training and test (a registered dataset
or a labels CSV), every clip decoded once, and the batches of each step.

Crops are taken at a random offset around the clip read as a circle, so every crop is a circular
shift as well (the clip is tiled when the crop is longer). A test clip is repeated to the
dataset protocol's length (10 s for ESC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.training.finetune.config import FinetuneConfig

FOLD_COLUMNS = ("fold", "split")


@dataclass(frozen=True)
class Task:
    """Labelled clips split into training and test, and how test clips are presented."""

    head: str  # the classifier head's name
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (path, class index)
    test: tuple[tuple[str, int], ...]
    repeat_to: float | None  # test clips shorter than this (seconds) are repeated to it
    source: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["train"] = [list(row) for row in self.train]
        data["test"] = [list(row) for row in self.test]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            str(data["head"]),
            tuple(data["classes"]),
            tuple((str(p), int(i)) for p, i in data["train"]),
            tuple((str(p), int(i)) for p, i in data["test"]),
            None if data["repeat_to"] is None else float(data["repeat_to"]),
            dict(data.get("source") or {}),
        )


def _task(
    head: str,
    rows: Sequence[tuple[Path, str, bool]],
    repeat_to: float | None,
    source: dict[str, Any],
) -> Task:
    classes = tuple(sorted({label for _, label, _ in rows}))
    if len(classes) < 2:
        raise UsageProblem("fine-tuning needs clips of at least two classes")
    index = {label: i for i, label in enumerate(classes)}
    train = tuple((str(p), index[label]) for p, label, is_test in rows if not is_test)
    test = tuple((str(p), index[label]) for p, label, is_test in rows if is_test)
    if not train:
        raise UsageProblem("no training clips are left once the test fold is held out")
    return Task(head, classes, train, test, repeat_to, source)


def dataset_task(name: str, root: Path, test_fold: str | None = None) -> Task:
    """A registered dataset's clips; ``test_fold`` is held out for testing. Without it, a
    dataset with one predefined split (DCASE 2013 with its test folder) uses that split, and
    any other trains on every clip (no test score)."""
    from soundnet_cli.plugins import get_plugins

    dataset = get_plugins().datasets.create(name)
    clips = dataset.clips(Path(root))
    if test_fold is not None:
        folds = sorted({c.fold for c in clips})
        if str(test_fold) not in folds:
            raise UsageProblem(f"{name} has no fold {test_fold!r}; its folds: {', '.join(folds)}")
        held = {i for i, c in enumerate(clips) if c.fold == str(test_fold)}
    else:
        splits = dataset.splits(clips)
        fixed = len(splits) == 1 and not splits[0].name.startswith(("fold", "split"))
        held = set(splits[0].test) if fixed else set()
    rows = [(c.path, c.label, i in held) for i, c in enumerate(clips)]
    source = {"dataset": name, "root": str(Path(root).resolve()), "test_fold": test_fold}
    return _task(name, rows, dataset.protocol.repeat_to, source)


def labels_task(
    audio_dir: Path, labels: Path, test_fold: str | None = None, repeat_to: float | None = None
) -> Task:
    """Clips listed in ``labels`` (the CSV `soundnet probe fit` reads: a path column relative to
    ``audio_dir`` and a label column), with an optional ``fold`` column for ``test_fold``."""
    from soundnet_cli.datasets.labels import LABEL_COLUMNS, PATH_COLUMNS, pick_column, read_table

    header, table = read_table(labels)
    path_col = pick_column(header, PATH_COLUMNS, "path", labels)
    label_col = pick_column(header, LABEL_COLUMNS, "label", labels)
    fold_col = pick_column(header, FOLD_COLUMNS, "fold", labels, required=test_fold is not None)
    assert path_col is not None and label_col is not None
    base = Path(audio_dir)
    rows = []
    for row in table:
        path = base / row[path_col]
        if not path.is_file():
            raise SoundnetError(f"{labels} line {row.line}: {row[path_col]} not found under {base}")
        held = fold_col is not None and test_fold is not None and row[fold_col] == str(test_fold)
        rows.append((path, row[label_col], held))
    if test_fold is not None and not any(held for _, _, held in rows):
        raise UsageProblem(f"{labels}: no row has {fold_col} {test_fold!r}")
    source = {
        "audio": str(base.resolve()),
        "labels": str(Path(labels).resolve()),
        "test_fold": test_fold,
    }
    return _task("classes", rows, repeat_to, source)


class ClipAudio:
    """Every clip decoded once into memory: model-ready float32 at 22,050 Hz, x256."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        mix: str = "first",
        workers: int = 2,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        from soundnet_cli.media.audio import load_audio

        self.waves: list[np.ndarray] = [np.zeros(0, np.float32)] * len(paths)
        done = 0
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(load_audio, path, mix=mix) for path in paths]  # type: ignore[arg-type]
            for i, future in enumerate(futures):
                self.waves[i] = future.result().samples
                done += 1
                if progress is not None:
                    progress(done, len(paths))

    def crop(self, index: int, seed: int, samples: int) -> np.ndarray:
        """``samples`` samples from a random offset, wrapping around the clip's end."""
        wave = self.waves[index]
        start = int(np.random.default_rng(seed).integers(0, len(wave)))
        return wave[(start + np.arange(samples)) % len(wave)]

    def whole(self, index: int, at_least: int) -> np.ndarray:
        """The clip, repeated circularly to ``at_least`` samples if it is shorter."""
        from soundnet_cli.media.audio import tile

        wave = self.waves[index]
        return wave if len(wave) >= at_least else tile(wave, at_least)


def batches(
    audio: ClipAudio,
    labels: Sequence[int],
    indices: Sequence[int],
    config: FinetuneConfig,
    *,
    sample_rate: int,
    start_step: int,
    rank: int,
    world_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (waves, labels) for steps ``start_step, ...``: a pure function of the step
    (the shared step sampler), so a resumed run sees what an uninterrupted one would."""
    from soundnet_cli.training.sampler import StepSampler

    sampler = StepSampler(
        indices,
        config.batch_size,
        seed=config.seed,
        start_step=start_step,
        rank=rank,
        world_size=world_size,
    )
    samples = int(round(config.crop_seconds * sample_rate))
    for batch in sampler:
        waves = np.stack([audio.crop(clip, seed, samples) for clip, seed in batch])
        targets = np.array([labels[clip] for clip, _ in batch], dtype=np.int64)
        yield torch.from_numpy(waves), torch.from_numpy(targets)
