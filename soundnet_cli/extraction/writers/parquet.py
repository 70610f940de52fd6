"""``--format parquet``: the features folder as one Parquet dataset (a table a user opens in
pandas, DuckDB, Polars or Hugging Face ``datasets``).

Files: ``part-<layer>-r<rank>-<run>-<n>.parquet``, one row per input, layer and step::

    path    string         the input as given (a path or URL)
    key     string         its output stem (the input's key; ``manifest.jsonl`` maps them)
    layer   string
    step    int32          the step's index (null when the folder pools: one row per input;
                           in a piece of a followed stream, the stream's step)
    start   float64        seconds: where the step's receptive field starts (clipped at 0)
    end     float64        seconds: where it ends (pooled rows: null)
    vector  fixed_size_list<float32 | float16>[channels]

Each layer has its own part files, since a fixed-size list has one size: with one layer
``SELECT count(*) FROM 'OUT/*.parquet'`` reads the table; with several, name the layer
(``'OUT/part-pool5-*.parquet'``). The folder's settings (``features.json``) are in every file's
schema metadata under ``soundnet``.

Inputs are buffered and written a part at a time (``inputs_per_part``), to a hidden temporary
file renamed when complete: a killed run leaves whole parts only, and the folder records an
input done only once its part is complete. A rerun skips inputs present in complete parts;
inputs computed again are first removed from the parts that hold them (:meth:`forget`), so no
input is ever in the table twice.

pyarrow is imported only here, and only when a folder of this format is written or read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.writers.base import (
    Finding,
    LayerStreams,
    Writer,
    WriteSpec,
    step_sinks,
)

DEFAULT_INPUTS_PER_PART = 256
PART = re.compile(r"^part-(?P<layer>.+)-r(?P<rank>\d+)-(?P<run>[0-9a-z]+)-(?P<n>\d+)\.parquet$")
META_KEY = b"soundnet"
DTYPES = ("float32", "float16")  # see writers.DTYPES
_READ_CACHE_PARTS = 4


def require_pyarrow() -> Any:
    """pyarrow, or a usage error saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageProblem(
            "the parquet format needs pyarrow: pip install 'soundnet-cli[parquet]'"
        ) from None
    return pq


@dataclass
class _Entry:
    path: str
    stem: str
    features: dict[str, np.ndarray]
    first_steps: Mapping[str, int] = field(default_factory=dict)  # a followed stream's piece


@dataclass
class _Index:
    """What the complete parts of a folder hold: key -> layer -> (rows, channels), and
    key -> layer -> the part file."""

    signature: tuple[tuple[str, int, int], ...] = ()
    shapes: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    parts: dict[str, dict[str, str]] = field(default_factory=dict)


