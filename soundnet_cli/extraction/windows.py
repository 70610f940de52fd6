"""Sliding windows with a hop over the time steps of a layer: what `predict --window` pools
(each head's probabilities) and what pooled `extract --window` pools (features).

The timeline is cut into *spans*, one per step: from the midpoint with the step before to the
midpoint with the step after (0 and the end of the input at the edges; `tables.spans` cuts
predictions the same way). Window ``k`` covers ``[k * hop, k * hop + window)`` seconds; the
last one is cut at the end of the input, which it reaches. A window's value is the mean of the
spans it overlaps, each weighted by the overlap (``mean``), or their element-wise maximum
(``max``). :func:`pool_spans` is that rule; :class:`WindowPool` applies it to one layer's steps
as they come (a file pushed whole, or a stream chunk by chunk), holding only the steps a coming
window can still overlap.
"""

from __future__ import annotations

import math

import numpy as np

from soundnet_cli.errors import UsageProblem

WINDOW_POOLS = ("mean", "max")


def check_window(window: float | None, hop: float | None) -> None:
    """Usage errors for a window or hop that is not a positive number of seconds (a hop
    without a window too)."""
    if window is None and hop is None:
        return
    if window is None or not math.isfinite(window) or window <= 0:
        raise UsageProblem(f"the window must be a positive number of seconds, not {window}")
    if hop is not None and (not math.isfinite(hop) or hop <= 0):
        raise UsageProblem(f"the hop must be a positive number of seconds, not {hop}")


def pool_spans(
    starts: np.ndarray, ends: np.ndarray, values: np.ndarray, begin: float, end: float, how: str
) -> np.ndarray | None:
    """``values`` (spans, ...) pooled over ``[begin, end)``: their mean weighted by each
    span's overlap with it, or the maximum over the spans that overlap it; None when none
    does."""
    overlap = np.minimum(ends, end) - np.maximum(starts, begin)
    inside = overlap > 0
    if not inside.any():
        return None
    if how == "max":
        return np.asarray(values[inside].max(axis=0))
    weights = overlap[inside].astype(np.float64)
    total = np.tensordot(weights, values[inside].astype(np.float64), axes=(0, 0))
    return np.asarray(total / weights.sum())


class WindowPool:
    """One layer's steps (step ``i`` centred at ``first_centre + i * step`` seconds) in,
    pooled windows out, as float32 (windows, channels)."""

    def __init__(
        self,
        first_centre: float,
        step: float,
        channels: int,
        window: float,
        hop: float | None = None,
        how: str = "mean",
    ) -> None:
        check_window(window, hop)
        if how not in WINDOW_POOLS:
            raise UsageProblem(f"pool must be one of {', '.join(WINDOW_POOLS)}, not {how!r}")
        self.first_centre, self.step, self.channels = first_centre, step, channels
        self.window, self.hop, self.how = window, hop if hop is not None else window, how
        self.count = 0  # steps received
        self._first = 0  # index of _values[0]
        self._values = np.zeros((0, channels), np.float32)
        self._k = 0  # the next window
        self._closed = False

    def _bounds(self, first: int, last: int, duration: float | None) -> tuple[np.ndarray, ...]:
        """Starts and ends of the spans of steps [first, last) (``duration``: the input's,
        once it is known; step ``count - 1`` is then the last)."""
        index = np.arange(first, last, dtype=np.float64)
        centres = self.first_centre + index * self.step
        starts = np.where(index == 0, 0.0, centres - self.step / 2)
        ends = centres + self.step / 2
        if duration is not None:
            ends = np.where(index == self.count - 1, duration, np.minimum(ends, duration))
            starts = np.minimum(starts, duration)
        return starts, ends

    def _emit(self, duration: float | None) -> np.ndarray:
        out = []
        last = self.count if duration is not None else self.count - 1  # spans known
        if last <= self._first:
            return np.zeros((0, self.channels), np.float32)
        starts, ends = self._bounds(self._first, last, duration)
        known = float(ends[-1])
        values = self._values[: last - self._first]
        while not self._closed:
            begin = self._k * self.hop
            end = begin + self.window
            if duration is None:
                if end > known:
                    break
            else:
                if self._k > 0 and begin >= duration:
                    self._closed = True
                    break
                end = min(end, duration)
            pooled = pool_spans(starts, ends, values, begin, end, self.how)
            if pooled is None:  # a window inside no span: the nearest one's values
                pooled = values[-1].astype(np.float64)
            out.append(pooled.astype(np.float32))
            self._k += 1
            if duration is not None and begin + self.window >= duration:
                self._closed = True
        # forget the steps whose spans end before the next window starts
        keep = int(np.searchsorted(ends, self._k * self.hop, side="right"))
        keep = min(keep, max(0, last - self._first - 1))
        self._values = self._values[keep:]
        self._first += keep
        return np.stack(out) if out else np.zeros((0, self.channels), np.float32)

    def add(self, steps: np.ndarray) -> np.ndarray:
        """The next steps (steps, channels); the windows they close."""
        if len(steps):
            self._values = np.concatenate([self._values, np.asarray(steps, np.float32)])
            self.count += len(steps)
        return self._emit(None)

    def finish(self, duration: float) -> np.ndarray:
        """The end of the input (``duration`` seconds): the windows still open."""
        if not self.count or self._closed:
            return np.zeros((0, self.channels), np.float32)
        if self._k > 0 and (self._k - 1) * self.hop + self.window >= duration:
            return np.zeros((0, self.channels), np.float32)  # the last window reached the end
        return self._emit(duration)


def window_count(duration: float, window: float, hop: float | None = None) -> int:
    """How many windows an input of ``duration`` seconds has."""
    step = hop if hop is not None else window
    if duration <= window:
        return 1
    return int(math.ceil((duration - window) / step - 1e-9)) + 1
