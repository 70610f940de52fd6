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
    from torch import nn

    from soundnet_cli.students import HeadSpec

FORMAT = "soundnet-cli/1"


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
    from soundnet_cli.students import HeadSpec

    return tuple(
        HeadSpec(
            h["name"],
            int(h["size"]),
            tuple(h["categories"]) if h.get("categories") is not None else None,
        )
        for h in json.loads(raw)
    )


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
    model: Any,
    path: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    embedding_heads: dict[str, Any] | None = None,
) -> Path:
    """Save a student (it must have ``architecture``, ``head_specs`` and ``sample_rate``), with
    its embedding heads (:mod:`soundnet_cli.students.embedding`) if any."""
    try:
        architecture = model.architecture
        heads = tuple(model.head_specs)
        rate = int(model.sample_rate)
    except AttributeError as exc:
        raise CheckpointError(f"cannot save this model: {exc}") from exc
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
    try:
        return CheckpointInfo(
            path,
            meta["architecture"],
            _decode_heads(meta["heads"]),
            int(meta["sample_rate"]),
            json.loads(meta.get("provenance", "{}")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from exc


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


def _expected_shapes(students: Any, info: CheckpointInfo) -> dict[str, tuple[int, ...]] | None:
    """The state-dict shapes of the checkpoint's model, built on the meta device (no memory);
    None for a student that cannot be built there (then loading itself checks)."""
    import torch

    try:
        with torch.device("meta"):
            model = students.create(info.architecture, heads=info.heads)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception:
        return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the checkpoint's architecture (from the registry) and load its weights.

    The metadata is checked against the tensors before anything is allocated: the model is
    first built on PyTorch's "meta" device (shapes only), so a small file whose metadata asks
    for huge heads is refused at once, naming the tensor that does not fit.
    """
    from safetensors.torch import load_file

    from soundnet_cli.plugins import get_plugins

    info = read_info(path)
    students = get_plugins().students
    students.get(info.architecture)  # an unknown architecture: UnknownNameError, first
    expected = _expected_shapes(students, info)
    if expected is not None:
        problem = shape_mismatch(expected, tensor_shapes(info.path))
        if problem is not None:
            raise CheckpointError(f"{path}: weights do not fit {info.architecture} ({problem})")
    try:
        from soundnet_cli.students.embedding import split_state

        state, _ = split_state(load_file(str(info.path), device="cpu"))
        model = _without_initialisation(students, info, state)
        if model is None:
            model = students.create(info.architecture, heads=info.heads)
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {info.architecture} ({first})") from exc
    model.checkpoint_info = info
    from soundnet_cli.students.embedding import read_embedding_heads

    # a plain dict, not submodules: the student's own state dict stays as it was
    model.__dict__["embedding_heads"] = read_embedding_heads(info.path)
    return model.to(device).eval()


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
