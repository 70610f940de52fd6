"""Labels for colouring and annotating figures: a CSV that maps audio paths to labels, with the
columns `soundnet probe` reads (a path column and a label column; see probing.read_labels).

Figures look files up loosely, because a features folder drops the audio extension and a labels
file may hold paths relative to another folder: by the relative path, then without its
extension, then by the file name alone when that is unambiguous.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from soundnet_cli.errors import UsageProblem
from soundnet_cli.evaluation.probing import LABEL_COLUMNS, PATH_COLUMNS


def _variants(path: str) -> list[str]:
    posix = PurePosixPath(path.replace("\\", "/"))
    stem = posix.with_suffix("") if posix.suffix else posix
    return [str(posix), str(stem)]


class LabelMap:
    """path -> label, looked up by relative path, path without extension, or file name."""

    def __init__(self, rows: list[tuple[str, str]], root: Path | None = None) -> None:
        self.rows = rows
        self.by_path: dict[str, str] = {}
        by_name: dict[str, set[str]] = {}
        for path, label in rows:
            for variant in _variants(path):
                self.by_path.setdefault(variant, label)
            if root is not None and Path(path).is_absolute():
                try:
                    relative = Path(path).resolve().relative_to(root.resolve()).as_posix()
                except ValueError:
                    pass
                else:
                    for variant in _variants(relative):
                        self.by_path.setdefault(variant, label)
            for variant in _variants(PurePosixPath(path.replace("\\", "/")).name):
                by_name.setdefault(variant, set()).add(label)
        self.by_name = {name: next(iter(ls)) for name, ls in by_name.items() if len(ls) == 1}

    @property
    def labels(self) -> list[str]:
        return sorted({label for _, label in self.rows})

    def lookup(self, path: str) -> str | None:
        for variant in _variants(path):
            if variant in self.by_path:
                return self.by_path[variant]
        for variant in _variants(PurePosixPath(path.replace("\\", "/")).name):
            if variant in self.by_name:
                return self.by_name[variant]
        return None


def read_label_map(labels: Path, root: Path | None = None) -> LabelMap:
    """Read ``labels`` (CSV with a header); ``root`` is the folder relative paths refer to."""
    if not labels.is_file():
        raise UsageProblem(f"{labels}: no such labels file")
    with open(labels, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        path_col = next((c for c in PATH_COLUMNS if c in header), None)
        label_col = next((c for c in LABEL_COLUMNS if c in header), None)
        if path_col is None or label_col is None:
            raise UsageProblem(
                f"{labels}: needs a path column ({', '.join(PATH_COLUMNS)}) and a label column "
                f"({', '.join(LABEL_COLUMNS)}); found {', '.join(header) or 'no header'}"
            )
        rows = [(row[path_col], row[label_col]) for row in reader if row.get(path_col)]
    return LabelMap(rows, root)
