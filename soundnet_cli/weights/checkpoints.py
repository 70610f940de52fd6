"""The native checkpoint: one .safetensors file whose metadata describes the model.

Metadata keys (all strings, JSON where structured): ``format``, ``architecture``, ``heads``
(list of {name, size, categories}), ``sample_rate`` and ``provenance`` (where the weights came
from). safetensors holds only tensors, so loading a checkpoint never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from soundnet_cli.students import HeadSpec
    from soundnet_cli.students.contract import Student

FORMAT = "soundnet-cli/1"
SAMPLE_RATE = 22050  # every student runs at 22,050 Hz (media.audio.SAMPLE_RATE)
# Bounds on what a header may describe, checked before anything is built from it: a tampered
# header listing 200,000 heads otherwise costs 40 s and 1.6 GB before a tensor check refuses it.
MAX_HEADER_BYTES = 64 << 20
MAX_HEADS = 64
MAX_CATEGORIES = 100_000  # category names in one head (ImageNet-21k has 21,841)
MAX_NAME_CHARS = 256  # a head's or a category's name


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says about it."""

    path: Path
    architecture: str
    heads: tuple[HeadSpec, ...]
    sample_rate: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "architecture": self.architecture,
            "sample_rate": self.sample_rate,
            "heads": [{"name": h.name, "size": h.size} for h in self.heads],
            "provenance": self.provenance,
            "size_bytes": self.path.stat().st_size,
        }


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the tensor data alone (after the safetensors header), so that the same weights
    saved with other metadata (provenance, category names) hash the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode_heads(heads: tuple[HeadSpec, ...]) -> str:
    return json.dumps(
        [
            {
                "name": h.name,
                "size": h.size,
                "categories": list(h.categories) if h.categories is not None else None,
            }
            for h in heads
        ]
    )


def _decode_heads(raw: str) -> tuple[HeadSpec, ...]:
    """The heads a header lists, checked against the bounds above before any is built;
    ValueError naming the first one broken."""
    from soundnet_cli.students import HeadSpec

    listed = json.loads(raw)
    if not isinstance(listed, list):
        raise ValueError("'heads' is not a list")
    if len(listed) > MAX_HEADS:
        raise ValueError(f"it lists {len(listed)} heads; at most {MAX_HEADS} are allowed")
    heads = []
    for head in listed:
        if not isinstance(head, dict):
            raise ValueError(f"a head is {type(head).__name__}, not an object")
        name, categories = head.get("name"), head.get("categories")
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"a head name is not a string of at most {MAX_NAME_CHARS} characters")
        if categories is not None:
            if not isinstance(categories, list) or len(categories) > MAX_CATEGORIES:
                count = len(categories) if isinstance(categories, list) else "no list of"
                raise ValueError(
                    f"head {name!r} has {count} category names; at most {MAX_CATEGORIES}"
                )
            if not all(isinstance(c, str) and len(c) <= MAX_NAME_CHARS for c in categories):
                raise ValueError(
                    f"head {name!r}: category names must be strings of at most "
                    f"{MAX_NAME_CHARS} characters"
                )
        heads.append(HeadSpec(name, int(head["size"]), tuple(categories) if categories else None))
    return tuple(heads)


def header_length(path: Path) -> int:
    """The byte length of a safetensors file's JSON header (its first 8 bytes say)."""
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(8), "little")


