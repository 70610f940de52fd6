"""Teacher weights: local files, the cache under $SOUNDNET_HOME/teachers, and downloads.

Files are read without running code: ``.safetensors`` directly, anything else through
``torch.load(weights_only=True)`` (torchvision ``.pth`` state dicts and the Places365
``.pth.tar`` checkpoints, whose tensors sit under ``state_dict`` with ``module.`` prefixes left by
``DataParallel``). Downloads are checked against the sha256 prefix that torchvision puts in its
file names; the Places365 site publishes no hash, so those are checked only for loading.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import WeightsError
from soundnet_cli.weights.home import OFFLINE_ENV, ByteProgress, download, offline, soundnet_home

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torchvision: vgg16-397923af.pth


@dataclass(frozen=True)
class WeightSource:
    """Where a teacher's published weights live."""

    url: str
    sha256: str | None = None  # full hash or a prefix (torchvision's file names carry 8+ digits)

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlsplit(self.url).path).name


def from_torchvision_url(url: str) -> WeightSource:
    match = HASH_IN_NAME.search(Path(urllib.parse.urlsplit(url).path).name)
    return WeightSource(url, match.group(1) if match else None)


def teachers_dir() -> Path:
    return soundnet_home() / "teachers"


HOW_TO_GET = ("teacher_weights", "random_init")  # the settings that the advice below names


def how_to_get(teacher: str) -> str:
    return (
        f"run once on a machine with internet access (the weights are cached in "
        f"{teachers_dir()}), or give local weights for {teacher} (a file), or use random "
        "initialisation for a dry run (see docs/teachers.md)"
    )


def fetch(
    source: WeightSource,
    teacher: str,
    *,
    progress: ByteProgress | None = None,
) -> Path:
    """The cached copy of ``source``, downloading and checking it first if needed."""
    target = teachers_dir() / source.filename
    if target.is_file():
        return target
    if offline():
        raise WeightsError(
            f"the weights of teacher {teacher!r} ({source.filename}) are not cached and "
            f"{OFFLINE_ENV} is set; {how_to_get(teacher)}",
            parameter=HOW_TO_GET,
        )
    log.info("Fetching the weights of teacher %r from %s (once)", teacher, source.url)
    with atomic_path(target) as tmp:
        try:
            digest = download(
                source.url, tmp, expected_sha256=None, progress=progress, hint=how_to_get(teacher)
            )
        except WeightsError as exc:
            exc.parameter = HOW_TO_GET
            raise
        if source.sha256 and not digest.startswith(source.sha256):
            raise WeightsError(
                f"{source.url}: sha256 {digest} does not match the published {source.sha256}; "
                "the file was not used"
            )
    return target


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with ``module.`` (DataParallel) prefixes removed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{path}: cannot read weights ({first})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    # float32 whatever the file holds: teachers run in float32 (autocast on CUDA)
    return {
        k.replace("module.", ""): v.float() if v.is_floating_point() else v for k, v in raw.items()
    }


def load_into(
    network: nn.Module, state: dict[str, torch.Tensor], what: str, *, assign: bool = False
) -> None:
    """Load ``state`` strictly, turning a mismatch into a one-line WeightsError. ``assign``
    takes the tensors themselves (for a network built on the meta device, never initialised)."""
    try:
        network.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise WeightsError(f"{what}: the weights do not fit the architecture ({detail})") from exc
