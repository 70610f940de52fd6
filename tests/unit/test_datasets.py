import numpy as np
import pytest

from soundnet_cli.datasets import DCASE2013, ESC10, ESC50, DatasetError
from soundnet_cli.plugins import get_plugins

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree

CLASSES = {"dog": 300.0, "rain": 900.0, "bird": 2500.0}


def test_builtin_datasets_are_registered():
    assert {"esc50", "esc10", "dcase2013"} <= set(get_plugins().datasets.names())
    assert get_plugins().datasets.create("esc10").protocol.window_seconds == 1.0


def test_esc50_layout_and_leave_one_fold_out(tmp_path):
    root = make_esc_tree(tmp_path / "esc", CLASSES, per_class=4, folds=2, seconds=0.2)
    dataset = ESC50()
    clips = dataset.clips(root)
    assert len(clips) == 12 and {c.label for c in clips} == set(CLASSES)
    splits = dataset.splits(clips)
    assert [s.name for s in splits] == ["fold 1", "fold 2"]
    for split in splits:
        assert not set(split.train) & set(split.test)
        assert {clips[i].fold for i in split.test} == {split.name.split()[-1]}


def test_esc10_keeps_the_esc10_rows(tmp_path):
    root = make_esc_tree(tmp_path / "esc", CLASSES, per_class=2, folds=2, seconds=0.2)
    assert {c.label for c in ESC10().clips(root)} == {"dog", "rain"}  # esc10 column True


def test_single_fold_is_grouped_stratified_cv(tmp_path):
    root = make_esc_tree(tmp_path / "esc", CLASSES, per_class=10, folds=1, seconds=0.2)
    clips = ESC50().clips(root)
    splits = ESC50().splits(clips)
    assert len(splits) == 5
    tested = sorted(i for s in splits for i in s.test)
    assert tested == list(range(len(clips)))  # every clip tested exactly once
    for split in splits:
        train_groups = {clips[i].group for i in split.train}
        assert not train_groups & {clips[i].group for i in split.test}  # no source leaks
        assert {clips[i].label for i in split.test} == set(CLASSES)


def test_esc_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="no meta/esc50.csv"):
        ESC50().clips(tmp_path)
    root = make_esc_tree(tmp_path / "esc", CLASSES, per_class=2, folds=2, seconds=0.2)
    next((root / "audio").iterdir()).unlink()
    with pytest.raises(DatasetError, match="lacks 1 clip"):
        ESC50().clips(root)


def test_dcase_layouts(tmp_path):
    for part, count in (("train", 3), ("test", 2)):
        for label in ("bus", "park"):
            for n in range(count):
                write_wav(tmp_path / "flat" / part / f"{label}{n + 1:02d}.wav", tone(0.2))
                write_wav(tmp_path / "nested" / part / label / f"rec{n}.wav", tone(0.2))
    for layout in ("flat", "nested"):
        clips = DCASE2013().clips(tmp_path / layout)
        assert sorted({c.label for c in clips}) == ["bus", "park"]
        (split,) = DCASE2013().splits(clips)
        assert len(split.train) == 6 and len(split.test) == 4
        assert {clips[i].fold for i in split.test} == {"test"}
    assert DCASE2013().protocol.window_seconds == 5.0 and DCASE2013().protocol.repeat_to is None


def test_dcase_without_test_is_cross_validated(tmp_path):
    for label in ("bus", "park"):
        for n in range(5):
            write_wav(tmp_path / "train" / f"{label}{n:02d}.wav", tone(0.1))
    clips = DCASE2013().clips(tmp_path)
    splits = DCASE2013().splits(clips)
    assert len(splits) == 5
    assert np.bincount([i for s in splits for i in s.test]).tolist() == [1] * 10
    with pytest.raises(DatasetError, match="no train/ folder"):
        DCASE2013().clips(tmp_path / "train")
