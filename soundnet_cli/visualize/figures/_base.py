"""What every figure shares: matplotlib with the Agg backend (files only, no display), and PNG
writing without the timestamped "Software" metadata, so equal inputs give byte-identical files."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from soundnet_cli.atomic import atomic_path

PNG_METADATA: dict[str, Any] = {"Software": None}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Write ``fig`` atomically as PNG and close it."""
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi or fig.dpi, metadata=PNG_METADATA)
    finally:
        _pyplot().close(fig)
    return target


def png_bytes(fig: Any, dpi: float | None = None) -> bytes:
    """``fig`` as PNG bytes (for embedding in HTML); closes it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, metadata=PNG_METADATA)
    finally:
        _pyplot().close(fig)
    return buffer.getvalue()


def no_data(ax: Any, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
