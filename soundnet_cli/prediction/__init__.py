"""`soundnet predict` as a library: many files in, tables (CSV, TSV, JSON, label tracks) out."""

from soundnet_cli.prediction.run import (
    PredictRun,
    check_output,
    json_document,
    predict_files,
    render_text,
    write_audacity,
)
from soundnet_cli.prediction.tables import FORMATS, Row, segment_rows, spans, step_rows, table_rows

__all__ = [
    "FORMATS",
    "PredictRun",
    "Row",
    "check_output",
    "json_document",
    "predict_files",
    "render_text",
    "segment_rows",
    "spans",
    "step_rows",
    "table_rows",
    "write_audacity",
]
