"""Tar shards: the corpus in the WebDataset convention, read from disk or streamed from URLs.

A tar-shard corpus has the layout of a directory corpus with each shard one tar file::

    CORPUS/
      manifest.json                   the corpus settings (the same file as a directory corpus)
      shards/rank00000-000001.tar     the clips, one WebDataset sample per clip:
        rank00000-000001-000000.json        video, clip number, start, frame times, corpus id
        rank00000-000001-000000.audio.npy   int16 PCM (samples,)
        rank00000-000001-000000.<head>.npy  float16 posteriors (frames, categories), per head
      shards/rank00000-000001.json    the shard's index: its clips (with the byte offsets of
                                      their arrays in the tar), videos and failures

Members are stored uncompressed (audio as int16 ``.npy``: see docs/formats.md for the measured
choice against FLAC), so a local reader memory-maps them without copies and a remote one reads
any clip with one range request. A shard and its index are written under temporary names and
renamed into place, the index first: a reader that lists ``*.tar`` sees only whole shards.
Member names are never used as paths: a member whose name is not ``KEY.EXT`` (``../x``, a
folder) makes the shard invalid.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.corpus.format import (
    AUDIO,
    INDEX,
    MANIFEST,
    SHARD_NAME,
    SHARDS,
    ClipRef,
    CorpusError,
    CorpusManifest,
    Sample,
    commit_dir_shard,
)
from soundnet_cli.corpus.tario import (
    AUDIO_EXT,
    BLOCK,
    SHARD_FORMAT,
    TAR,
    TarShard,
    corpus_id,
    npy_data_offset,
    open_shard,
    parse_npy,
    read_url,
    sibling,
    split_member,
    tar_members,
)
from soundnet_cli.errors import UsageProblem

log = logging.getLogger(__name__)


def is_tar_shard_name(name: str) -> bool:
    return name.endswith(TAR) and bool(SHARD_NAME.match(name[: -len(TAR)]))


def index_name(tar_name: str) -> str:
    return tar_name[: -len(TAR)] + ".json"


# -- writing ------------------------------------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_tar_shard(
    shards_dir: Path,
    name: str,
    manifest: CorpusManifest,
    index: Mapping[str, Any],
    audio: np.ndarray,
    heads: Mapping[str, np.ndarray],
) -> Path:
    """Write one tar shard ``name`` (``rankR-N``) and its index from a directory shard's
    index and arrays; whole or not at all."""
    ident = corpus_id(manifest)
    videos = {v["key"]: v for v in index["videos"]}
    tag = uuid.uuid4().hex[:8]
    tmp_tar = shards_dir / f".{name}.{tag}.tar.tmp"
    tmp_index = shards_dir / f".{name}.{tag}.json.tmp"
    clips_out = []
    try:
        with open(tmp_tar, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for number, clip in enumerate(index["clips"]):
                    key = f"{name}-{number:06d}"
                    video = videos.get(clip["video"], {})
                    info = {
                        "corpus": ident,
                        "video": clip["video"],
                        "path": video.get("path", clip["video"]),
                        "clip": clip["clip"],
                        "start": clip["start"],
                        "frame_times": clip["frame_times"],
                    }
                    offsets: dict[str, int] = {}
                    _add(tar, f"{key}.json", json.dumps(info, ensure_ascii=False).encode())
                    a = audio[clip["audio_offset"] : clip["audio_offset"] + clip["samples"]]
                    blob = _npy_bytes(a)
                    offsets["audio"] = _add(tar, f"{key}.{AUDIO_EXT}", blob) + npy_data_offset(blob)
                    dtypes = {"audio": a.dtype.str}
                    for head, array in heads.items():
                        rows = array[clip["frame_offset"] : clip["frame_offset"] + clip["frames"]]
                        blob = _npy_bytes(rows)
                        offsets[head] = _add(tar, f"{key}.{head}.npy", blob) + npy_data_offset(blob)
                        dtypes[head] = rows.dtype.str
                    clips_out.append(dict(clip) | {"key": key, "tar": offsets, "dtypes": dtypes})
            handle.flush()
            os.fsync(handle.fileno())
        sidecar = {
            "format": SHARD_FORMAT,
            "corpus": ident,
            "clips": clips_out,
            "videos": list(index["videos"]),
            "failed": list(index.get("failed", [])),
        }
        with open(tmp_index, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(sidecar, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp_index, shards_dir / f"{name}.json")  # the index first: a .tar is whole
        os.rename(tmp_tar, shards_dir / f"{name}{TAR}")
    finally:
        for tmp in (tmp_tar, tmp_index):
            tmp.unlink(missing_ok=True)
    return shards_dir / f"{name}{TAR}"


def tar_committer(manifest: CorpusManifest) -> Callable[..., Path]:
    """A ``ShardWriter`` commit that writes each shard as a tar shard (and its index)."""

    def commit(
        shards_dir: Path,
        name: str,
        audio: np.ndarray,
        heads: Mapping[str, np.ndarray],
        index: Mapping[str, Any],
    ) -> Path:
        return write_tar_shard(shards_dir, name, manifest, index, audio, heads)

    return commit


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add a member; the byte offset of its data in the archive."""
    if len(name) >= 100:
        raise CorpusError(f"tar member name too long for a shard: {name}")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    start = tar.offset + BLOCK
    tar.addfile(info, io.BytesIO(data))
    return start


