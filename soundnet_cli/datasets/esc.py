"""The ESC-50 and ESC-10 layouts (Piczak 2015): five folds of 5-s clips."""

from __future__ import annotations

from pathlib import Path

from soundnet_cli.datasets.base import Clip, Dataset, DatasetError, Protocol
from soundnet_cli.datasets.labels import check_labels, read_table


class ESC50(Dataset):
    """The ESC-50 layout: ``ROOT/meta/esc50.csv`` (filename, fold, target, category, esc10,
    src_file, take) and ``ROOT/audio/<filename>``. Clips are 5 s; the protocol repeats them to
    10 s and uses 1-s windows."""

    name = "esc50"
    protocol = Protocol(repeat_to=10.0, window_seconds=1.0)
    esc10_only = False

    def clips(self, root: Path) -> list[Clip]:
        meta = root / "meta" / "esc50.csv"
        if not meta.is_file():
            raise DatasetError(f"{root}: not an ESC-50 layout (no meta/esc50.csv)")
        header, rows = read_table(meta, error=DatasetError)
        needed = {"filename", "fold", "category", "src_file", "esc10"}
        if not needed <= set(header):
            raise DatasetError(f"{meta}: expected columns {', '.join(sorted(needed))}")
        for row in rows:
            if not row["fold"].strip():
                raise DatasetError(f"{meta} line {row.line}: the fold is empty")
        check_labels(
            meta,
            [(r.line, r["filename"], r["category"]) for r in rows],
            inside=root / "audio",
            error=DatasetError,
        )
        if self.esc10_only:
            rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
        clips = [
            Clip(root / "audio" / r["filename"], r["category"], r["fold"].strip(), r["src_file"])
            for r in rows
        ]
        missing = [c.path.name for c in clips if not c.path.is_file()]
        if missing:
            raise DatasetError(
                f"{root}/audio lacks {len(missing)} clip(s) listed in "
                f"meta/esc50.csv, e.g. {missing[0]}"
            )
        if not clips:
            raise DatasetError(f"{meta}: no clips")
        return sorted(clips, key=lambda c: c.path.name)


class ESC10(ESC50):
    """The ESC-10 subset: the rows of an ESC-50 layout whose ``esc10`` column is True."""

    name = "esc10"
    esc10_only = True
