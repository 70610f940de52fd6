"""Labelled sound datasets, one owner for evaluation, fine-tuning and probes: the ``Dataset``
interface with its clips, folds and protocol (:mod:`.base`), the builtin layouts (ESC-50 and
ESC-10 in :mod:`.esc`, DCASE 2013 in :mod:`.dcase`) and the label CSVs every command reads
(:mod:`.labels`)."""

from soundnet_cli.datasets.base import Clip, Dataset, DatasetError, Protocol, Split, grouped_kfold
from soundnet_cli.datasets.dcase import DCASE2013
from soundnet_cli.datasets.esc import ESC10, ESC50

__all__ = [
    "DCASE2013",
    "ESC10",
    "ESC50",
    "Clip",
    "Dataset",
    "DatasetError",
    "Protocol",
    "Split",
    "grouped_kfold",
]
