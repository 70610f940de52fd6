"""Reading tar shards, low level: tar members without copies, ``.npy`` views, shard URLs
(local paths, ``file://``, ``http(s)://``, ``pipe:``, other fsspec URLs) and one shard's index
with random access to its clips. The corpus format (format.py) and the shard writer and
streams (shards.py) build on it; it knows the manifest only by its attributes."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import mmap
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import numpy as np

from soundnet_cli.errors import SoundnetError, UsageProblem


class CorpusError(SoundnetError):
    """A corpus directory that cannot be read or does not match the settings."""


SHARD_FORMAT = "soundnet-corpus-shard/1"
TAR = ".tar"
MEMBER_NAME = re.compile(r"^([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)$")
AUDIO_EXT = "audio.npy"
BLOCK = 512


def corpus_id(manifest: Any) -> str:
    """A short fingerprint of the corpus settings (teacher provenance aside): every clip of a
    shard carries it, so a shard of another corpus is recognised."""
    known = _IDS.get(id(manifest))
    if known is not None and known[0] is manifest:
        return known[1]
    ident = _corpus_id(manifest)
    _IDS[id(manifest)] = (manifest, ident)
    return ident


_IDS: dict[int, tuple[Any, str]] = {}  # manifests are frozen: their id once each


def _corpus_id(manifest: Any) -> str:
    data = manifest.as_dict()
    data["teachers"] = [{k: v for k, v in t.items() if k != "provenance"} for t in data["teachers"]]
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def npy_data_offset(blob: bytes) -> int:
    major = blob[6]
    return (
        10 + int.from_bytes(blob[8:10], "little")
        if major == 1
        else 12 + int.from_bytes(blob[8:12], "little")
    )


# -- reading a tar sequentially -----------------------------------------------------------------
_HEADER_CACHE: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], int]] = {}


def parse_npy(buffer: Any, offset: int, size: int, where: str) -> np.ndarray:
    """A view of the ``.npy`` member at ``offset`` (no copy)."""
    head = bytes(buffer[offset : offset + 12])
    if size < 12 or head[:6] != b"\x93NUMPY":
        raise CorpusError(f"{where}: not a .npy member; the shard is damaged")
    header_len = (
        int.from_bytes(head[8:10], "little")
        if head[6] == 1
        else int.from_bytes(head[8:12], "little")
    )
    start = 10 if head[6] == 1 else 12
    text = bytes(buffer[offset + start : offset + start + header_len])
    cached = _HEADER_CACHE.get(text)
    if cached is None:
        try:
            meta = ast.literal_eval(text.decode("latin1"))
            dtype = np.dtype(meta["descr"])
            shape = tuple(int(n) for n in meta["shape"])
        except (ValueError, SyntaxError, KeyError, TypeError) as exc:
            raise CorpusError(f"{where}: damaged .npy header ({exc})") from exc
        if meta.get("fortran_order") or dtype.hasobject:
            raise CorpusError(f"{where}: unsupported .npy member")
        cached = (dtype, shape, start + header_len)
        if len(_HEADER_CACHE) < 4096:
            _HEADER_CACHE[text] = cached
    dtype, shape, data_at = cached
    count = int(np.prod(shape)) if shape else 1
    if data_at + count * dtype.itemsize > size:
        raise CorpusError(f"{where}: a .npy member shorter than its header says; damaged shard")
    return np.frombuffer(buffer, dtype, count, offset + data_at).reshape(shape)


def _header_fields(block: bytes, where: str) -> tuple[str, int, bytes]:
    """Name, size and type of a ustar header block (its checksum checked)."""
    stored = block[148:156]
    try:
        checksum = int(stored.replace(b"\0", b" ").strip() or b"0", 8)
        size = int(block[124:136].replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        raise CorpusError(f"{where}: damaged tar header; the shard is corrupt") from None
    if checksum != sum(block[:148]) + 256 + sum(block[156:]):
        raise CorpusError(f"{where}: tar header checksum mismatch; the shard is corrupt")
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    full = (prefix + b"/" + name) if prefix else name
    return full.decode("utf-8", "replace"), size, block[156:157]


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def tar_members(source: Any, where: str) -> Iterator[tuple[str, Any, int, int]]:
    """(name, buffer, offset, size) of each regular member: ``source`` is a buffer (an mmap,
    no copies) or a binary stream (one read per member). Damage is a one-line CorpusError."""
    is_buffer = isinstance(source, (bytes, bytearray, memoryview, mmap.mmap))
    position = 0
    total = len(source) if is_buffer else 0
    long_name: str | None = None
    while True:
        if is_buffer:
            block = bytes(source[position : position + BLOCK])
        else:
            block = _read_exact(source, BLOCK)
        if len(block) < BLOCK:
            if block or position == 0:
                raise CorpusError(f"{where}: truncated shard (ends inside a tar header)")
            raise CorpusError(f"{where}: truncated shard (no end-of-archive marker)")
        position += BLOCK
        if block == b"\0" * BLOCK:
            return
        name, size, kind = _header_fields(block, where)
        padded = _padded(size)
        if is_buffer:
            if position + size > total:
                raise CorpusError(f"{where}: truncated shard (ends inside member {name})")
            buffer, offset = source, position
        else:
            data = _read_exact(source, padded)
            if len(data) < size:
                raise CorpusError(f"{where}: truncated shard (ends inside member {name})")
            buffer, offset = data, 0
        position += padded
        if kind == b"L":  # GNU long name for the next member
            long_name = bytes(buffer[offset : offset + size]).split(b"\0", 1)[0].decode()
            continue
        if kind in (b"x", b"g"):  # pax headers: nothing we need
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if kind not in (b"0", b"\0"):
            raise CorpusError(f"{where}: tar member {name!r} is not a regular file; not a shard")
        yield name, buffer, offset, size


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None:
        data = b""
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def split_member(name: str, where: str) -> tuple[str, str]:
    match = MEMBER_NAME.match(name)
    if not match:
        raise CorpusError(
            f"{where}: tar member {name!r} is not KEY.EXT (a path or folder); the shard is unsafe "
            "and was not read"
        )
    return match.group(1), match.group(2)


URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://", "file://", "pipe:")


def is_url(text: str) -> bool:
    return text.startswith(URL_SCHEMES)


def _url_path(url: str) -> str:
    """The URL (or file path) a ``pipe:`` command reads: its last argument naming a .tar."""
    if not url.startswith("pipe:"):
        return url
    for word in reversed(url[5:].split()):
        if TAR in word:
            return word
    raise UsageProblem(f"{url}: a pipe: command must name the shard's .tar (to find its index)")


def sibling(url: str, name: str) -> str:
    """The URL of ``name`` in the shard's folder (``..`` goes up one folder)."""
    base = _url_path(url).rsplit("/", 1)[0] if "/" in _url_path(url) else "."
    while name.startswith("../"):
        base, name = base.rsplit("/", 1)[0], name[3:]
    return f"{base}/{name}"


