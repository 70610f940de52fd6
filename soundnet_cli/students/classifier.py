"""A student cut at one layer with a classifier on top: what ``soundnet finetune`` trains.

``classifier_student("soundnet8@pool5", heads=[HeadSpec("esc10", 10, names)])`` is SoundNet-8's
body up to pool5 followed by a 1x1 convolution per head: a linear classifier applied to every
time step of pool5. Averaging its logits over time steps is a linear classifier on the
time-averaged layer (the paper's pooling); ``forward`` gives per-step log-probabilities, so
``soundnet predict`` shows the classes per step and their mean over the file.

The architecture is registered as the family ``classifier:`` (``classifier:soundnet8@pool5``),
so a checkpoint names it and loads like any other student. Layers above the tap are not part of
the network: they would not be trained.
"""

from __future__ import annotations

from collections.abc import Sequence

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.students.base import ConvStudent, HeadLayer, HeadSpec

FAMILY = "classifier"
HEAD_LAYER = "classifier"
DEFAULT_HEADS = (HeadSpec("classes", 2),)


def classifier_name(base: str, layer: str) -> str:
    """The registered architecture name: ``classifier:<base>@<layer>``."""
    return f"{FAMILY}:{base}@{layer}"


def split_variant(variant: str) -> tuple[str, str]:
    """``soundnet8@pool5`` -> ("soundnet8", "pool5")."""
    base, at, layer = variant.partition("@")
    if not (base and at and layer):
        raise UsageProblem(
            f"a classifier student is named {FAMILY}:<student>@<layer> "
            f"(e.g. {FAMILY}:soundnet8@pool5), not {FAMILY}:{variant}"
        )
    return base, layer


def base_architecture(architecture: str) -> str:
    """The conv student a (classifier) architecture is built from."""
    prefix = f"{FAMILY}:"
    if architecture.startswith(prefix):
        return split_variant(architecture[len(prefix) :])[0]
    return architecture


def classifier_on(base: ConvStudent, layer: str, heads: Sequence[HeadSpec]) -> ConvStudent:
    """``base``'s layers up to ``layer`` (fresh weights) and a 1x1 convolution per head."""
    names = [spec.name for spec in base.body_spec]
    if layer not in names:
        raise UsageProblem(
            f"{base.architecture} has no body layer {layer!r} to put a classifier on; "
            f"body layers: {', '.join(names)}"
        )
    body = base.body_spec[: names.index(layer) + 1]
    return ConvStudent(
        classifier_name(base.architecture, layer),
        body,
        HeadLayer(HEAD_LAYER, 1, 1, 0),
        heads,
        sample_rate=base.sample_rate,
        default_layer=layer,
    )


def classifier_student(variant: str, heads: Sequence[HeadSpec] = DEFAULT_HEADS) -> ConvStudent:
    """The factory of the ``classifier:`` family (``variant`` is ``<student>@<layer>``)."""
    from soundnet_cli.plugins import get_plugins

    base_name, layer = split_variant(variant)
    base = get_plugins().students.create(base_name)
    if not isinstance(base, ConvStudent):
        raise SoundnetError(
            f"{FAMILY}:{variant}: {base_name!r} is not a layer-table conv student; "
            "a classifier can be put on soundnet8, soundnet5 and students built like them"
        )
    return classifier_on(base, layer, heads)
