"""Sliding windows over a layer's steps (extraction/windows.py): the same windows whether the
steps come at once or in blocks, only the steps a coming window can overlap are held, and the
window count of an input."""

import numpy as np
import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.windows import WindowPool, pool_spans, window_count


def test_blocks_give_the_windows_of_the_whole_and_hold_little():
    rng = np.random.default_rng(0)
    steps = rng.standard_normal((5000, 8)).astype(np.float32)
    step, duration = 0.05, 5000 * 0.05 + 0.01
    whole = WindowPool(0.02, step, 8, window=3.0, hop=1.0, how="mean")
    expected = np.concatenate([whole.add(steps), whole.finish(duration)])
    assert len(expected) == window_count(duration, 3.0, 1.0)
    blocks = WindowPool(0.02, step, 8, window=3.0, hop=1.0, how="mean")
    found, held = [], 0
    for start in range(0, len(steps), 37):
        found.append(blocks.add(steps[start : start + 37]))
        held = max(held, len(blocks._values))
    found.append(blocks.finish(duration))
    np.testing.assert_allclose(np.concatenate(found), expected, rtol=1e-6, atol=0)
    assert held <= 3.0 / step + 37 + 2  # one window of steps and a block, never the input


def test_pool_spans_weights_by_overlap_or_takes_the_maximum():
    starts, ends = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    values = np.array([[1.0], [3.0], [10.0]])
    assert pool_spans(starts, ends, values, 0.5, 2.0, "mean")[0] == pytest.approx(
        (0.5 * 1 + 1.0 * 3) / 1.5
    )
    assert pool_spans(starts, ends, values, 0.5, 2.0, "max")[0] == 3.0
    assert pool_spans(starts, ends, values, 5.0, 6.0, "mean") is None


def test_window_counts_and_bad_windows():
    assert window_count(34.0, 10.0, 4.0) == 7  # 0, 4, ..., 24: the last reaches 34 s
    assert window_count(5.0, 10.0, 4.0) == 1
    assert window_count(20.0, 10.0) == 2
    with pytest.raises(UsageProblem, match="window"):
        WindowPool(0.0, 0.1, 2, window=0.0)
    with pytest.raises(UsageProblem, match="hop"):
        WindowPool(0.0, 0.1, 2, window=1.0, hop=-1.0)
