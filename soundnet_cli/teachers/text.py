"""The text side of a CLIP teacher: prompts, class names as text, and the text tower of the
exact weights an embedding head was distilled from (verified by sha256).

Zero-shot labelling, text search and zero-shot evaluation all turn labels into unit vectors
here: each label is put into every prompt (``"the sound of {}"``), each prompt encoded and
L2-normalised, the prompts' vectors averaged and normalised again (CLIP's prompt ensemble).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from soundnet_cli.errors import UsageProblem

DEFAULT_PROMPT = "the sound of {}"
# The default ensemble (``--prompt`` not given, or evaluate's "ensemble" column).
DEFAULT_ENSEMBLE = (
    "the sound of {}",
    "a sound of {}",
    "this is the sound of {}",
    "a recording of {}",
    "the noise of {}",
    "{}",
)


def class_text(name: str) -> str:
    """A dataset's class name as words: ``chirping_birds`` -> ``chirping birds``."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name)).strip()


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts with one ``{}`` each (where the label goes)."""
    for prompt in prompts:
        if prompt.count("{}") != 1:
            raise UsageProblem(
                f"a prompt needs exactly one {{}} where the label goes, not {prompt!r}",
                parameter="prompt",
            )
    return list(prompts)


def parse_labels(text: str | None, lines: Sequence[str] = ()) -> list[str]:
    """Labels from ``"dog barking,rain"`` and/or the lines of a labels file; blanks dropped,
    duplicates refused, none at all refused."""
    labels = [part.strip() for part in (text or "").split(",")] + [line.strip() for line in lines]
    labels = [label for label in labels if label]
    if not labels:
        raise UsageProblem(
            "the label list is empty: give labels (a comma-separated list or a file)",
            parameter=("labels", "labels_file"),
        )
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise UsageProblem(f"label {label!r} is given twice", parameter="labels")
        seen.add(label)
    return labels


class TextEncoder:
    """``encode(texts)`` -> unit vectors (N, size) from the CLIP text tower of ``identity``
    (a :class:`~soundnet_cli.weights.clip.ClipIdentity` or its dict)."""

    def __init__(self, identity: Any) -> None:
        from soundnet_cli.weights.clip import ClipIdentity, text_tower

        if isinstance(identity, dict):
            identity = ClipIdentity.from_dict(identity)
        self.identity = identity
        self.network, self.tokenizer = text_tower(identity)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts))
            vectors = self.network.encode_text(tokens).float()
            return torch.nn.functional.normalize(vectors, dim=-1).numpy()

    def labels(self, labels: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        """One unit vector per label: the normalised mean of its prompts' vectors."""
        prompts = check_prompts(prompts)
        texts = [prompt.format(label) for label in labels for prompt in prompts]
        vectors = self.encode(texts).reshape(len(labels), len(prompts), -1).mean(axis=1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
