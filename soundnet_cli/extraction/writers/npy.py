"""``--format npy``: one float32 ``.npy`` per input and layer, ``<stem>.<layer>.npy``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from soundnet_cli.atomic import atomic_file, atomic_path
from soundnet_cli.extraction.writers.base import (
    Finding,
    LayerStreams,
    Writer,
    WriteSpec,
    npy_header,
    save_npy,
    step_sinks,
)


class NpyWriter(Writer):
    format = "npy"
    suffix = ".npy"

    def names(self, stem: str, layers: Sequence[str]) -> list[str]:
        return [f"{stem}.{layer}.npy" for layer in layers]

    def write(
        self,
        out: Path,
        stem: str,
        features: Mapping[str, np.ndarray],
        spec: WriteSpec,
        *,
        source: str = "",
    ) -> None:
        for layer, name in zip(spec.layers, self.names(stem, spec.layers), strict=True):
            with atomic_file(out / name) as handle:
                save_npy(handle, features[layer])

    @contextlib.contextmanager
    def stream(
        self,
        out: Path,
        stem: str,
        shapes: Mapping[str, tuple[int, int]],
        spec: WriteSpec,
        scratch: Path,
        *,
        source: str = "",
    ) -> Iterator[LayerStreams]:
        with contextlib.ExitStack() as stack:
            paths = {
                layer: stack.enter_context(atomic_path(out / name))
                for layer, name in zip(spec.layers, self.names(stem, spec.layers), strict=True)
            }
            with step_sinks(paths, shapes, spec.pool) as streams:
                yield streams

    def check(self, out: Path, stem: str, shapes: Mapping[str, Sequence[int] | None]) -> Finding:
        missing = []
        for layer, shape in shapes.items():
            name = f"{stem}.{layer}.npy"
            if not (out / name).is_file():
                missing.append(layer)
                continue
            problem = npy_problem(out / name, shape)
            if problem is not None:
                return Finding(damage=f"{name}: {problem}")
        return Finding(missing=tuple(missing))

    def parse(self, rel: str) -> tuple[str, str | None] | None:
        if not rel.endswith(".npy"):
            return None
        stem, _, layer = rel[: -len(".npy")].rpartition(".")
        return (stem, layer) if stem else None

    def holds(self, path: Path, layer: str) -> bool:
        parsed = self.parse(path.name)
        return parsed is not None and parsed[1] == layer

    def read(self, path: Path, layer: str, key: str) -> np.ndarray:
        return np.asarray(np.load(path, allow_pickle=False))


def npy_problem(path: Path, shape: Sequence[int] | None = None) -> str | None:
    """Why the .npy at ``path`` is not a complete float32 array (of ``shape``), or None."""
    try:
        with open(path, "rb") as handle:
            found, data_bytes = npy_header(handle)
            start = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if size != start + data_bytes:
        return f"truncated or padded ({size} bytes, the header asks for {start + data_bytes})"
    if shape is not None and list(found) != list(shape):
        return f"shape {list(found)}, the manifest recorded {list(shape)}"
    return None
