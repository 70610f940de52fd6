"""Protocol features: a clip's layer activations as (time, channels) arrays, computed once per
model and clip and cached under ``$SOUNDNET_HOME/cache/features``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundnet_cli.atomic import atomic_path
from soundnet_cli.media.audio import Mix, Waveform, load_audio, tile

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student


def model_key(model: Student) -> str:
    """A name for the weights a model holds (``weights.identity.model_key``: the checkpoint's
    tensor-data hash, remembered by path, size and mtime; or the architecture at seed 0)."""
    from soundnet_cli.weights.identity import model_key as key_of

    return key_of(model)


def prepare_wave(wave: Waveform, repeat_to: float | None) -> np.ndarray:
    """The clip as the protocol feeds it: repeated circularly to ``repeat_to`` s if shorter."""
    if repeat_to is None:
        return wave.samples
    target = int(round(repeat_to * wave.sample_rate))
    return wave.samples if len(wave.samples) >= target else tile(wave.samples, target)


class FeatureCache:
    """One ``.npz`` per clip (all layers computed for it), keyed by path, size and mtime."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def default_root(key: str, protocol_tag: str) -> Path:
        from soundnet_cli.weights.home import soundnet_home

        return soundnet_home() / "cache" / "features" / key / protocol_tag

    def _file(self, path: Path) -> Path:
        stat = path.stat()
        ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return self.root / f"{hashlib.sha1(ident.encode()).hexdigest()}.npz"

    def get(self, path: Path, layers: Sequence[str]) -> dict[str, np.ndarray] | None:
        file = self._file(path)
        if not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as data:
                if not set(layers) <= set(data.files):
                    return None
                return {layer: data[layer] for layer in layers}
        except (OSError, ValueError):
            return None  # a damaged cache entry is recomputed

    def put(self, path: Path, features: dict[str, np.ndarray]) -> None:
        with atomic_path(self._file(path)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **features)  # type: ignore[arg-type]


def clip_features(
    model: Student, wave: np.ndarray, layers: Sequence[str], device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Run the model once for all ``layers``; each becomes float32 (time, channels)."""
    import torch

    from soundnet_cli.students.contract import check_taps

    with torch.inference_mode():
        taps = model.forward_features(
            torch.from_numpy(np.ascontiguousarray(wave)).to(device), list(layers)
        )
    check_taps(model, taps, list(layers), 1, len(wave))
    return {layer: taps[layer][0].transpose(0, 1).float().cpu().numpy() for layer in layers}


def compute_features(
    model: Student,
    paths: Sequence[Path],
    layers: Sequence[str],
    *,
    repeat_to: float | None,
    mix: Mix = "first",
    cache: FeatureCache | None = None,
    device: str = "cpu",
    on_clip: Callable[[], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Features of every clip in order; audio is decoded in a background thread while the model
    runs, and cached clips are not decoded at all."""
    results: list[dict[str, np.ndarray] | None] = [
        cache.get(p, layers) if cache else None for p in paths
    ]
    todo = [i for i, r in enumerate(results) if r is None]

    def decode(i: int) -> np.ndarray:
        return prepare_wave(load_audio(paths[i], mix=mix), repeat_to)

    for _ in range(len(paths) - len(todo)):
        if on_clip:
            on_clip()
    for i, wave in _prefetch(decode, todo):
        feats = clip_features(model, wave, layers, device)
        if cache:
            cache.put(paths[i], feats)
        results[i] = feats
        if on_clip:
            on_clip()
    return [r for r in results if r is not None]


def _prefetch(
    work: Callable[[int], np.ndarray], items: list[int], depth: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [(i, pool.submit(work, i)) for i in items[:depth]]
        next_item = depth
        while pending:
            i, future = pending.pop(0)
            if next_item < len(items):
                pending.append((items[next_item], pool.submit(work, items[next_item])))
                next_item += 1
            yield i, future.result()
