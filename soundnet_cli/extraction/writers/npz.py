"""``--format npz``: one ``<stem>.npz`` per input holding every layer, each layer's step
times (``<layer>_times``, unless pooled) and the folder's settings (``provenance``)."""

from __future__ import annotations

import contextlib
import json
import zipfile
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
    step_sinks,
)


class NpzWriter(Writer):
    format = "npz"
    suffix = ".npz"

    def names(self, stem: str, layers: Sequence[str]) -> list[str]:
        return [f"{stem}.npz"]

    def write(
        self,
        out: Path,
        stem: str,
        features: Mapping[str, np.ndarray],
        spec: WriteSpec,
        *,
        source: str = "",
    ) -> None:
        arrays: dict[str, np.ndarray] = {}
        for layer in spec.layers:
            arrays[layer] = np.ascontiguousarray(features[layer], dtype=np.float32)
            if spec.pool is None or spec.windows:
                arrays[f"{layer}_times"] = spec.times(layer, features[layer].shape[0])
        arrays["provenance"] = np.array(json.dumps(dict(spec.provenance)))
        with atomic_file(out / f"{stem}.npz") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

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
        """Each layer goes to a scratch .npy, then into the zip: never all in memory."""
        with atomic_path(out / f"{stem}.npz") as final:
            paths = {layer: scratch / f"{layer}.npy" for layer in spec.layers}
            with step_sinks(paths, shapes, spec.pool) as streams:
                yield streams
            with zipfile.ZipFile(final, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for layer in spec.layers:
                    archive.write(paths[layer], f"{layer}.npy")
                    if spec.pool is None or spec.windows:
                        times = spec.times(layer, shapes[layer][0])
                        with archive.open(f"{layer}_times.npy", "w", force_zip64=True) as handle:
                            np.save(handle, times)
                with archive.open("provenance.npy", "w") as handle:
                    np.save(handle, np.array(json.dumps(dict(spec.provenance))))

    def check(self, out: Path, stem: str, shapes: Mapping[str, Sequence[int] | None]) -> Finding:
        path = out / f"{stem}.npz"
        if not path.is_file():
            return Finding(missing=tuple(shapes))
        problem = npz_problem(path, shapes)
        if isinstance(problem, tuple):
            return Finding(missing=problem)
        return Finding(damage=f"{stem}.npz: {problem}" if problem else None)

    def parse(self, rel: str) -> tuple[str, str | None] | None:
        return (rel[: -len(".npz")], None) if rel.endswith(".npz") else None

    def holds(self, path: Path, layer: str) -> bool:
        """Whether the archive lists ``layer`` (its names only, nothing inflated); one that
        cannot be read is listed too, so the reader reports it as a failed file instead of the
        listing stopping on it."""
        try:
            with zipfile.ZipFile(path) as archive:
                return f"{layer}.npy" in archive.namelist()
        except (OSError, zipfile.BadZipFile, ValueError):
            return True

    def read(self, path: Path, layer: str, key: str) -> np.ndarray:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data[layer])


def npz_problem(
    path: Path, shapes: Mapping[str, Sequence[int] | None]
) -> str | tuple[str, ...] | None:
    """Why the .npz at ``path`` cannot be trusted (a string), the layers it lacks (a tuple:
    a layer added since), or None when it holds a complete member for each layer."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = tuple(layer for layer in shapes if f"{layer}.npy" not in names)
            for layer, shape in shapes.items():
                if layer in missing:
                    continue
                info = archive.getinfo(f"{layer}.npy")
                with archive.open(info) as handle:
                    found, data_bytes = npy_header(handle)
                    start = handle.tell()
                if info.file_size != start + data_bytes:
                    return f"layer {layer!r} truncated"
                if shape is not None and list(found) != list(shape):
                    return (
                        f"layer {layer!r} has shape {list(found)}, the manifest recorded "
                        f"{list(shape)}"
                    )
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"unreadable ({exc})"
    return missing or None
