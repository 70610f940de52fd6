"""``manifest.jsonl`` of a features folder: one row per input, fed by a journal all ranks share."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from soundnet_cli.atomic import atomic_path

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"
LOCK = ".manifest.lock"


class FeatureManifest:
    """``manifest.jsonl`` (one row per input, rewritten atomically) fed by an append-only
    journal shared by all ranks under a file lock."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST
        self.journal = out / JOURNAL
        self.lock_path = out / LOCK

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, row: dict[str, Any]) -> None:
        # The leading newline keeps a row whole even after a line cut short by kill -9.
        line = "\n" + json.dumps(row, ensure_ascii=False) + "\n"
        with self._locked(), open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(line)

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict) and "key" in row:
                        rows.append(row)
        return rows

    def rows(self) -> dict[str, dict[str, Any]]:
        """Latest row per input key, from the manifest then the journal.

        A row that adds layers in their own files keeps the earlier row's other layers (a run
        with ``--layer pool5`` into a folder that holds conv5 features lists both)."""
        merged: dict[str, dict[str, Any]] = {}
        for row in [*self._read(self.path), *self._read(self.journal)]:
            earlier = merged.get(row["key"])
            merged[row["key"]] = _carry_layers(earlier, row) if earlier else row
        return merged

    def merge(self) -> dict[str, dict[str, Any]]:
        """Fold the journal into ``manifest.jsonl`` (sorted by key); empty the journal."""
        with self._locked():
            merged = self.rows()
            with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                for key in sorted(merged):
                    handle.write(json.dumps(merged[key], ensure_ascii=False) + "\n")
            with contextlib.suppress(FileNotFoundError):
                self.journal.unlink()
        return merged


def _carry_layers(earlier: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    if earlier.get("status") != "ok" or row.get("status") != "ok":
        return row
    outputs = list(row.get("outputs") or [])
    layers = dict(row.get("layers") or {})
    old_outputs = earlier.get("outputs") or []
    old_layers = earlier.get("layers") or {}
    if not isinstance(old_layers, dict) or any(name in outputs for name in old_outputs):
        return row  # the same file rewritten (an .npz): it holds only what the new row says
    for name in old_outputs:
        outputs.append(name)
    for layer, info in old_layers.items():
        layers.setdefault(layer, info)
    return {**row, "outputs": outputs, "layers": layers}
