"""`soundnet predict` as a library: predict many files, write the tables the user asked for."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.prediction.tables import (
    FORMATS,
    audacity_labels,
    delimited,
    table_rows,
)
from soundnet_cli.students.contract import HeadedStudent, Student
from soundnet_cli.students.predict import Prediction, predict_waveform

DEFAULT_TOP_K = 5
SUFFIXES = {"json": ".json", "csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "table": ".txt"}


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class PredictRun:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def default_top_k(fmt: str) -> int:
    """Ranks per head when ``--top-k`` is not given: one label per span in a label track
    (overlapping labels are hard to read there), five elsewhere."""
    return 1 if fmt == "audacity" else DEFAULT_TOP_K


def predict_files(
    files: Sequence[str | os.PathLike[str]],
    model: Student,
    *,
    top_k: int = DEFAULT_TOP_K,
    mix: str = "first",
    precision: str = "fp32",
    on_file: Callable[[Path, Prediction | None, str | None], None] | None = None,
) -> PredictRun:
    """Predict every file; a file that fails is recorded (with its reason) and skipped.

    ``precision`` bf16/fp16 runs the model in half precision where the device supports it
    (it logs a note when it falls back to fp32). ``on_file(path, prediction, error)`` is
    called after each file (for progress and output).
    """
    from soundnet_cli.media.audio import load_audio

    if isinstance(model, HeadedStudent):
        from soundnet_cli.models import for_inference

        model = for_inference(model, [model.head_layer], precision=precision)
    run = PredictRun()
    for name in files:
        path = Path(name)
        try:
            wave = load_audio(path, mix=mix)  # type: ignore[arg-type]
            prediction = predict_waveform(model, wave, top_k=top_k, path=str(path))
        except SoundnetError as exc:
            run.failures.append(Failure(str(path), str(exc)))
            if on_file is not None:
                on_file(path, None, str(exc))
        else:
            run.predictions.append(prediction)
            if on_file is not None:
                on_file(path, prediction, None)
    return run


def check_output(fmt: str, out: Path | None) -> None:
    """Refuse a format or destination that cannot work, before any file is predicted."""
    if fmt not in FORMATS:
        raise UsageProblem(
            f"the output format must be one of {', '.join(FORMATS)}, not {fmt!r}", parameter="fmt"
        )
    if fmt == "audacity" and out is None:
        raise UsageProblem(
            "the audacity format writes one label file per input: it needs an output folder",
            parameter="out",
        )
    if fmt == "audacity" and out is not None and out.exists() and not out.is_dir():
        raise UsageProblem(
            f"the audacity format needs an output folder; {out} is a file", parameter="out"
        )


def output_file(out: Path, fmt: str) -> Path:
    """``out`` itself, or ``out/predictions.<ext>`` when it is a folder."""
    if out.is_dir() or str(out).endswith(os.sep):
        return out / f"predictions{SUFFIXES[fmt]}"
    return out


def json_document(
    run: PredictRun, *, segments: bool = False, threshold: float | None = None
) -> dict[str, Any]:
    """``{"results": [...], "errors": [...]}``; with ``segments`` each result lists its events."""
    from soundnet_cli.prediction.tables import apply_threshold, segment_rows

    results = []
    for prediction in run.predictions:
        kept = apply_threshold(prediction, threshold)
        result = kept.as_dict()
        if segments:
            result["segments"] = [
                {k: v for k, v in row.as_dict().items() if k not in ("path", "rank")}
                for row in segment_rows(kept)
            ]
        results.append(result)
    return {
        "results": results,
        "errors": [{"path": f.path, "error": f.error} for f in run.failures],
    }


def render_text(
    run: PredictRun,
    fmt: str,
    *,
    segments: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
) -> str:
    """The whole output of a json, jsonl, csv or tsv run, as text."""
    if fmt == "json":
        document = json_document(run, segments=segments, threshold=threshold)
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    rows = table_rows(run.predictions, segments=segments, top_k=top_k, threshold=threshold)
    if fmt == "jsonl":
        from soundnet_cli.prediction.tables import json_lines

        return json_lines(rows)
    return delimited(rows, "\t" if fmt == "tsv" else ",")


def label_file_names(paths: Sequence[str]) -> dict[str, str]:
    """Input path -> label file name below ``--out``: the input's path relative to the inputs'
    common folder, its extension replaced by ``.txt`` (kept before it when two inputs would
    otherwise share a name)."""
    from soundnet_cli.extraction.inputs import output_stems

    if not paths:
        return {}
    absolute = {p: os.path.abspath(p) for p in paths}
    common = os.path.commonpath([os.path.dirname(a) for a in absolute.values()])
    routes = {p: Path(os.path.relpath(a, common)).as_posix() for p, a in absolute.items()}
    stems = output_stems(list(routes.values()))
    return {p: f"{stems[route]}.txt" for p, route in routes.items()}


def write_audacity(
    run: PredictRun,
    out: Path,
    *,
    segments: bool = False,
    top_k: int | None = 1,
    threshold: float | None = None,
) -> list[Path]:
    """One Audacity label file per predicted input under the folder ``out``."""
    names = label_file_names([p.path for p in run.predictions])
    written = []
    for prediction in run.predictions:
        rows = table_rows([prediction], segments=segments, top_k=top_k, threshold=threshold)
        target = out / names[prediction.path]
        with atomic_path(target) as tmp:
            tmp.write_text(audacity_labels(rows), encoding="utf-8")
        written.append(target)
    return written


def write_text(text: str, target: Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