def save_state(
    state: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    architecture: str,
    heads: tuple[HeadSpec, ...],
    sample_rate: int,
    provenance: dict[str, Any] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write tensors and metadata atomically to ``path`` (``extra_metadata``: more keys, such as
    ``embedding_heads``)."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "heads": _encode_heads(heads),
        "sample_rate": str(sample_rate),
        "provenance": json.dumps(provenance or {}),
    } | dict(extra_metadata or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_checkpoint(
    model: Student,
    path: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    embedding_heads: dict[str, Any] | None = None,
) -> Path:
    """Save a student: an ``nn.Module`` keeping ``HeadedStudent`` (``head_specs`` are what a
    checkpoint rebuilds it with), with its embedding heads
    (:mod:`soundnet_cli.students.embedding`) if any."""
    from torch import nn

    from soundnet_cli.students.contract import HeadedStudent

    if not isinstance(model, nn.Module) or not isinstance(model, HeadedStudent):
        raise CheckpointError(
            f"cannot save {type(model).__name__}: a checkpoint holds an nn.Module student with "
            "head_specs (the HeadedStudent protocol)"
        )
    architecture = model.architecture
    heads = tuple(model.head_specs)
    rate = int(model.sample_rate)
    state = dict(model.state_dict())
    extra: dict[str, str] = {}
    if embedding_heads:
        from soundnet_cli.students.embedding import (
            METADATA,
            embedding_metadata,
            embedding_tensors,
        )

        state |= embedding_tensors(embedding_heads)
        extra[METADATA] = embedding_metadata(embedding_heads)
    return save_state(
        state,
        path,
        architecture=str(architecture),
        heads=heads,
        sample_rate=rate,
        provenance=provenance,
        extra_metadata=extra,
    )


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read a checkpoint's metadata without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    declared = header_length(path)
    if declared > min(MAX_HEADER_BYTES, path.stat().st_size):
        raise CheckpointError(
            f"{path}: not a safetensors checkpoint (its header declares {declared} bytes; the "
            f"file holds {path.stat().st_size}, a checkpoint's header at most {MAX_HEADER_BYTES}"
            ")"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a soundnet-cli checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    from soundnet_cli.weights.sound8 import corrected_heads

    try:
        info = CheckpointInfo(
            path,
            meta["architecture"],
            corrected_heads(_decode_heads(meta["heads"])),
            int(meta["sample_rate"]),
            json.loads(meta.get("provenance", "{}")),
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from exc
    if info.sample_rate != SAMPLE_RATE:
        raise CheckpointError(
            f"{path}: its model runs at {info.sample_rate} Hz; soundnet-cli students run at "
            f"{SAMPLE_RATE} Hz"
        )
    return info


def tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (nothing loaded)."""
    from safetensors import safe_open

    from soundnet_cli.students.embedding import PREFIX

    try:  # embedding heads' tensors are not the student's (read_embedding_heads reads them)
        with safe_open(str(path), framework="pt") as handle:
            return {
                k: tuple(handle.get_slice(k).get_shape())
                for k in handle.keys()  # noqa: SIM118
                if not k.startswith(PREFIX)
            }
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from exc


def shape_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> str | None:
    """The first way ``found`` tensors differ from ``expected`` ones, naming the tensor."""
    for name, shape in expected.items():
        if name not in found:
            return f"tensor {name!r} is missing"
        if tuple(found[name]) != tuple(shape):
            return f"tensor {name!r} has shape {list(found[name])}, expected {list(shape)}"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"unexpected tensor {extra[0]!r}"
    return None


def _expected_state(students: Any, info: CheckpointInfo) -> dict[str, torch.Tensor] | None:
    """The state dict of the checkpoint's model built on the meta device (shapes and dtypes,
    no memory); None for a student that cannot be built there (then loading itself checks)."""
    import torch

    try:
        with torch.device("meta"):
            model = students.create(info.architecture, heads=info.heads)
        return dict(model.state_dict())
    except Exception:
        return None


def weights_problem(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> str | None:
    """The first tensor of ``state`` that the model cannot take as it is, named: another kind
    of number than the model's (weights cast to integers), or NaN/infinite values. Floating
    tensors of another float type are cast to the model's, in place."""
    import torch

    for name, tensor in state.items():
        want = expected.get(name)
        if want is None:
            continue
        if tensor.is_floating_point() != want.is_floating_point() or (
            not tensor.is_floating_point() and tensor.dtype != want.dtype
        ):
            found, needed = str(tensor.dtype).removeprefix("torch."), str(want.dtype)
            return f"tensor {name!r} holds {found}, the model's {needed.removeprefix('torch.')}"
        if tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                return f"tensor {name!r} holds NaN or infinite values"
            if tensor.dtype != want.dtype:
                state[name] = tensor.to(want.dtype)
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
) -> Student:
    """Build the checkpoint's architecture (from the registry) and load its weights.

    The metadata is checked against the tensors before anything is allocated: the model is
    first built on PyTorch's "meta" device (shapes only), so a small file whose metadata asks
    for huge heads is refused at once, naming the tensor that does not fit. Weights that are
    not finite, or are integers where the model has floats, are refused naming the tensor.
    """
    from safetensors.torch import load_file

    from soundnet_cli.plugins import get_plugins

    info = read_info(path)
    students = get_plugins().students
    students.get(info.architecture)  # an unknown architecture: UnknownNameError, first
    expected = _expected_state(students, info)
    if expected is not None:
        shapes = {name: tuple(tensor.shape) for name, tensor in expected.items()}
        problem = shape_mismatch(shapes, tensor_shapes(info.path))
        if problem is not None:
            raise CheckpointError(f"{path}: weights do not fit {info.architecture} ({problem})")
    try:
        from soundnet_cli.students.embedding import split_state

        state, _ = split_state(load_file(str(info.path), device="cpu"))
        model = None
        if expected is not None:
            _refuse_values(path, info, state, expected)
            model = _without_initialisation(students, info, state)
        if model is None:
            model = students.create(info.architecture, heads=info.heads)
            _refuse_values(path, info, state, dict(model.state_dict()))
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {info.architecture} ({first})") from exc
    model.checkpoint_info = info
    from soundnet_cli.students.embedding import read_embedding_heads

    # a plain dict, not submodules: the student's own state dict stays as it was
    model.__dict__["embedding_heads"] = read_embedding_heads(info.path)
    loaded: Student = model.to(device).eval()
    return loaded


def _refuse_values(
    path: str | os.PathLike[str],
    info: CheckpointInfo,
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
) -> None:
    problem = weights_problem(state, expected)
    if problem is not None:
        raise CheckpointError(f"{path}: unusable {info.architecture} weights ({problem})")


def _without_initialisation(students: Any, info: CheckpointInfo, state: dict[str, Any]) -> Any:
    """The model built on the meta device and given the file's tensors as they are: no random
    initialisation of weights that are overwritten at once (most of a load's time). None when
    the student cannot be built so, or keeps a tensor the file does not hold."""
    import torch

    try:
        with torch.device("meta"):
            model = students.create(info.architecture, heads=info.heads)
        model.load_state_dict(state, strict=True, assign=True)
    except Exception:
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model