@dataclass
class ShardSample:
    """One clip read from a tar shard: its JSON record and arrays (views, no copies)."""

    key: str
    info: dict[str, Any]
    audio: np.ndarray
    posteriors: dict[str, np.ndarray]


def shard_samples(
    source: Any, where: str, manifest: CorpusManifest, heads: Sequence[str] | None = None
) -> Iterator[ShardSample]:
    """Every clip of one tar shard in order, checked: member names, the corpus id, one audio
    and one array per head."""
    ident = corpus_id(manifest)
    wanted = [h.name for h in manifest.heads] if heads is None else list(heads)
    current: str | None = None
    parts: dict[str, tuple[Any, int, int]] = {}
    for name, buffer, offset, size in tar_members(source, where):
        key, ext = split_member(name, where)
        if key != current:
            if current is not None:
                yield _sample(current, parts, where, ident, wanted)
            current, parts = key, {}
        parts[ext] = (buffer, offset, size)
    if current is not None:
        yield _sample(current, parts, where, ident, wanted)


def _sample(
    key: str, parts: dict[str, tuple[Any, int, int]], where: str, ident: str, heads: list[str]
) -> ShardSample:
    place = f"{where}: sample {key}"
    if "json" not in parts or AUDIO_EXT not in parts:
        raise CorpusError(f"{place} lacks its .json or .audio.npy member; the shard is damaged")
    buffer, offset, size = parts["json"]
    try:
        info = json.loads(bytes(buffer[offset : offset + size]))
    except ValueError as exc:
        raise CorpusError(f"{place}: damaged JSON ({exc})") from exc
    if info.get("corpus") != ident:
        raise CorpusError(
            f"{where}: a shard of another corpus (its clips carry corpus id "
            f"{info.get('corpus')!r}, the manifest's is {ident!r})"
        )
    audio = parse_npy(*parts[AUDIO_EXT], place)
    posteriors = {}
    for head in heads:
        member = parts.get(f"{head}.npy")
        if member is None:
            raise CorpusError(f"{place} has no posteriors for head {head!r}")
        posteriors[head] = parse_npy(*member, place)
    return ShardSample(key, info, audio, posteriors)


# -- URLs ------------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` and ``{x,y}`` expanded, left to right (zero padding kept)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        first, last = span.group(1), span.group(2)
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        options = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [url for option in options for url in expand_braces(head + option + tail)]


def shard_urls(spec: str) -> list[str]:
    """The shard URLs of a CORPUS argument: ``::``-separated URLs or brace patterns, or
    ``@FILE`` listing them one a line."""
    if spec.startswith("@"):
        try:
            lines = Path(spec[1:]).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise UsageProblem(f"{spec[1:]}: cannot read the list of shards ({exc})") from exc
        items = lines
    else:
        items = spec.split("::")
    urls = [url for item in items if item for url in expand_braces(item)]
    if not urls:
        raise UsageProblem(f"{spec}: names no shards")
    for url in urls:
        if not url.startswith("pipe:") and not url.endswith(TAR):
            raise UsageProblem(f"{url}: a shard URL names a .tar file")
    return urls


