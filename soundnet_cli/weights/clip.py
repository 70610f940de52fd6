"""CLIP weights through open_clip: names, the cache, the file's sha256, and the model itself.

A CLIP identity is what a corpus and a student checkpoint record so that the text tower used at
prediction time is the same network the image teacher was: the open_clip model name, the
pretrained tag, the sha256 of the weights file (None for random weights), QuickGELU, and the
image mean/std/size. ``open-clip-torch`` is an optional dependency (``soundnet-cli[clip]``);
nothing here imports it before it is needed.

Pretrained files are downloaded once into ``$SOUNDNET_HOME/clip`` from the URL open_clip's
pretrained table gives (its Hugging Face file where it names one), checked against the sha256
that the URL publishes (OpenAI's and mlfoundations' URLs carry it), and reused afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from soundnet_cli.errors import UsageProblem, WeightsError
from soundnet_cli.weights.home import OFFLINE_ENV, ByteProgress, download, offline, soundnet_home

log = logging.getLogger(__name__)

INSTALL = "install the CLIP extra: pip install 'soundnet-cli[clip]'"


def open_clip_module() -> Any:
    """open_clip, or a one-line error saying how to install it."""
    try:
        import open_clip
    except ModuleNotFoundError as exc:
        raise UsageProblem(f"CLIP teachers need open_clip; {INSTALL}") from exc
    return open_clip


def clip_dir() -> Path:
    return soundnet_home() / "clip"


@dataclass(frozen=True)
class ClipIdentity:
    """Which CLIP network: enough to rebuild its text tower and to refuse another one."""

    model: str
    pretrained: str | None
    sha256: str | None
    quick_gelu: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    image_size: int
    weights_file: str | None = None  # a local file given instead of a pretrained tag

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipIdentity:
        try:
            return cls(
                str(data["model"]),
                data.get("pretrained"),
                data.get("sha256"),
                bool(data.get("quick_gelu", False)),
                tuple(float(x) for x in data["image_mean"]),
                tuple(float(x) for x in data["image_std"]),
                int(data["image_size"]),
                data.get("weights_file"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"damaged CLIP identity ({exc})") from exc

    @property
    def label(self) -> str:
        return f"clip:{self.model}" + (f"/{self.pretrained}" if self.pretrained else "")


def parse_clip_name(variant: str) -> tuple[str, str | None]:
    """``ViT-B-32/openai`` -> ``("ViT-B-32", "openai")``; checked against open_clip's lists
    (an unknown model or tag: UsageProblem naming the known ones)."""
    open_clip = open_clip_module()
    model, _, tag = variant.partition("/")
    models = open_clip.list_models()
    if model not in models:
        close = [m for m in models if m.lower().startswith(model.lower()[:5])][:8]
        hint = f"; close: {', '.join(close)}" if close else "; see open_clip.list_models()"
        raise UsageProblem(f"open_clip has no model {model!r}{hint}", parameter="teacher")
    if tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if tag not in tags:
            raise UsageProblem(
                f"open_clip has no pretrained tag {tag!r} for {model}; its tags: "
                f"{', '.join(tags) or 'none'}",
                parameter="teacher",
            )
    return model, tag or None


def pretrained_config(model: str, tag: str | None) -> dict[str, Any]:
    if not tag:
        return {}
    return dict(open_clip_module().get_pretrained_cfg(model, tag))


def weights_url(cfg: dict[str, Any]) -> str:
    """Where a pretrained tag's file is: its URL, else its Hugging Face file."""
    if cfg.get("url"):
        return str(cfg["url"])
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        return f"https://huggingface.co/{repo}/resolve/main/{filename}"
    raise WeightsError("open_clip names no file for these weights")


def published_sha256(url: str) -> str | None:
    """The sha256 (or its prefix) a URL publishes, as open_clip reads it."""
    parts = url.rstrip("/").split("/")
    if "openaipublic" in url and len(parts) >= 2:
        return parts[-2]
    if "mlfoundations" in url:
        return os.path.splitext(parts[-1])[0].split("-")[-1]
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file(model: str, tag: str) -> Path:
    return clip_dir() / f"{model}--{tag}.bin"


