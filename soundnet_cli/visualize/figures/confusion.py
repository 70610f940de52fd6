"""The confusion matrix of a classification protocol (`soundnet evaluate`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from soundnet_cli.visualize.figures._base import _pyplot, save_png


def confusion_matrix_png(
    matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike[str], title: str
) -> Path:
    """Row-normalised confusion matrix; counts printed in cells when there are few classes.

    Sized so that 50 class names stay readable (one row of text per class).
    """
    plt = _pyplot()
    n = len(classes)
    side = max(6.0, 0.26 * n + 3.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=110)
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = 9 if n <= 20 else 7
    ax.set_xticks(range(n), [c.replace("_", " ") for c in classes], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), [c.replace("_", " ") for c in classes], fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return save_png(fig, path)