class ParquetWriter(Writer):
    format = "parquet"
    suffix = ".parquet"

    def __init__(self, inputs_per_part: int = DEFAULT_INPUTS_PER_PART) -> None:
        self.inputs_per_part = inputs_per_part
        self.rank = 0
        self.run = f"{int(time.time()):x}{secrets.token_hex(2)}"
        self.sequence = 0
        self.buffer: list[_Entry] = []
        self.spec: WriteSpec | None = None
        self._index: dict[Path, _Index] = {}
        self._read_cache: OrderedDict[tuple[Path, str, int, int], dict[str, np.ndarray]] = (
            OrderedDict()
        )

    # -- names: one virtual name per input and layer (rows, not files), for collisions and
    # the manifest's ``outputs`` --
    def names(self, stem: str, layers: Sequence[str]) -> list[str]:
        return [f"{stem}.{layer}@parquet" for layer in layers]

    # -- writing --
    def start(self, out: Path, rank: int, spec: WriteSpec) -> None:
        require_pyarrow()
        self.rank, self.spec = rank, spec
        self.buffer.clear()
        self._index.pop(out, None)  # read afresh once; kept true by flush and forget after
        prefix = f"-r{rank:04d}-"
        for entry in os.scandir(out):  # temporaries a killed run of this rank left
            if (
                entry.name.startswith(".part-")
                and entry.name.endswith(".tmp")
                and prefix in entry.name
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def write(
        self,
        out: Path,
        stem: str,
        features: Mapping[str, np.ndarray],
        spec: WriteSpec,
        *,
        source: str = "",
    ) -> None:
        self.spec = spec
        self.buffer.append(
            _Entry(
                source or stem,
                stem,
                {n: features[n] for n in spec.layers},
                dict(spec.first_steps),
            )
        )
        if len(self.buffer) >= self.inputs_per_part:
            self.flush(out)

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
        """Steps go to scratch .npy files, then into the buffer as one input."""
        paths = {layer: scratch / f"{layer}.npy" for layer in spec.layers}
        with step_sinks(paths, shapes, spec.pool) as streams:
            yield streams
        features = {layer: np.load(paths[layer]) for layer in spec.layers}
        self.write(out, stem, features, spec, source=source)

    def pending(self) -> int:
        return len(self.buffer)

    def flush(self, out: Path) -> None:
        if not self.buffer or self.spec is None:
            return
        pq = require_pyarrow()
        entries, self.buffer = self.buffer, []
        spec = self.spec
        for layer in spec.layers:
            table = _table(entries, layer, spec)
            self.sequence += 1
            name = f"part-{layer}-r{self.rank:04d}-{self.run}-{self.sequence:05d}.parquet"
            tmp = out / f".{name}.tmp"
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, out / name)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            index = self._index.get(out)
            if index is not None:  # keep the index true without reading the part back
                for entry in entries:
                    values = entry.features[layer]
                    shape = (1, values.shape[0]) if values.ndim == 1 else values.shape
                    index.shapes.setdefault(entry.stem, {})[layer] = (int(shape[0]), int(shape[1]))
                    index.parts.setdefault(entry.stem, {})[layer] = name

    def forget(self, out: Path, stems: Sequence[str]) -> None:
        index = self.index(out)
        drop = {s for s in stems if s in index.parts}
        if not drop:
            return
        pq = require_pyarrow()
        import pyarrow as pa
        import pyarrow.compute as pc

        parts = {part for s in drop for part in index.parts[s].values()}
        for part in sorted(parts):
            path = out / part
            table = pq.read_table(path)
            keep = pc.invert(pc.is_in(table["key"], value_set=pa.array(sorted(drop))))
            kept = table.filter(keep)
            if kept.num_rows == 0:
                path.unlink()
                continue
            tmp = out / f".{part}.tmp"
            pq.write_table(kept.replace_schema_metadata(table.schema.metadata), tmp)
            os.replace(tmp, path)
        self._index.pop(out, None)
        self._read_cache.clear()

    def copy(self, out: Path, stem: str, to_stem: str, layers: Sequence[str], source: str) -> None:
        for entry in self.buffer:
            if entry.stem == stem:
                self.buffer.append(_Entry(source, to_stem, entry.features))
                return
        features = {layer: self._rows(out, layer, stem) for layer in layers}
        self.buffer.append(_Entry(source, to_stem, features))

    def _rows(self, out: Path, layer: str, stem: str) -> np.ndarray:
        part = self.index(out).parts[stem][layer]
        return self.read(out / part, layer, stem)

    # -- resume --
    def index(self, out: Path, *, fresh: bool = False) -> _Index:
        """What the complete parts under ``out`` hold. A run's writer reads it once (other
        ranks' parts never hold its inputs) and keeps it true as it writes; ``fresh`` looks
        at the folder again (a reader), reading it again only when a part changed."""
        cached = self._index.get(out)
        if cached is not None and not fresh:
            return cached
        signature = _signature(out)
        if cached is not None and cached.signature == signature:
            return cached
        pq = require_pyarrow()
        index = _Index(signature)
        for name, _, _ in signature:
            match = PART.match(name)
            if match is None:
                continue
            table = pq.read_table(out / name, columns=["key"])
            width = pq.read_schema(out / name).field("vector").type.list_size
            keys, counts = np.unique(
                table["key"].to_numpy(zero_copy_only=False), return_counts=True
            )
            for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
                index.shapes.setdefault(key, {})[match["layer"]] = (int(count), int(width))
                index.parts.setdefault(key, {})[match["layer"]] = name
        self._index[out] = index
        return index

    def check(self, out: Path, stem: str, shapes: Mapping[str, Sequence[int] | None]) -> Finding:
        held = self.index(out).shapes.get(stem, {})
        missing = tuple(layer for layer in shapes if layer not in held)
        for layer, shape in shapes.items():
            if layer in missing or shape is None:
                continue
            rows, width = held[layer]
            expected = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
            if (rows, width) != tuple(expected):
                return Finding(
                    damage=f"{stem}: layer {layer!r} has {rows} rows of {width} values in the "
                    f"table, the manifest recorded shape {list(shape)}"
                )
        return Finding(missing=missing)

    # -- reading --
    def parse(self, rel: str) -> tuple[str, str | None] | None:
        match = PART.match(rel)
        return (rel, match["layer"]) if match else None

    def holds(self, path: Path, layer: str) -> bool:
        match = PART.match(path.name)
        return match is not None and match["layer"] == layer

    def layers_in(self, folder: Path, files: Sequence[str]) -> set[str]:
        return {m["layer"] for rel in files if (m := PART.match(rel)) is not None}

    def find(self, folder: Path, files: Sequence[str], layer: str) -> dict[str, Path]:
        wanted = set(files)
        found: dict[str, Path] = {}
        for key, parts in self.index(folder, fresh=True).parts.items():
            part = parts.get(layer)
            if part is not None and part in wanted:
                found[key] = folder / part
        return found

    def read(self, path: Path, layer: str, key: str) -> np.ndarray:
        info = path.stat()  # a part rewritten since (forget) is read again
        cache_key = (path, layer, info.st_size, info.st_mtime_ns)
        rows = self._read_cache.get(cache_key)
        if rows is None:
            rows = _read_part(path)
            self._read_cache[cache_key] = rows
            while len(self._read_cache) > _READ_CACHE_PARTS:
                self._read_cache.popitem(last=False)
        else:
            self._read_cache.move_to_end(cache_key)
        return rows[key]