def open_url(url: str) -> BinaryIO:
    """A binary stream of a local path, ``file://``, ``http(s)://``, ``pipe:`` command, or any
    fsspec URL (``s3://`` needs s3fs, ``gs://`` gcsfs). One-line CorpusError when unreachable.

    A small helper of the corpus; the media layer's URL inputs (issue 27) may absorb it."""
    try:
        if url.startswith("pipe:"):
            process = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)  # noqa: S602
            assert process.stdout is not None
            return cast(BinaryIO, _PipeStream(process, url))
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=60)  # noqa: S310
        if url.startswith("file://"):
            return open(url[7:], "rb")
        if "://" not in url:
            return open(url, "rb")
        import fsspec

        return fsspec.open(url, "rb").open()
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise CorpusError(f"{url}: cannot read ({_reason(exc)})") from exc
    except ImportError as exc:
        raise CorpusError(f"{url}: cannot read ({exc}; install the fsspec backend)") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


class _PipeStream(io.RawIOBase):
    """A pipe: command's stdout; a non-zero exit is a CorpusError when the stream ends."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert self.process.stdout is not None
        data = self.process.stdout.read(size)
        if not data and self.process.wait() != 0:
            raise CorpusError(f"{self.url}: the command exited with {self.process.returncode}")
        return data

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        super().close()


def read_url(url: str) -> bytes:
    with open_url(url) as stream:
        try:
            return stream.read()
        except (OSError, urllib.error.URLError) as exc:
            raise CorpusError(f"{url}: cannot read ({_reason(exc)})") from exc


def read_range(url: str, start: int, length: int) -> tuple[bytes, bytes | None]:
    """``length`` bytes at ``start`` (a seek locally, a range request over HTTP or fsspec), and
    the whole shard when the source gave it all (a server that ignores ranges, ``pipe:``) so
    the caller can keep it for the shard's other clips."""
    whole = None
    if url.startswith(("http://", "https://")):
        request = urllib.request.Request(
            url, headers={"Range": f"bytes={start}-{start + length - 1}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                data = response.read()
                if response.status == 200:  # the server ignored the range
                    whole, data = data, data[start : start + length]
        except (OSError, urllib.error.URLError) as exc:
            raise CorpusError(f"{url}: cannot read ({_reason(exc)})") from exc
    else:
        with open_url(url) as stream:
            if url.startswith("pipe:"):
                whole = stream.read()
                data = whole[start : start + length]
            else:
                stream.seek(start)
                data = _read_exact(stream, length)
    if len(data) != length:
        raise CorpusError(f"{url}: truncated shard (a clip reaches past its end)")
    return data, whole


def open_shard(url: str) -> Any:
    """What :func:`tar_members` reads: an mmap for a local file, else a stream."""
    path = url[7:] if url.startswith("file://") else url
    if "://" not in path and not path.startswith("pipe:"):
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    raise CorpusError(f"{url}: truncated shard (empty)")
                # mapped whole at once: page faults one by one cost more than the copy
                if not hasattr(mmap, "MAP_SHARED"):  # Windows
                    return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                populate = getattr(mmap, "MAP_POPULATE", 0)
                return mmap.mmap(
                    handle.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ
                )
        except OSError as exc:
            raise CorpusError(f"{url}: cannot read ({_reason(exc)})") from exc
    return open_url(url)


# -- one shard's index and its clips, local or remote -------------------------------------------
@dataclass
class TarShard:
    """A tar shard's index (from its ``.json`` beside it) and random access to its clips:
    memory maps for a local file, range reads for a URL."""

    name: str  # rankR-N.tar
    url: str  # a local path or a URL
    manifest: Any  # a CorpusManifest
    index: dict[str, Any]
    _map: Any = field(default=None, repr=False)
    _whole: bytes | None = field(default=None, repr=False)  # from a source without ranges

    @classmethod
    def load(cls, url: str, manifest: Any) -> TarShard:
        index_url = url[: -len(TAR)] + ".json" if not url.startswith("pipe:") else None
        if index_url is None:
            command = url[5:]
            cut = command.rfind(TAR)
            index_url = "pipe:" + command[:cut] + ".json" + command[cut + len(TAR) :]
        try:
            index = json.loads(read_url(index_url))
        except ValueError as exc:
            raise CorpusError(f"{index_url}: damaged shard index ({exc})") from exc
        if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
            raise CorpusError(f"{index_url}: not a soundnet shard index")
        if index.get("corpus") != corpus_id(manifest):
            raise CorpusError(
                f"{url}: a shard of another corpus (corpus id {index.get('corpus')!r}, the "
                f"manifest's is {corpus_id(manifest)!r})"
            )
        name = _url_path(url).rsplit("/", 1)[-1]
        return cls(name, url, manifest, index)

    @property
    def local(self) -> bool:
        return "://" not in self.url and not self.url.startswith("pipe:")

    def dir_index(self) -> dict[str, Any]:
        """The index a directory shard of the same clips has (byte for byte, once dumped)."""
        clips = [{k: v for k, v in c.items() if k not in ("key", "tar", "dtypes")} for c in
                 self.index["clips"]]  # fmt: skip
        return {"clips": clips, "videos": self.index["videos"], "failed": self.index["failed"]}

    def check_extents(self) -> None:
        """Every clip's arrays lie inside the tar file (local shards)."""
        size = os.path.getsize(self.url)
        for clip in self.index["clips"]:
            ends = [clip["tar"]["audio"] + 2 * clip["samples"]]
            ends += [clip["tar"][h.name] + clip["frames"] * h.size * 2 for h in self.manifest.heads]
            if max(ends) > size:
                raise CorpusError(
                    f"{self.url}: clip {clip['clip']} of {clip['video']} reaches past the end of "
                    "the shard; it is truncated (convert or prepare it again)"
                )

    def arrays(self, number: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Clip ``number`` of this shard: int16 audio and posteriors per head."""
        clip = self.index["clips"][number]
        dtypes = clip.get("dtypes", {})
        specs = [("audio", np.dtype(dtypes.get("audio", "<i2")), (clip["samples"],))] + [
            (h.name, np.dtype(dtypes.get(h.name, "<f2")), (clip["frames"], h.size))
            for h in self.manifest.heads
        ]
        out = {}
        for name, dtype, shape in specs:
            count = int(np.prod(shape))
            offset = clip["tar"][name]
            if self.local:
                if self._map is None:
                    with open(self.url, "rb") as handle:
                        self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                if offset + count * dtype.itemsize > len(self._map):
                    raise CorpusError(f"{self.url}: truncated shard (clip {number})")
                out[name] = np.frombuffer(self._map, dtype, count, offset).reshape(shape)
            else:
                size = count * dtype.itemsize
                if self._whole is not None:
                    data = self._whole[offset : offset + size]
                    if len(data) != size:
                        raise CorpusError(f"{self.url}: truncated shard (clip {number})")
                else:
                    data, self._whole = read_range(self.url, offset, size)
                out[name] = np.frombuffer(data, dtype).reshape(shape)
        audio = out.pop("audio")
        return audio, out

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_map": None, "_whole": None}
