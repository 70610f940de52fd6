"""Which weights a model holds, named without reading 53 MB on every run.

:func:`identity` gives a model's checkpoint path, the sha256 of the whole file (recorded in a
features folder's ``features.json``) and the sha256 of its tensor data alone (behind
:func:`model_key`, the name feature caches and probes use: the same weights saved with other
metadata share it). Both digests are computed in one pass the first time a file is seen and
remembered in ``$SOUNDNET_HOME/cache/identity.json`` under the file's resolved path, size and
modification time, so a later run reads them back instead of hashing the file again.

:class:`PrecisionCache` remembers the half-precision check of ``students.inference.optimise``
per weights, device, torch version and layers, in ``$SOUNDNET_HOME/cache/precision.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

_LOCK = threading.Lock()
_MEMORY: dict[tuple[str, int, int], tuple[str, str]] = {}


@dataclass(frozen=True)
class ModelIdentity:
    """A model's architecture and, when it was loaded from a checkpoint, that file's digests."""

    architecture: str
    path: Path | None = None
    file_sha256: str | None = None
    weights_sha256: str | None = None

    @property
    def key(self) -> str:
        """``<architecture>-<16 hex digits of the weights>``; ``<architecture>-init-seed0`` for a
        student built without weights (students are initialised with seed 0)."""
        if self.weights_sha256 is None:
            return f"{self.architecture}-init-seed0"
        return f"{self.architecture}-{self.weights_sha256[:16]}"


def identity(model: Student) -> ModelIdentity:
    """The identity of ``model`` (a student, or its inference twin)."""
    info = getattr(model, "checkpoint_info", None)
    if info is None:
        return ModelIdentity(str(getattr(model, "architecture", type(model).__name__)))
    file_digest, weights_digest = checkpoint_digests(info.path)
    return ModelIdentity(str(info.architecture), Path(info.path), file_digest, weights_digest)


def model_key(model: Student) -> str:
    """A name for the weights a model holds (see :attr:`ModelIdentity.key`)."""
    return identity(model).key


def checkpoint_digests(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(sha256 of the file, sha256 of its tensor data), remembered by path, size and mtime."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    memo = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if memo in _MEMORY:
            return _MEMORY[memo]
    stored = _read_json(_cache_file("identity.json")).get(str(resolved))
    if (
        isinstance(stored, dict)
        and stored.get("size") == stat.st_size
        and stored.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(stored.get("file_sha256"), str)
        and isinstance(stored.get("weights_sha256"), str)
    ):
        digests = (stored["file_sha256"], stored["weights_sha256"])
    else:
        digests = _hash_safetensors(resolved)
        record = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "file_sha256": digests[0],
            "weights_sha256": digests[1],
        }
        _update_json(_cache_file("identity.json"), str(resolved), record)
    with _LOCK:
        _MEMORY[memo] = digests
    return digests


def _hash_safetensors(path: Path) -> tuple[str, str]:
    """Both digests in one read: the file's, and that of the bytes after the header."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        whole.update(prefix)
        remaining = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 20))
            if not block:
                break
            whole.update(block)
            remaining -= len(block)
        for block in iter(lambda: handle.read(1 << 20), b""):
            whole.update(block)
            tensors.update(block)
    return whole.hexdigest(), tensors.hexdigest()


# -- the half-precision check, remembered ---------------------------------------------------------
def device_name(device: Any) -> str:
    """What decides half-precision kernels: the GPU's name, or the CPU model and its bf16/fp16
    features."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                wanted = ("amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
                break
    return f"cpu {model} [{flags}]"


class PrecisionCache:
    """The measured error of a half-precision run of one model on one device, by layers."""

    def __init__(self, prefix: str, file: Path | None = None) -> None:
        self.prefix = prefix
        self.file = file or _cache_file("precision.json")

    def _key(self, precision: str, layers: Sequence[str]) -> str:
        return f"{self.prefix}|{precision}|{','.join(sorted(set(layers)))}"

    def get(self, precision: str, layers: Sequence[str]) -> dict[str, Any] | None:
        value = _read_json(self.file).get(self._key(precision, layers))
        return value if isinstance(value, dict) else None

    def put(self, precision: str, layers: Sequence[str], value: dict[str, Any]) -> None:
        _update_json(self.file, self._key(precision, layers), value)


def precision_cache(model: Student, device: Any = None) -> PrecisionCache | None:
    """The cache for ``model`` on ``device`` (default: the model's); None for a model that was
    not loaded from a checkpoint (its weights have no name to remember them by)."""
    import torch

    if getattr(model, "checkpoint_info", None) is None:
        return None
    where = device if device is not None else getattr(model, "device", "cpu")
    from soundnet_cli.students.inference import KERNELS

    prefix = f"{model_key(model)}|{device_name(where)}|torch {torch.__version__}|{KERNELS}"
    return PrecisionCache(prefix)


# -- small JSON files under $SOUNDNET_HOME/cache ---------------------------------------------------
def _cache_file(name: str) -> Path:
    from soundnet_cli.weights.home import soundnet_home

    return soundnet_home() / "cache" / name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_json(path: Path, key: str, value: Any) -> None:
    """Add one entry; a cache that cannot be written (read-only home) is simply not kept."""
    with _LOCK, contextlib.suppress(OSError):
        data = _read_json(path)
        data[key] = value
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