def _signature(out: Path) -> tuple[tuple[str, int, int], ...]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(out):
            if PART.match(entry.name) and entry.is_file():
                info = entry.stat()
                found.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(found))


def _table(entries: Sequence[_Entry], layer: str, spec: WriteSpec) -> Any:
    """One layer's rows of ``entries`` as an Arrow table with the folder's settings."""
    import pyarrow as pa

    settings = dict(spec.provenance)
    dtype = np.dtype(settings.get("dtype") or "float32")
    geometry = (settings.get("layers") or {}).get(layer) or {}
    rate = float(settings.get("sample_rate") or 1)
    stride = float(geometry.get("stride", 0)) / rate
    field_span = float(geometry.get("receptive_field", 0)) / rate
    offset = float(geometry.get("offset", 0)) / rate
    paths: list[str] = []
    keys: list[str] = []
    steps: list[int | None] = []
    starts: list[float] = []
    ends: list[float | None] = []
    blocks: list[np.ndarray] = []
    for entry in entries:
        values = np.asarray(entry.features[layer])
        if values.ndim == 1:  # pooled: one row per input
            paths.append(entry.path)
            keys.append(entry.stem)
            steps.append(None)
            starts.append(0.0)
            ends.append(None)
            blocks.append(values[None, :])
            continue
        count = values.shape[0]
        begin = int(entry.first_steps.get(layer, 0))  # a piece continues its stream's steps
        paths.extend([entry.path] * count)
        keys.extend([entry.stem] * count)
        steps.extend(range(begin, begin + count))
        if spec.windows:  # step k: the window [k * hop, k * hop + window)
            window = float(settings.get("window") or 0.0)
            first = np.arange(begin, begin + count) * float(settings.get("hop") or window)
            starts.extend(first.tolist())
            ends.extend((first + window).tolist())
        else:
            first = offset + np.arange(begin, begin + count) * stride
            starts.extend(np.maximum(first, 0.0).tolist())
            ends.extend((first + field_span).tolist())
        blocks.append(values)
    channels = int(blocks[0].shape[1]) if blocks else int(geometry.get("channels", 0))
    flat = (
        np.concatenate(blocks).astype(dtype, copy=False).reshape(-1)
        if blocks
        else np.zeros(0, dtype)
    )
    value_type = pa.float16() if dtype == np.float16 else pa.float32()
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), channels)
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("key", pa.string()),
            ("layer", pa.string()),
            ("step", pa.int32()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("vector", pa.list_(value_type, channels)),
        ],
        metadata={META_KEY: json.dumps(settings).encode()},
    )
    columns = [
        pa.array(paths, pa.string()),
        pa.array(keys, pa.string()),
        pa.array([layer] * len(keys), pa.string()),
        pa.array(steps, pa.int32()),
        pa.array(starts, pa.float64()),
        pa.array(ends, pa.float64()),
        vectors,
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _read_part(path: Path) -> dict[str, np.ndarray]:
    """Key -> float32 (steps, channels), or (channels,) for pooled rows, of one part."""
    pq = require_pyarrow()
    table = pq.read_table(path, columns=["key", "step", "vector"])
    width = table.schema.field("vector").type.list_size
    keys = table["key"].to_numpy(zero_copy_only=False)
    steps = table["step"].to_numpy(zero_copy_only=False)
    flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(-1, width)
    rows: dict[str, np.ndarray] = {}
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    for group in np.split(order, bounds):
        if group.size == 0:
            continue
        key = str(keys[group[0]])
        step = steps[group]
        if group.size == 1 and (
            step[0] is None or (isinstance(step[0], float) and np.isnan(step[0]))
        ):
            rows[key] = vectors[group[0]].copy()
            continue
        rows[key] = vectors[group[np.argsort(step.astype(np.int64), kind="stable")]]
    return rows


__all__ = ["DEFAULT_INPUTS_PER_PART", "DTYPES", "ParquetWriter", "require_pyarrow"]
