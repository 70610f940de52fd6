"""The hook specifications every soundnet plugin implements a subset of.

Each ``register_*`` hook receives a ``register`` callback; a plugin calls it once per component::

    @soundnet_cli.hookimpl
    def register_students(register):
        register("tiny", build_tiny, description="A 3-layer student for quick tests")

The core owns validation (names, duplicates); see docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT = "soundnet"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback handed to ``register_*`` hooks.

    ``pretrained`` (students) maps tags to published weights, the first being the default:
    each a native ``.safetensors`` checkpoint path, or a function returning one (it may download
    and cache the file; it runs only when the weights are asked for). ``load_student(name,
    pretrained=True)`` and ``--student NAME`` load the default tag, ``pretrained="TAG"`` another.
    """

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        description: str = "",
        pretrained: Mapping[str, Any] | None = None,
    ) -> None: ...


@hookspec
def register_students(register: Register) -> None:
    """Register student networks.

    ``factory(**kwargs)`` returns a ``torch.nn.Module`` keeping the
    :class:`soundnet_cli.students.Student` protocol (``feature_info``, ``forward_features`` and
    the rest; ``soundnet_cli.testing.check_student`` checks it); students with output heads
    accept ``heads=[HeadSpec(...)]``. ``register(name, factory, description=...,
    pretrained={"v1": path})`` publishes weights (see :class:`Register`).
    """


@hookspec
def register_teachers(register: Register) -> None:
    """Register vision teachers: ``factory(weights=None, random_init=False, **kwargs)`` returns a
    :class:`soundnet_cli.teachers.base.Teacher` that declares its heads and frame transform and
    returns, per head and for a batch of frames, class probabilities (a ``posteriors`` head) or
    L2-normalised vectors of the head's declared size (an ``embedding`` head, such as CLIP's image
    embedding; see docs/clip.md); ``random_init=True`` builds it without any weights
    (``soundnet_cli.testing.check_registered_teacher`` does)."""


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
