"""t-SNE maps of clip features (the paper's Figure on sound features): each clip is one point,
its features mean-pooled over time; labels only colour the points."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundnet_cli.datasets.labels import LabelMap
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.extraction.folder import list_feature_files, read_feature_file
from soundnet_cli.visualize.figures._base import _pyplot, save_png

UNLABELLED = "(no label)"
EXACT_UP_TO = 1000  # exact t-SNE below this many points: deterministic and fast enough


@dataclass
class FeatureSet:
    """Mean-pooled features of a folder written by `soundnet extract`."""

    keys: list[str]  # output stems relative to the folder (input path without extension)
    sources: list[str]  # the input paths, from the manifest when there is one, else the stems
    vectors: np.ndarray  # (clips, channels)
    layer: str


def _pool(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 1:  # extracted with --pool already
        return array.astype(np.float64)
    if array.ndim == 2 and array.shape[0] > 0:
        return array.mean(axis=0, dtype=np.float64)
    raise SoundnetError(f"{name}: expected (time, channels) features, got shape {array.shape}")


def load_feature_folder(folder: Path, layer: str | None = None) -> FeatureSet:
    """Read every ``<stem>.<layer>.npy`` (or ``<stem>.npz``) under ``folder`` and mean-pool each
    over time. ``layer`` may be omitted when the folder holds one layer."""
    layer, files = list_feature_files(folder, layer)
    vectors = [_pool(read_feature_file(item), str(item.path)) for item in files]
    if len({v.shape for v in vectors}) != 1:
        raise SoundnetError(f"{folder}: the {layer} features have different channel counts")
    return FeatureSet(
        [item.key for item in files], [item.source for item in files], np.stack(vectors), layer
    )


def assign_labels(features: FeatureSet, labels: LabelMap | None) -> list[str]:
    """The label of each clip, looked up by its stem, then by its source path."""
    if labels is None:
        return [UNLABELLED] * len(features.keys)
    return [
        labels.lookup(key) or labels.lookup(source) or UNLABELLED
        for key, source in zip(features.keys, features.sources, strict=True)
    ]


def tsne_embedding(
    vectors: np.ndarray, *, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50
) -> np.ndarray:
    """2-D t-SNE of ``vectors`` (rows standardised per channel, reduced by PCA first when wide);
    the same input and seed give the same map."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    count = len(vectors)
    if count < 3:
        raise UsageProblem(f"t-SNE needs at least 3 clips, got {count}")
    data = np.asarray(vectors, dtype=np.float64)
    data = (data - data.mean(axis=0)) / (data.std(axis=0) + 1e-8)
    dims = min(pca_dims, count - 1, data.shape[1])
    if data.shape[1] > dims:
        data = PCA(n_components=dims, random_state=seed).fit_transform(data)
    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (count - 1) / 3.0),
        init="pca",
        learning_rate="auto",
        method="exact" if count <= EXACT_UP_TO else "barnes_hut",
        random_state=seed,
    )
    return np.asarray(tsne.fit_transform(data))


def tsne_png(
    points: np.ndarray, labels: Sequence[str], path: str | os.PathLike[str], title: str
) -> Path:
    """Scatter of the 2-D map, one colour and legend entry per label (sorted by name)."""
    plt = _pyplot()
    names = sorted(set(labels) - {UNLABELLED}) + ([UNLABELLED] if UNLABELLED in labels else [])
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(9.5 if len(names) > 1 else 7.0, 7.0), dpi=100)
    label_array = np.asarray(labels)
    size = 36 if len(points) <= 300 else 14
    for index, name in enumerate(names):
        mask = label_array == name
        colour = "lightgrey" if name == UNLABELLED else cmap(index % cmap.N)
        marker = "o" if index < 20 else "^"
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=size,
            color=colour,
            marker=marker,
            label=f"{name.replace('_', ' ')} ({int(mask.sum())})",
            edgecolors="none",
            alpha=0.85,
        )
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) > 1:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8 if len(names) <= 20 else 6,
            ncol=1 if len(names) <= 25 else 2,
            frameon=False,
        )
    fig.tight_layout()
    return save_png(fig, path)
