"""Figures with matplotlib (Agg backend: files only, no display), deterministic for fixed inputs:
PNGs are written without timestamps, and anything random takes a seed."""

from soundnet_cli.visualize.figures._base import _pyplot, png_bytes, save_png
from soundnet_cli.visualize.figures.confusion import confusion_matrix_png
from soundnet_cli.visualize.figures.curves import Curves, curves_png, read_curves
from soundnet_cli.visualize.figures.embedding import (
    FeatureSet,
    assign_labels,
    load_feature_folder,
    tsne_embedding,
    tsne_png,
)
from soundnet_cli.visualize.figures.filters import (
    filters_png,
    first_layer_filters,
    frequency_responses,
    peak_frequencies,
)
from soundnet_cli.visualize.figures.spectrogram import log_spectrogram, spectrogram_png

__all__ = [
    "Curves",
    "FeatureSet",
    "_pyplot",
    "assign_labels",
    "confusion_matrix_png",
    "curves_png",
    "filters_png",
    "first_layer_filters",
    "frequency_responses",
    "load_feature_folder",
    "log_spectrogram",
    "peak_frequencies",
    "png_bytes",
    "read_curves",
    "save_png",
    "spectrogram_png",
    "tsne_embedding",
    "tsne_png",
]
