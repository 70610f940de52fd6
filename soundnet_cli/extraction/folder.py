"""The features folder that `soundnet extract` writes, and that search, evaluation, probes,
prediction and visualize read: its one owner.

Layout of a folder ``OUT``::

    OUT/features.json            the settings every value depends on (:class:`FolderSettings`)
    OUT/manifest.jsonl           one row per input: path, key, duration, status, outputs, error
    OUT/<stem>...                the outputs, as the format's writer names them
                                 (``extraction/writers/``: npy, npz)

``<stem>`` is the input's key (its path relative to the common folder of the inputs, without
its extension: ``inputs.output_stems``), so the outputs mirror the input tree; a key whose last
part would make a file name longer than the file system allows is shortened
(:func:`output_stem`), and the manifest row maps the key to its outputs.

:class:`FeatureFolder` owns the names and their collisions, the settings file (a run whose
settings differ is refused), the lock that keeps one run per folder and rank, resume planning
(finished outputs are checked, damaged ones redone, added layers computed), mirroring of
symlinked routes, and the manifest rows. :func:`list_feature_files` and
:func:`read_feature_file` read a folder back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from soundnet_cli._version import __version__
from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem, reason
from soundnet_cli.extraction.chunks import step_times
from soundnet_cli.extraction.inputs import Source
from soundnet_cli.extraction.manifest import MANIFEST, FeatureManifest
from soundnet_cli.extraction.writers import (
    WRITERS,
    Writer,
    new_writer,
    writer_for,
    writer_of_file,
)
from soundnet_cli.extraction.writers.base import LayerStreams, WriteSpec
from soundnet_cli.media.audio import RESAMPLER, SCALE

log = logging.getLogger(__name__)

SETUP = "features.json"
SCRATCH = ".scratch-rank"
# Longest output file name: the temporary ``.<name>.<8 hex>.part`` beside it must fit NAME_MAX
# (255 bytes on every common file system).
NAME_MAX = 255
MAX_OUTPUT_NAME = NAME_MAX - len("..12345678.part")
# Bytes kept free after a stem for the format's suffix (``.<layer>.npy``): a stem's shortening
# does not depend on the layers of one run as long as layer names are up to 11 bytes.
SUFFIX_RESERVE = 16
# What folders written before these settings were recorded were made with: every earlier
# version resampled with libsoxr HQ, and fp32 is the default precision. A folder extracted
# in bf16/fp16 by an earlier version cannot be told apart: it is taken as fp32.
ASSUMED_FOR_OLD_FOLDERS = {"precision": "fp32", "resampler": RESAMPLER, "dtype": "float32"}


# -- settings ----------------------------------------------------------------------------------
@dataclass
class FolderSettings:
    """Every setting the values in a folder depend on; stored as ``features.json``."""

    architecture: str  # the student
    checkpoint: str | None
    checkpoint_sha256: str | None
    sample_rate: int
    layers: dict[str, dict[str, int]]  # name -> channels, stride, receptive_field, offset
    fmt: str
    pool: str | None
    mix: str
    precision: str = "fp32"
    resampler: str = RESAMPLER
    dtype: str = "float32"  # of the stored vectors (float16: the parquet format only)
    window: float | None = None  # seconds: pooled over sliding windows (with ``pool``)
    hop: float | None = None  # seconds between window starts

    # the settings two runs into one folder must share, as named in features.json
    SHARED: ClassVar[tuple[str, ...]] = (
        "architecture",
        "checkpoint_sha256",
        "sample_rate",
        "precision",
        "resampler",
        "mix",
        "pool",
        "format",
        "dtype",
        "window",
        "hop",
    )

    def as_dict(self) -> dict[str, Any]:
        if self.window is not None:  # recorded only when set: other folders read as before
            return {
                **self._as_dict(),
                "window": self.window,
                "hop": self.hop,
                "times": "window i covers [i * hop, i * hop + window) seconds (the last one "
                "cut at the end of the input); its steps pooled by their overlap with it",
            }
        return self._as_dict()

    def _as_dict(self) -> dict[str, Any]:
        return {
            "soundnet_cli": __version__,
            "architecture": self.architecture,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sample_rate": self.sample_rate,
            "layers": self.layers,
            "format": self.fmt,
            "pool": self.pool,
            "mix": self.mix,
            "precision": self.precision,
            "resampler": self.resampler,
            "dtype": self.dtype,
            "scale": SCALE,
            "times": "centre of step i = (offset + i * stride + (receptive_field - 1) / 2) "
            "/ sample_rate seconds",
        }

    def difference(self, recorded: Mapping[str, Any]) -> str | None:
        """The first setting in which ``recorded`` (an existing features.json) differs from
        these, worded ``precision was 'fp32', now 'bf16'``; None when they agree. Settings an
        older folder did not record are taken from :data:`ASSUMED_FOR_OLD_FOLDERS`."""
        mine = self.as_dict()
        for key in self.SHARED:
            theirs = recorded.get(key, ASSUMED_FOR_OLD_FOLDERS.get(key))
            if key == "sample_rate" and key not in recorded:
                continue  # not recorded by the first versions; always 22,050 then
            if theirs != mine.get(key):
                return f"{key} was {theirs!r}, now {mine.get(key)!r}"
        return None


def read_settings(folder: Path) -> dict[str, Any] | None:
    """The folder's ``features.json`` as recorded, or None when absent or unreadable."""
    try:
        data = json.loads((folder / SETUP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- names -------------------------------------------------------------------------------------
def output_stem(key: str, suffix_bytes: int = SUFFIX_RESERVE) -> str:
    """``key``, or where its last part plus a suffix of ``suffix_bytes`` would make a file name
    longer than :data:`MAX_OUTPUT_NAME` bytes, the key with that part cut and ``~`` plus 8 hex
    digits of the key's sha256 appended (distinct keys keep distinct stems)."""
    budget = MAX_OUTPUT_NAME - max(suffix_bytes, SUFFIX_RESERVE)
    if len(key) * 4 <= budget:  # at most 4 bytes a character: the common case, no encoding
        return key
    head, _, base = key.rpartition("/")
    encoded = base.encode("utf-8", "surrogateescape")
    if len(encoded) <= budget:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    cut = encoded[: budget - 9].decode("utf-8", "ignore")  # never half a character
    return f"{head}/{cut}~{digest}" if head else f"{cut}~{digest}"


@dataclass
class Plan:
    """What resume found: the inputs still to compute and what it did with the others."""

    todo: list[Source] = field(default_factory=list)
    skipped: int = 0  # routes whose outputs were finished
    mirrored: int = 0  # routes given a finished file's outputs now
    redone: list[str] = field(default_factory=list)  # damaged outputs found: why


class FeatureFolder:
    """One features folder as one run of `soundnet extract` sees it (see the module doc)."""

    def __init__(self, path: Path, settings: FolderSettings, *, rank: int = 0) -> None:
        self.path, self.settings, self.rank = Path(path), settings, rank
        self.layers = list(settings.layers)
        self.writer: Writer = new_writer(settings.fmt)
        self._held: list[dict[str, Any]] = []  # rows of inputs a table format has not committed
        self.lost: list[tuple[str, str]] = []  # (path, error): held inputs whose part failed
        self.spec = WriteSpec(
            layers=tuple(self.layers),
            pool=settings.pool,
            provenance=settings.as_dict(),
            times=self._times,
            windows=settings.window is not None,
        )
        self.manifest = FeatureManifest(self.path)
        self._suffix_bytes = max(len(n.encode()) for n in self.writer.names("", self.layers))
        self.timing = {  # of every manifest row
            name: {
                "first_time": round(float(self._times(name, 1)[0]), 9),
                "step_seconds": (
                    settings.hop or settings.window
                    if settings.window is not None
                    else geometry["stride"] / settings.sample_rate
                ),
            }
            for name, geometry in settings.layers.items()
        }

    def _times(self, layer: str, steps: int, first: int = 0) -> np.ndarray:
        """Seconds of steps ``first`` to ``first + steps``: their centres, or where each
        window starts when the folder pools over windows."""
        if self.settings.window is not None:
            hop = self.settings.hop or self.settings.window
            return np.arange(first, first + steps, dtype=np.float64) * hop
        geometry = SimpleNamespace(**self.settings.layers[layer])
        return step_times(geometry, steps, self.settings.sample_rate, first)

    # -- names --
    def stem(self, key: str) -> str:
        """The output stem of the input called ``key`` (:func:`output_stem`)."""
        return output_stem(key, self._suffix_bytes)

    def names(self, key: str) -> list[str]:
        """The outputs of the input called ``key``, relative to the folder."""
        return self.writer.names(self.stem(key), self.layers)

    def check_distinct(self, sources: Iterable[Source]) -> None:
        """Refuse, before any work, routes whose outputs would land on one file, or on a folder
        that another route's outputs need (``x.pool5.npy`` the file and ``x.pool5.npy/`` the
        folder); the message names both inputs."""
        files: dict[str, str] = {}
        for source in sources:
            for route in source.routes:
                for name in self.names(route.key):
                    other = files.setdefault(name, route.file)
                    if other != route.file:
                        raise UsageProblem(
                            f"{other} and {route.file} would both be written to {name}; rename one"
                        )
        owners: dict[str, str] = {}  # folder -> an input whose outputs lie inside it
        for name, file in files.items():
            for parent in _parents(name):
                owners.setdefault(parent, file)
        for name, file in files.items():
            if name in owners:
                raise UsageProblem(
                    f"the output {name} of {file} would also be a folder of the outputs of "
                    f"{owners[name]}; rename one"
                )

    # -- the folder, its lock and its settings --
    def create(self) -> None:
        """Make the folder (and its parents); one-line errors when that is impossible."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UsageProblem(
                f"{out} is a file; name a folder (it is created if missing)", parameter="out"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SoundnetError(f"cannot create the output folder {out}: {exc.strerror}") from exc
        if not os.access(out, os.W_OK | os.X_OK):
            raise SoundnetError(f"cannot write to the output folder {out}: permission denied")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``OUT/.extract-rank<rank>.lock`` for the run: a second run into the same folder
        stops with a clear error instead of deleting the first one's temporary files. The ranks
        of one torchrun job take different locks and share the folder."""
        path = self.path / f".extract-rank{self.rank}.lock"
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SoundnetError(
                    f"{self.path} is in use by another `soundnet extract` (rank {self.rank}); "
                    "wait for it to finish, or write to another --out"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_settings(self, overwrite: bool) -> None:
        """Write ``features.json``; refuse a folder whose recorded settings differ (unless
        ``overwrite``). Layers recorded earlier are kept."""
        target = self.path / SETUP
        mine = self.settings.as_dict()
        existing = read_settings(self.path) if not overwrite else None
        if existing is not None:
            difference = self.settings.difference(existing)
            if difference is not None:
                raise UsageProblem(
                    f"{self.path} holds features from a different setup ({difference}); "
                    "write to a new --out, or use --overwrite to redo every input"
                )
            recorded = existing.get("layers")
            if isinstance(recorded, dict):
                mine["layers"] = {**recorded, **mine["layers"]}
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")

    # -- resume --
    def plan(self, mine: Sequence[Source], overwrite: bool) -> Plan:
        """The inputs still to compute. Finished outputs are trusted only when complete and of
        the shape their manifest row records; damaged ones are redone and listed in
        ``Plan.redone``; inputs lacking a layer asked for now are computed again (logged as an
        addition). Routes that link to a finished file get its outputs now."""
        self.writer.start(self.path, self.rank, self.spec)
        previous = self.manifest.rows()
        plan = Plan()
        for source in mine:
            row = None if overwrite else self._finished(source, previous, plan)
            if row is None:
                plan.todo.append(source)
                continue
            if previous.get(source.key) is not row:
                self.manifest.append(row)
            plan.skipped += 1
            for alias in source.aliases:
                done = self._finished(alias, previous, plan)
                if done is None:
                    self.manifest.append(self.mirror(row, alias))
                    plan.mirrored += 1
                else:
                    if previous.get(alias.key) is not done:
                        self.manifest.append(done)
                    plan.skipped += 1
        targets = (self.path / n for s in plan.todo for r in s.routes for n in self.names(r.key))
        self._remove_stale_temporaries(targets)
        self.writer.forget(self.path, [self.stem(r.key) for s in plan.todo for r in s.routes])
        return plan

    def _finished(
        self, source: Source, previous: dict[str, dict[str, Any]], plan: Plan
    ) -> dict[str, Any] | None:
        """The manifest row of ``source``'s finished outputs (recovered when it has none), or
        None when they are missing, lack a layer, or are damaged."""
        names = self.names(source.key)
        row = previous.get(source.key)
        if row is not None and (
            row.get("status") != "ok" or not set(names) <= set(row.get("outputs") or [])
        ):
            row = None
        recorded = (row or {}).get("layers") or {}
        if not isinstance(recorded, dict):
            recorded = {}
        shapes = {
            layer: info.get("shape") if isinstance(info := recorded.get(layer), dict) else None
            for layer in self.layers
        }
        finding = self.writer.check(self.path, self.stem(source.key), shapes)
        if finding.damage is not None:
            plan.redone.append(f"{source.path}: {finding.damage}; extracted again")
            return None
        if finding.missing:
            lost = [layer for layer in finding.missing if layer in recorded]
            if lost and all((self.path / n).is_file() for n in names):
                # an output that exists and lacks a layer its row says it holds: damaged
                plan.redone.append(
                    f"{source.path}: {names[0]}: no layer {lost[0]!r} inside, the manifest "
                    "recorded it; extracted again"
                )
                return None
            if len(finding.missing) < len(self.layers):
                log.info(
                    "%s: adding layer%s %s",
                    source.path,
                    "s" if len(finding.missing) > 1 else "",
                    ", ".join(finding.missing),
                )
            return None
        return row if row is not None else self._recovered_row(source)

    def discard_temporaries(self, source: Source) -> None:
        """Remove what an interrupted write of ``source`` may have left: a Ctrl-C can land
        between a temporary file's creation and the code that would remove it."""
        self._remove_stale_temporaries(self.path / n for n in self.names(source.key))

    def _remove_stale_temporaries(self, targets: Iterable[Path]) -> None:
        """Delete temporary files a killed run left beside this rank's outputs, and its
        scratch folder."""
        shutil.rmtree(self.path / f"{SCRATCH}{self.rank}", ignore_errors=True)
        wanted: dict[Path, set[str]] = {}
        for target in targets:
            wanted.setdefault(target.parent, set()).add(target.name)
        for folder, names in wanted.items():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if (
                    entry.name.startswith(".")
                    and entry.name.endswith(".part")
                    and entry.name[1:].rsplit(".", 2)[0] in names
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    # -- writing --
    def write(self, source: Source, features: Mapping[str, np.ndarray]) -> None:
        """Write one input's features (pooled already when the folder pools)."""
        try:
            self.writer.write(
                self.path, self.stem(source.key), features, self.spec, source=source.display
            )
        except OSError as exc:
            self._lose_held(exc)
            raise

    @contextlib.contextmanager
    def stream(
        self, source: Source, shapes: Mapping[str, tuple[int, int]]
    ) -> Iterator[LayerStreams]:
        """Write one long input step by step; nothing is kept unless the block completes."""
        folder = self.path / f"{SCRATCH}{self.rank}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            with self.writer.stream(
                self.path, self.stem(source.key), shapes, self.spec, folder, source=source.display
            ) as streams:
                yield streams
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- a followed stream, in pieces --
    def taken(self, key: str) -> str | None:
        """What of the input ``key`` (a live input's name) the folder holds already: its
        outputs, or pieces of a followed stream (``key/NNNNNN``); None when nothing."""
        finding = self.writer.check(self.path, self.stem(key), dict.fromkeys(self.layers))
        if finding.damage is not None or len(finding.missing) < len(self.layers):
            return f"the outputs of {key}"
        prefix = f"{key}/"
        if any(k.startswith(prefix) for k in self.manifest.rows()) or (self.path / key).is_dir():
            return f"pieces of {key} (a followed stream)"
        return None

    def write_piece(
        self,
        stream: Source,
        index: int,
        features: Mapping[str, np.ndarray],
        first_steps: Mapping[str, int],
        duration: float,
    ) -> Source:
        """Write piece ``index`` of the followed stream ``stream``: an input of its own, keyed
        ``<key>/<index:06d>``, whose steps continue the stream's (``first_steps``: the stream's
        step each layer's piece starts at; step numbers and times count from the stream's
        start). Its files are written whole (a table format commits a part at once), then its
        manifest row, and ``manifest.jsonl`` is brought up to date for readers that tail it.
        ``duration``: seconds of audio that arrived for this piece."""
        piece = Source(stream.file, f"{stream.key}/{index:06d}")
        first = {name: int(first_steps.get(name, 0)) for name in self.layers}
        spec = replace(
            self.spec,
            times=lambda layer, steps: self._times(layer, steps, first[layer]),
            first_steps=first,
        )
        stem = self.stem(piece.key)
        self.writer.write(self.path, stem, features, spec, source=stream.display)
        self.writer.flush(self.path)
        row = self._row(piece, "ok", duration)
        row["layers"] = {
            name: {
                "shape": list(features[name].shape),
                "first_step": first[name],
                "first_time": round(float(self._times(name, 1, first[name])[0]), 9),
                "step_seconds": self.timing[name]["step_seconds"],
            }
            for name in self.layers
        }
        row["stream"] = stream.key
        row["piece"] = index
        self.manifest.append(row)
        self.manifest.merge()
        return piece

    # -- manifest rows --
    def _row(self, source: Source, status: str, duration: float | None) -> dict[str, Any]:
        return {
            "path": source.display,
            "key": source.key,
            "status": status,
            "duration": round(duration, 6) if duration is not None else None,
            "outputs": self.names(source.key) if status == "ok" else [],
            "error": None,
            "rank": self.rank,
        }

    def succeeded(
        self, source: Source, duration: float, shapes: Mapping[str, tuple[int, ...]]
    ) -> None:
        """Record ``source`` done (and give its other routes their outputs)."""
        row = self._row(source, "ok", duration)
        row["layers"] = {
            name: {
                "shape": (
                    [shapes[name][1]]
                    if self.settings.pool and self.settings.window is None
                    else list(shapes[name])
                ),
                **self.timing[name],
            }
            for name in self.layers
        }
        rows = [row, *(self.mirror(row, alias) for alias in source.aliases)]
        if self.writer.pending():  # recorded done once the table commits them
            self._held.extend(rows)
            return
        for done in [*self._held, *rows]:
            self.manifest.append(done)
        self._held.clear()

    def finish(self) -> None:
        """End of the run: a table format commits what it holds, then its rows are recorded."""
        try:
            self.writer.flush(self.path)
        except OSError as exc:
            self._lose_held(exc)
            raise
        for done in self._held:
            self.manifest.append(done)
        self._held.clear()

    def _lose_held(self, exc: OSError) -> None:
        """A table's part could not be written: the inputs it held are recorded as failed (a
        rerun computes them), never as done."""
        if self.writer.pending():
            return  # the buffer is intact: nothing was lost
        for row in self._held:
            error = f"{row['path']}: its part of the table could not be written: {reason(exc)}"
            self.manifest.append({**row, "status": "failed", "outputs": [], "error": error})
            self.lost.append((row["path"], error))
        self._held.clear()

    def failed(self, source: Source, error: str) -> None:
        """Record every route of ``source`` as failed with ``error``."""
        for route in source.routes:
            row = self._row(route, "failed", None)
            row["error"] = error
            self.manifest.append(row)

    def mirror(self, row: dict[str, Any], alias: Source) -> dict[str, Any]:
        """Outputs for another route to a finished file (a symlink to it): links to, or copies
        of, the finished outputs; returns the alias's manifest row."""
        names = self.names(alias.key)
        self.writer.copy(
            self.path, self.stem(row["key"]), self.stem(alias.key), self.layers, alias.display
        )
        layer_rows = row.get("layers") or {}
        return {
            **row,
            "path": str(alias.path),
            "key": alias.key,
            "outputs": names,
            "layers": {name: layer_rows[name] for name in self.layers if name in layer_rows},
            "copy_of": row["path"],
        }

    def _recovered_row(self, source: Source) -> dict[str, Any]:
        """A manifest row for outputs found complete on disk without one (a run killed before
        its manifest was written)."""
        duration = None
        with contextlib.suppress(Exception):
            import soundfile as sf

            duration = round(sf.info(str(source.path)).duration, 6)
        return self._row(source, "ok", duration)


def _parents(name: str) -> Iterator[str]:
    head, _, _ = name.rpartition("/")
    while head:
        yield head
        head, _, _ = head.rpartition("/")


# -- reading a features folder -----------------------------------------------------------------
@dataclass(frozen=True)
class FeatureFile:
    """One input's features for one layer, in a folder written by extract."""

    key: str  # the input's key: its path relative to the inputs, without extension
    layer: str
    path: Path  # the file that holds them (``<stem>.<layer>.npy``, ``<stem>.npz``, ...)
    source: str  # the input path from the manifest (the key when there is no row)


def list_feature_files(folder: Path, layer: str | None = None) -> tuple[str, list[FeatureFile]]:
    """The layer's features files under ``folder``, sorted by key, without reading them.

    ``layer`` may be omitted when the folder holds one layer. Hidden files and folders (the
    manifest's journal, a search index) are never taken for features. Files of the folder's
    recorded format are read; a folder without one (or an unknown one) is read in every
    builtin format, per-layer files first.
    """
    if not folder.is_dir():
        raise UsageProblem(f"{folder}: no such features folder")
    settings = read_settings(folder) or {}
    recorded = settings.get("layers")
    known = list(recorded) if isinstance(recorded, dict) else []
    fmt = settings.get("format")
    writers = [writer_for(fmt)] if fmt in WRITERS else [writer_for(f) for f in WRITERS]
    files: dict[Writer, list[str]] = {writer: [] for writer in writers}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        writer = writer_of_file(rel)
        if writer not in files or any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.is_file():
            files[writer].append(rel)
    if layer is None:
        named = set().union(*(w.layers_in(folder, rels) for w, rels in files.items()))
        layers = sorted(n for n in named if not known or n in known) or known
        if len(layers) != 1:
            what = ", ".join(layers) if layers else "none found"
            raise UsageProblem(f"{folder}: choose a layer (layers: {what})", parameter="layer")
        layer = layers[0]
    chosen: dict[str, Path] = {}
    for writer, rels in files.items():
        for stem, path in writer.find(folder, rels, layer).items():
            chosen.setdefault(stem, path)
    if not chosen:
        raise UsageProblem(f"{folder}: no features for layer {layer!r} (run `soundnet extract`)")
    # The manifest maps outputs to inputs (a shortened stem is not the input's key).
    by_output: dict[str, dict[str, Any]] = {}
    by_key: dict[str, dict[str, Any]] = {}
    for row in FeatureManifest(folder).rows().values():
        by_key[str(row.get("key"))] = row
        for name in row.get("outputs") or []:
            by_output[str(name)] = row
    found = []
    for stem, path in chosen.items():
        # a file per input is found by its name; a table's rows (many per file) by their key
        row = by_output.get(path.relative_to(folder).as_posix()) or by_key.get(stem, {})
        key = str(row.get("key", stem))
        found.append(FeatureFile(key, layer, path, str(row.get("path", key))))
    found.sort(key=lambda f: f.key)
    return layer, found


def read_feature_file(item: FeatureFile) -> np.ndarray:
    """The features of one :class:`FeatureFile`: float32 (time, channels), or (channels,) when
    extract pooled them."""
    writer = writer_of_file(item.path.name)
    if writer is None:
        raise SoundnetError(f"{item.path}: not a features file")
    return writer.read(item.path, item.layer, item.key)


__all__ = [
    "MANIFEST",
    "SETUP",
    "FeatureFile",
    "FeatureFolder",
    "FeatureManifest",
    "FolderSettings",
    "Plan",
    "list_feature_files",
    "output_stem",
    "read_feature_file",
    "read_settings",
]
