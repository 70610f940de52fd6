"""Labels CSVs: one reader for every labelled CSV (labels for `soundnet probe` and `soundnet
finetune`, the ESC-50 meta file, labels for figures), and the label map figures use.

Rules (docs/formats.md): UTF-8, with or without the BOM spreadsheets write; a header row that
names each column once; a row with missing fields, an empty label, or one file listed under two
labels is refused, naming the line; a row repeated exactly counts once. Labels for probes and
datasets name files inside the audio folder: relative paths without ``..``.

Figures look files up loosely, because a features folder drops the audio extension and a labels
file may hold paths relative to another folder: by the relative path, then without its
extension, then by the file name alone when that is unambiguous.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from soundnet_cli.errors import SoundnetError, UsageProblem

PATH_COLUMNS = ("path", "file", "filename")
LABEL_COLUMNS = ("label", "category", "class")
GROUP_COLUMNS = ("group", "src_file")


@dataclass(frozen=True)
class Row:
    """One data row of a CSV: its line number in the file (1 is the header) and its fields."""

    line: int
    fields: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.fields[column]


def read_table(
    path: Path, *, error: type[SoundnetError] = UsageProblem
) -> tuple[list[str], list[Row]]:
    """The header and rows of the CSV at ``path`` (a row repeated exactly is kept once);
    problems raise ``error`` naming the line."""
    if not path.is_file():
        raise error(f"{path}: no such file")
    rows: list[Row] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: drops a BOM
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            twice = sorted({name for name in header if name and header.count(name) > 1})
            if twice:
                raise error(
                    f"{path}: the header names the column {twice[0]!r} more than once; "
                    "name each column once"
                )
            for fields in reader:
                line = reader.line_num
                missing = [k for k, v in fields.items() if k is not None and v is None]
                if missing:
                    raise error(
                        f"{path} line {line}: {len(header) - len(missing)} of {len(header)} "
                        f"fields; missing {', '.join(missing)}"
                    )
                fields.pop(None, None)  # type: ignore[arg-type,unused-ignore]  # extra fields: ignored
                key = tuple(sorted(fields.items()))
                if key not in seen:  # the same row twice is the same clip, not two
                    seen.add(key)
                    rows.append(Row(line, fields))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except csv.Error as exc:
        raise error(f"{path} line {line + 1}: {exc}") from exc
    return header, rows


def pick_column(
    header: Sequence[str], names: Sequence[str], what: str, source: Path, required: bool = True
) -> str | None:
    """The first of ``names`` in ``header``; a usage error naming the choices if required."""
    for name in names:
        if name in header:
            return name
    if required:
        raise UsageProblem(
            f"{source}: no {what} column (one of {', '.join(names)}); "
            f"found {', '.join(header) or 'no header'}"
        )
    return None


def check_labels(
    source: Path,
    entries: Sequence[tuple[int, str, str]],
    *,
    inside: Path | None = None,
    error: type[SoundnetError] = UsageProblem,
) -> None:
    """Refuse empty labels, one path under two labels and (with ``inside``) paths that leave
    that folder: ``(line, path, label)`` entries, the first problem naming its line."""
    first: dict[str, tuple[int, str]] = {}
    for line, path, label in entries:
        where = f"{source} line {line}"
        if not label.strip():
            raise error(f"{where}: {path or 'the row'} has an empty label")
        if inside is not None:
            name = path.replace("\\", "/")
            if not name.strip():
                raise error(f"{where}: the path is empty")
            if (
                name.startswith("/")
                or os.path.isabs(path)
                or (posixpath.normpath(name).split("/")[0] == "..")
            ):
                raise error(
                    f"{where}: {path} is outside the audio folder {inside}; give paths "
                    "relative to it"
                )
            key = posixpath.normpath(name)
        else:
            key = path
        seen = first.setdefault(key, (line, label))
        if seen[1] != label:
            raise error(
                f"{where}: {path} is labelled {label!r}, but line {seen[0]} labels it {seen[1]!r}"
            )


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
    header, table = read_table(labels)
    path_col = pick_column(header, PATH_COLUMNS, "path", labels)
    label_col = pick_column(header, LABEL_COLUMNS, "label", labels)
    assert path_col is not None and label_col is not None
    kept = [row for row in table if row[path_col]]
    check_labels(labels, [(row.line, row[path_col], row[label_col]) for row in kept])
    return LabelMap([(row[path_col], row[label_col]) for row in kept], root)