def fetch_clip_weights(
    model: str, tag: str, *, progress: ByteProgress | None = None, url: str | None = None
) -> tuple[Path, str]:
    """The weights file of ``model``/``tag`` (downloaded once, then cached) and its sha256."""
    target = cached_file(model, tag)
    sidecar = target.with_suffix(".sha256")
    if target.is_file() and sidecar.is_file():
        return target, sidecar.read_text().strip()
    if offline():
        raise WeightsError(
            f"CLIP weights {model}/{tag} are not cached and {OFFLINE_ENV} is set; run "
            f"`soundnet weights fetch clip:{model}/{tag}` while online"
        )
    url = url or weights_url(pretrained_config(model, tag))
    expected = published_sha256(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    log.info("Fetching CLIP weights %s/%s from %s (once)", model, tag, url)
    try:
        digest = download(url, partial, expected_sha256=None, progress=progress)
        if expected and not digest.startswith(expected):
            raise WeightsError(
                f"{url}: sha256 {digest} does not match the published {expected}; the file "
                "was not used"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    sidecar.write_text(digest + "\n")
    return target, digest


def build_clip(
    model: str,
    tag: str | None,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
) -> tuple[Any, Any, ClipIdentity]:
    """open_clip's model, its evaluation ``preprocess`` and the identity of its weights."""
    open_clip = open_clip_module()
    cfg = pretrained_config(model, tag)
    quick = bool(cfg.get("quick_gelu", False))
    path: Path | None = None
    sha: str | None = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: no such CLIP weights file")
        sha = file_sha256(path)
    elif not random_init:
        if not tag:
            raise UsageProblem(
                f"clip:{model} needs a pretrained tag (clip:{model}/TAG), a weights file, or "
                "random initialisation",
                parameter="teacher",
            )
        path, sha = fetch_clip_weights(model, tag)
    image_options = {
        key: cfg[name]
        for key, name in (
            ("image_mean", "mean"),
            ("image_std", "std"),
            ("image_interpolation", "interpolation"),
            ("image_resize_mode", "resize_mode"),
        )
        if cfg.get(name) is not None
    }
    try:
        network, _, preprocess = open_clip.create_model_and_transforms(
            model,
            pretrained=str(path) if path is not None else None,
            force_quick_gelu=quick,
            **image_options,
        )
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"open_clip could not load {model} weights ({first})") from exc
    network.eval()
    visual = network.visual
    size = visual.image_size
    identity = ClipIdentity(
        model=model,
        pretrained=tag,
        sha256=sha,
        quick_gelu=quick,
        image_mean=tuple(float(x) for x in visual.image_mean),
        image_std=tuple(float(x) for x in visual.image_std),
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        weights_file=str(path.resolve()) if weights is not None and path is not None else None,
    )
    return network, preprocess, identity


def text_tower(identity: ClipIdentity) -> tuple[Any, Any]:
    """The CLIP model (for ``encode_text``) and tokenizer of exactly the recorded weights: the
    cached file of its tag, or the local file it was built from; another sha256 is refused."""
    open_clip = open_clip_module()
    if identity.sha256 is None:
        raise WeightsError(
            f"{identity.label} was built from random weights; no text tower matches it"
        )
    if identity.weights_file:
        path = Path(identity.weights_file)
        if not path.is_file():
            raise WeightsError(f"{path}: the CLIP weights file recorded by the model is missing")
        found = file_sha256(path)
    elif identity.pretrained:
        path, found = fetch_clip_weights(identity.model, identity.pretrained)
    else:
        raise WeightsError(f"{identity.label}: no weights file or pretrained tag recorded")
    if found != identity.sha256:
        raise WeightsError(
            f"{path}: sha256 {found[:12]}... differs from the {identity.sha256[:12]}... the "
            "model was trained with; refusing another text tower"
        )
    network, _, _ = open_clip.create_model_and_transforms(
        identity.model, pretrained=str(path), force_quick_gelu=identity.quick_gelu
    )
    return network.eval(), open_clip.get_tokenizer(identity.model)
