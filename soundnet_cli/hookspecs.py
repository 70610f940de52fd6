"""The hook specifications every soundnet plugin implements a subset of.

Each ``register_*`` hook receives a ``register`` callback; a plugin calls it once per component::

    @soundnet_cli.hookimpl
    def register_students(register):
        register("tiny", build_tiny, description="A 3-layer student for quick tests")

The core owns validation (names, duplicates); see docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT = "soundnet"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback handed to ``register_*`` hooks."""

    def __call__(self, name: str, factory: Any, *, description: str = "") -> None: ...


@hookspec
def register_students(register: Register) -> None:
    """Register student networks.

    ``factory(**kwargs)`` returns a ``torch.nn.Module`` with ``feature_info`` (a list of
    :class:`soundnet_cli.students.FeatureInfo`) and ``forward_features(wave, layers)``; students
    with output heads accept ``heads=[HeadSpec(...)]``.
    """


@hookspec
def register_teachers(register: Register) -> None:
    """Register vision teachers: ``factory(**kwargs)`` returns a teacher module that declares its
    heads and frame transform and returns, per head and for a batch of frames, class
    probabilities (a ``posteriors`` head) or L2-normalised vectors of the head's declared size
    (an ``embedding`` head, such as CLIP's image embedding; see docs/clip.md)."""


@hookspec
def register_probes(register: Register) -> None:
    """Register probe classifiers: ``factory(**params)`` returns an object with scikit-learn's
    estimator API (``fit``, ``decision_function``, ``predict``)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register evaluation datasets: ``factory()`` returns a
    :class:`soundnet_cli.datasets.Dataset` that lists a root folder's clips with
    labels and folds and says how the paper's protocol treats them (clip length, window length)."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``soundnet`` CLI: ``@app.command()`` on functions of your own."""
