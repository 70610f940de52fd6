"""Saved probes: a NumPy ``.npz`` of plain arrays plus JSON metadata, never pickle.

The metadata records the probe, its parameters, the window protocol and the provenance of the
features it was trained on (model, layer), so applying it to other features is refused. A
sha256 over arrays and metadata detects a file that was edited or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError

FORMAT = "soundnet-probe/1"


class ProbeFileError(SoundnetError):
    """A probe file that cannot be trusted or used."""


@dataclass
class ProbeFile:
    """A loaded probe: the clip-level classifier and what it was trained on."""

    probe: Any  # ClipProbe
    meta: dict[str, Any]

    def check_features(self, layer: str, model_key: str) -> None:
        """Refuse features of another layer or model than the probe was trained on."""
        features = self.meta["features"]
        if layer != features["layer"]:
            raise ProbeFileError(
                f"this probe was trained on layer {features['layer']!r}, not {layer!r}"
            )
        if model_key != features["model"]:
            raise ProbeFileError(
                f"this probe was trained on features of {features['model']}, "
                f"not {model_key}; use the model it was trained on"
            )


def _digest(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_probe(path: str | os.PathLike[str], probe: Any, meta: dict[str, Any]) -> Path:
    """Write ``probe`` (a ClipProbe around an estimator with ``to_arrays``) atomically."""
    arrays = {k: np.asarray(v) for k, v in probe.estimator.to_arrays().items()}
    if any(a.dtype == object for a in arrays.values()):
        raise ProbeFileError("probe arrays must be numeric or strings, not Python objects")
    if any(a.dtype.kind in "fc" and not np.isfinite(a).all() for a in arrays.values()):
        raise ProbeFileError(
            "the fitted probe has NaN or infinite weights (the solver diverged); nothing saved"
        )
    meta_json = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        contents = {f"a_{k}": v for k, v in arrays.items()}
        contents["meta"] = np.array(meta_json)
        contents["checksum"] = np.array(_digest(arrays, meta_json))
        np.savez(handle, **contents)  # type: ignore[arg-type]
    return target


def _check_members(path: Path) -> None:
    """Refuse, before anything is inflated, a member larger than the file itself (probes are
    written uncompressed, so a larger one is a decompression bomb) or one whose array header
    asks for other bytes than the member holds."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > size:
                    raise ProbeFileError(
                        f"{path}: not a soundnet probe file (member {info.filename} inflates to "
                        f"{info.file_size:,} bytes from a {size:,}-byte file; probes are stored "
                        "uncompressed)"
                    )
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(handle)
                    start = handle.tell()
                declared = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if dtype.hasobject or declared != info.file_size:
                    raise ProbeFileError(
                        f"{path}: not a soundnet probe file (member {info.filename}'s header "
                        f"declares {list(shape)} {dtype}, which is not the bytes it holds)"
                    )
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ProbeFileError(f"{path}: not a readable probe file ({exc})") from exc


def load_probe(path: str | os.PathLike[str]) -> ProbeFile:
    """Load and verify a probe file; the estimator is rebuilt from the probe registry."""
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.probes.windows import ClipProbe

    path = Path(path)
    if not path.is_file():
        raise ProbeFileError(f"{path}: no such probe file")
    _check_members(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ProbeFileError(f"{path}: not a readable probe file ({exc})") from exc
    try:
        meta_json = str(contents.pop("meta"))
        checksum = str(contents.pop("checksum"))
        arrays = {k[2:]: v for k, v in contents.items() if k.startswith("a_")}
        meta = json.loads(meta_json)
    except (KeyError, ValueError) as exc:
        raise ProbeFileError(f"{path}: not a soundnet probe file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ProbeFileError(f"{path}: unknown probe format {meta.get('format')!r}")
    if any(a.dtype.kind in "fc" and not np.isfinite(a).all() for a in arrays.values()):
        raise ProbeFileError(f"{path}: the probe holds NaN or infinite weights; train it again")
    if _digest(arrays, meta_json) != checksum:
        raise ProbeFileError(
            f"{path}: the probe file was modified or damaged (checksum "
            "mismatch); train it again with `soundnet probe fit`"
        )
    estimator = get_plugins().probes.create(meta["probe"], **meta["params"])
    estimator.from_arrays(arrays)
    return ProbeFile(ClipProbe(estimator, int(meta["window_steps"])), meta)
