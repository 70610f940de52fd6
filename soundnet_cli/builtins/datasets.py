"""Registers the builtin labelled datasets (soundnet_cli.datasets): ESC-50, ESC-10, DCASE 2013."""

from __future__ import annotations

from typing import Any

from soundnet_cli.hookspecs import Register, hookimpl


def _esc50() -> Any:
    from soundnet_cli.datasets import ESC50

    return ESC50()


def _esc10() -> Any:
    from soundnet_cli.datasets import ESC10

    return ESC10()


def _dcase2013() -> Any:
    from soundnet_cli.datasets import DCASE2013

    return DCASE2013()


@hookimpl
def register_datasets(register: Register) -> None:
    register("esc50", _esc50, description="ESC-50: 50 classes, 5 folds, 5-s clips")
    register("esc10", _esc10, description="ESC-10: the esc10 rows of an ESC-50 layout")
    register("dcase2013", _dcase2013, description="DCASE 2013 scenes: 10 classes, 30-s clips")