def clip_refs(shard: str, index: Mapping[str, Any]) -> list[ClipRef]:
    try:
        return [
            ClipRef(
                shard,
                c["video"],
                int(c["clip"]),
                float(c["start"]),
                int(c["audio_offset"]),
                int(c["samples"]),
                int(c["frame_offset"]),
                int(c["frames"]),
                tuple(c["frame_times"]),
            )
            for c in index["clips"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorpusError(f"{shard}: damaged clip entry ({type(exc).__name__}: {exc})") from exc


class ShardSet:
    """A corpus given as shard URLs: the manifest beside them (in their folder, else its
    parent), every shard's index, and any clip by a range read. ``corpus[i]`` -> Sample, as a
    directory :class:`~soundnet_cli.corpus.format.Corpus`."""

    def __init__(self, spec: str) -> None:
        self.root = spec
        self.urls = shard_urls(spec)
        self.manifest = _remote_manifest(self.urls[0])
        self.shard_list = [TarShard.load(url, self.manifest) for url in self.urls]
        self.clips: list[ClipRef] = []
        self.videos: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, dict[str, Any]] = {}
        self._where: list[tuple[int, int]] = []
        for s, shard in enumerate(self.shard_list):
            for failure in shard.index.get("failed", []):
                self.failures[failure["video"]] = failure
            for video in shard.index["videos"]:
                self.videos[video["key"]] = video | {"shard": shard.name}
                self.failures.pop(video["key"], None)
            refs = clip_refs(shard.url, shard.index)
            self.clips.extend(refs)
            self._where.extend((s, n) for n in range(len(refs)))

    @property
    def shards(self) -> list[str]:
        return [s.name for s in self.shard_list]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Sample:
        s, number = self._where[i]
        audio, posteriors = self.shard_list[s].arrays(number)
        return Sample(self.clips[i], audio, posteriors)


def _remote_manifest(url: str) -> CorpusManifest:
    reasons = []
    for name in (MANIFEST, f"../{MANIFEST}"):
        where = sibling(url, name)
        try:
            data = read_url(where)
        except CorpusError as exc:
            reasons.append(str(exc))
            continue
        try:
            return CorpusManifest.from_dict(json.loads(data))
        except CorpusError as exc:
            raise CorpusError(f"{where}: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorpusError(f"{where}: damaged manifest ({exc})") from exc
    raise CorpusError(f"{url}: no corpus manifest beside the shards ({'; '.join(reasons)})")


# -- converting ---------------------------------------------------------------------------------
@dataclass
class ConvertResult:
    shards: int
    skipped: int
    clips: int


def convert(source: Path, target: Path, to: str) -> ConvertResult:
    """Rewrite the corpus ``source`` into ``target`` as ``to`` ("shards" or "dirs"), without
    loss: converting back gives the same files byte for byte. Shards already in ``target``
    (whole, by construction) are skipped, so an interrupted conversion resumes."""
    from soundnet_cli.corpus.format import Corpus

    if to not in ("shards", "dirs"):
        raise UsageProblem(f"--to must be shards or dirs, not {to!r}", parameter="to")
    source, target = Path(source), Path(target)
    corpus = Corpus(source)
    if target.resolve() == source.resolve():
        raise UsageProblem("the target must be another folder than the source", parameter="target")
    manifest_bytes = (source / MANIFEST).read_bytes()
    if (target / MANIFEST).is_file() and (target / MANIFEST).read_bytes() != manifest_bytes:
        raise UsageProblem(f"{target} holds another corpus; convert into a new folder")
    shards_dir = target / SHARDS
    shards_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(shards_dir)
    if not (target / MANIFEST).is_file():
        from soundnet_cli.atomic import atomic_path

        with atomic_path(target / MANIFEST) as tmp:
            tmp.write_bytes(manifest_bytes)
    result = ConvertResult(0, 0, 0)
    for shard in corpus.shards:
        name = shard[: -len(TAR)] if shard.endswith(TAR) else shard
        done = (shards_dir / f"{name}{TAR}") if to == "shards" else (shards_dir / name)
        if done.exists():
            result.skipped += 1
            continue
        index, audio, heads = _shard_contents(corpus, shard)
        if to == "shards":
            write_tar_shard(shards_dir, name, corpus.manifest, index, audio, heads)
        else:
            commit_dir_shard(shards_dir, name, audio, heads, index)
        result.shards += 1
        result.clips += len(index["clips"])
        log.info("converted %s", shard)
    return result


def _shard_contents(
    corpus: Any, shard: str
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """A shard's index (directory form) and whole arrays, read through and checked."""
    heads = [h.name for h in corpus.manifest.heads]
    if not shard.endswith(TAR):
        folder = corpus.root / SHARDS / shard
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        audio = np.load(folder / AUDIO)
        return index, audio, {h: np.load(folder / f"{h}.npy") for h in heads}
    tar = corpus.tar_shard(shard)
    index = tar.dir_index()
    where = str(tar.url)
    samples = list(shard_samples(open_shard(tar.url), where, corpus.manifest, heads))
    if len(samples) != len(index["clips"]):
        raise CorpusError(
            f"{where}: holds {len(samples)} clips, its index {len(index['clips'])}; damaged shard"
        )
    for sample, clip in zip(samples, tar.index["clips"], strict=True):
        if sample.key != clip["key"] or sample.audio.shape != (clip["samples"],):
            raise CorpusError(f"{where}: sample {sample.key} does not match its index entry")
    audio_parts = [s.audio for s in samples]
    audio = np.concatenate(audio_parts) if audio_parts else np.zeros(0, np.int16)
    arrays = {}
    for head in corpus.manifest.heads:
        parts = [s.posteriors[head.name] for s in samples]
        arrays[head.name] = np.concatenate(parts) if parts else np.zeros((0, head.size), np.float16)
    return index, audio, arrays


def verify(corpus: Any) -> list[str]:
    """Read every clip of every shard whole; one line per problem found (none: an empty list)."""
    problems = []
    for shard in corpus.shards:
        try:
            _, _, heads = _shard_contents(corpus, shard)
        except (CorpusError, OSError, ValueError) as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        for name, array in heads.items():
            if not np.isfinite(np.asarray(array, np.float32)).all():
                problems.append(f"{shard}: head {name} holds NaN or infinite posteriors")
    return problems


def remove_stale(shards_dir: Path) -> None:
    """Temporary files an interrupted writer left (never seen by readers)."""
    for entry in shards_dir.glob(".rank*.tmp"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
