"""The prepared corpus: what `soundnet prepare` writes and `soundnet distill` reads.

Layout::

    CORPUS/
      manifest.json               sample rate, clip length, frame interval, teachers and heads
      shards/rank00000-000001/    one committed shard (a directory, renamed into place whole)
        index.json                its clips (offsets into the arrays), videos and failures
        audio.npy                 int16 PCM, every clip's samples back to back
        <head>.npy                float16 posteriors, (frames, categories), aligned to frames;
                                  for an embedding head, float16 unit vectors (frames, size)

Each rank (or worker) writes its own shard sequence ``rank<R>-<N>``; readers see the union.
A shard is built in a hidden temporary directory and renamed into place when complete, so an
interrupted run leaves only whole shards and resumes by skipping the videos they hold.
Clip ``i`` covers ``frames * frame_interval`` seconds of audio; frame ``k`` of a clip was taken
at ``frame_times[k]`` seconds into its video and labels audio samples
``[k * interval, (k + 1) * interval)`` of the clip.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.atomic import atomic_path
from soundnet_cli.corpus.tario import CorpusError as CorpusError  # re-exported
from soundnet_cli.corpus.tario import TarShard
from soundnet_cli.errors import UsageProblem

FORMAT = "soundnet-corpus/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
INDEX = "index.json"
AUDIO = "audio.npy"
SHARD_NAME = re.compile(r"^rank(\d{5})-(\d{6})$")


@dataclass(frozen=True)
class HeadInfo:
    """A head of the corpus: ``posteriors`` over categories, or an ``embedding`` of ``dim``
    (manifests written before embedding heads existed have posterior heads only)."""

    name: str
    teacher: str
    categories: tuple[str, ...]
    kind: str = "posteriors"
    dim: int = 0

    @property
    def size(self) -> int:
        return self.dim if self.kind == "embedding" else len(self.categories)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "teacher": self.teacher}
        if self.kind == "embedding":
            return data | {"kind": self.kind, "size": self.dim, "categories": []}
        return data | {"categories": list(self.categories)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadInfo:
        kind = str(data.get("kind", "posteriors"))
        if kind not in ("posteriors", "embedding"):
            raise CorpusError(f"head {data.get('name')!r} has an unknown kind {kind!r}")
        dim = int(data["size"]) if kind == "embedding" else 0
        return cls(data["name"], data["teacher"], tuple(data["categories"]), kind, dim)


@dataclass(frozen=True)
class CorpusManifest:
    """Corpus-wide settings; every rank and every resumed run must agree on them."""

    sample_rate: int
    clip_seconds: float
    frame_interval: float
    frame_at: str  # "centre" or "start" of each interval
    mix: str
    teachers: tuple[dict[str, Any], ...]
    heads: tuple[HeadInfo, ...]
    format: str = FORMAT

    @property
    def frames_per_clip(self) -> int:
        return int(round(self.clip_seconds / self.frame_interval))

    @property
    def samples_per_frame(self) -> float:
        return self.frame_interval * self.sample_rate

    def head(self, name: str) -> HeadInfo:
        for head in self.heads:
            if head.name == name:
                return head
        raise UsageProblem(
            f"the corpus has no head {name!r}; heads: {', '.join(h.name for h in self.heads)}"
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["heads"] = [h.as_dict() for h in self.heads]
        data["teachers"] = [dict(t) for t in self.teachers]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorpusManifest:
        if not isinstance(data, Mapping):
            raise CorpusError(f"not a soundnet corpus manifest (a JSON {type(data).__name__})")
        if data.get("format") != FORMAT:
            raise CorpusError(f"not a soundnet corpus manifest (format {data.get('format')!r})")
        manifest = cls(
            sample_rate=int(data["sample_rate"]),
            clip_seconds=float(data["clip_seconds"]),
            frame_interval=float(data["frame_interval"]),
            frame_at=str(data["frame_at"]),
            mix=str(data["mix"]),
            teachers=tuple(dict(t) for t in data["teachers"]),
            heads=tuple(HeadInfo.from_dict(h) for h in data["heads"]),
        )
        manifest.check()
        return manifest

    def check(self) -> None:
        """Refuse settings no corpus can have (a hand-edited manifest), naming the first."""
        for name in ("sample_rate", "clip_seconds", "frame_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CorpusError(f"not a usable corpus manifest ({name} is {value})")
        if not self.heads:
            raise CorpusError("not a usable corpus manifest (it lists no heads)")
        for head in self.heads:
            if head.kind == "embedding" and head.size < 1:
                raise CorpusError(f"not a usable corpus manifest (head {head.name} has no size)")
            if head.kind != "embedding" and not head.categories:
                raise CorpusError(
                    f"not a usable corpus manifest (head {head.name} has no categories)"
                )

    def settings_differ(self, other: CorpusManifest) -> list[str]:
        """Names of the settings where ``other`` differs (provenance aside)."""
        mine, theirs = self.as_dict(), other.as_dict()
        for data in (mine, theirs):
            data["teachers"] = [
                {k: v for k, v in t.items() if k != "provenance"} for t in data["teachers"]
            ]
        return [key for key in mine if mine[key] != theirs.get(key)]


def frame_boundary(k: int, manifest: CorpusManifest) -> int:
    """The first audio sample of frame interval ``k`` (rounded when intervals are fractional)."""
    return int(round(k * manifest.samples_per_frame))


def write_manifest(root: Path, manifest: CorpusManifest) -> None:
    """Write the manifest, or check that an existing one has the same settings."""
    path = root / MANIFEST
    if path.is_file():
        existing = read_manifest(root)
        differ = existing.settings_differ(manifest)
        if differ:
            raise UsageProblem(
                f"{root} was prepared with other settings ({', '.join(differ)}); prepare into "
                "a new folder, or resume with the same settings",
                parameter="out",
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest.as_dict(), indent=2, ensure_ascii=False) + "\n")


def read_manifest(root: Path) -> CorpusManifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{root}: not a corpus (no {MANIFEST}); make one with `soundnet prepare`")
    try:
        return CorpusManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except CorpusError as exc:
        raise CorpusError(f"{path}: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorpusError(f"{path}: damaged manifest ({exc})") from exc


# -- writing ------------------------------------------------------------------------------------
@dataclass
class ClipData:
    """One clip to store: its audio and the posteriors of its frames."""

    start: float  # seconds into the video
    audio: np.ndarray  # int16 (samples,)
    frame_times: list[float]  # seconds into the video, one per frame
    posteriors: dict[str, np.ndarray]  # head -> (frames, categories), probabilities


@dataclass
class VideoRecord:
    key: str  # the absolute path: what resuming matches on
    path: str  # as given on the command line
    duration: float  # seconds of audio kept (whole frame intervals)


CommitShard = Callable[[Path, str, np.ndarray, Mapping[str, np.ndarray], Mapping[str, Any]], Path]


class ShardWriter:
    """Buffers clips of one rank and commits them as whole shards: shard directories, or
    whatever ``commit`` writes (``corpus.shards.commit_tar_shard``: tar shards). Shard numbers
    continue after the rank's existing shards of either form."""

    def __init__(
        self,
        root: Path,
        manifest: CorpusManifest,
        rank: int = 0,
        shard_bytes: int = 128 << 20,
        commit: CommitShard | None = None,
    ):
        self.root = Path(root)
        self.manifest = manifest
        self.rank = rank
        self.shard_bytes = max(1, shard_bytes)
        self.commit: CommitShard = commit or commit_dir_shard
        self.shards_dir = self.root / SHARDS
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        self._next = 1 + max(
            (int(m.group(2)) for m in self._own_shards()), default=0
        )  # never reuse a number
        self._reset()

    def _own_shards(self) -> Iterator[re.Match[str]]:
        for entry in self.shards_dir.iterdir():
            match = SHARD_NAME.match(entry.name.removesuffix(".tar"))
            if match and int(match.group(1)) == self.rank:
                yield match

    def _clean_stale(self) -> None:
        for entry in self.shards_dir.glob(f".rank{self.rank:05d}-*"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:  # a tar shard's temporary file
                entry.unlink(missing_ok=True)

    def _reset(self) -> None:
        self._audio: list[np.ndarray] = []
        self._posteriors: dict[str, list[np.ndarray]] = {h.name: [] for h in self.manifest.heads}
        self._clips: list[dict[str, Any]] = []
        self._videos: list[dict[str, Any]] = []
        self._failed: list[dict[str, Any]] = []
        self._samples = 0
        self._frames = 0

    @property
    def pending_bytes(self) -> int:
        return self._samples * 2 + self._frames * sum(h.size for h in self.manifest.heads) * 2

    def add_video(self, video: VideoRecord, clips: Sequence[ClipData]) -> None:
        for number, clip in enumerate(clips):
            frames = len(clip.frame_times)
            expected = frame_boundary(frames, self.manifest)
            if clip.audio.dtype != np.int16 or clip.audio.shape != (expected,):
                raise CorpusError(
                    f"{video.path}: clip {number} has {clip.audio.shape} {clip.audio.dtype} audio, "
                    f"expected ({expected},) int16 for {frames} frames"
                )
            for head in self.manifest.heads:
                post = clip.posteriors[head.name]
                if post.shape != (frames, head.size):
                    raise CorpusError(
                        f"{video.path}: head {head.name!r} posteriors shaped {post.shape}, "
                        f"expected {(frames, head.size)}"
                    )
                self._posteriors[head.name].append(post.astype(np.float16))
            self._clips.append(
                {
                    "video": video.key,
                    "clip": number,
                    "start": round(clip.start, 6),
                    "audio_offset": self._samples,
                    "samples": int(expected),
                    "frame_offset": self._frames,
                    "frames": frames,
                    "frame_times": [round(t, 6) for t in clip.frame_times],
                }
            )
            self._audio.append(clip.audio)
            self._samples += expected
            self._frames += frames
        self._videos.append(asdict(video) | {"clips": len(clips)})
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def add_failure(self, key: str, path: str, reason: str) -> None:
        self._failed.append({"video": key, "path": path, "reason": reason})

    def flush(self) -> Path | None:
        """Commit what is buffered as one shard (nothing to do when empty)."""
        if not self._videos and not self._failed:
            return None
        name = f"rank{self.rank:05d}-{self._next:06d}"
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
        heads = {}
        for head in self.manifest.heads:
            parts = self._posteriors[head.name]
            heads[head.name] = (
                np.concatenate(parts) if parts else np.zeros((0, head.size), np.float16)
            )
        index = {"clips": self._clips, "videos": self._videos, "failed": self._failed}
        written = self.commit(self.shards_dir, name, audio, heads, index)
        self._next += 1
        self._reset()
        return written


def commit_dir_shard(
    shards_dir: Path,
    name: str,
    audio: np.ndarray,
    heads: Mapping[str, np.ndarray],
    index: Mapping[str, Any],
) -> Path:
    """Write one directory shard whole: built in a hidden folder, then renamed into place."""
    tmp = shards_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        np.save(tmp / AUDIO, audio)
        for head, array in heads.items():
            np.save(tmp / f"{head}.npy", array)
        (tmp / INDEX).write_text(json.dumps(dict(index), ensure_ascii=False) + "\n")
        for item in tmp.iterdir():
            _fsync(item)
        os.rename(tmp, shards_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return shards_dir / name


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRef:
    """Where one clip lives: its shard and its index entry."""

    shard: str
    video: str
    clip: int
    start: float
    audio_offset: int
    samples: int
    frame_offset: int
    frames: int
    frame_times: tuple[float, ...]


@dataclass
class Sample:
    """A clip as written: int16 samples and float16 posteriors per head (memory-mapped)."""

    ref: ClipRef
    audio: np.ndarray
    posteriors: dict[str, np.ndarray]


@dataclass
class Corpus:
    """Read a corpus: ``len(corpus)``, ``corpus[i]`` -> :class:`Sample`, plus videos and failures.

    Arrays are memory maps opened on first use (per process, so a Corpus can be handed to
    DataLoader workers).
    """

    root: Path
    manifest: CorpusManifest = field(init=False)
    clips: list[ClipRef] = field(init=False)
    videos: dict[str, dict[str, Any]] = field(init=False)
    failures: dict[str, dict[str, Any]] = field(init=False)
    shards: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.manifest = read_manifest(self.root)
        self.clips, self.videos, self.failures, self.shards = [], {}, {}, []
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        shard_dir = self.root / SHARDS
        self._tars: dict[str, Any] = {}
        names = sorted(
            (p.name for p in shard_dir.iterdir() if _is_shard_name(p.name))
            if shard_dir.is_dir()
            else []
        )
        for name in names:
            if name.endswith(".tar"):  # a tar shard (corpus/shards.py): its index beside it
                index = self.tar_shard(name).index
            else:
                try:
                    index = json.loads((shard_dir / name / INDEX).read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise CorpusError(f"{shard_dir / name}: damaged shard index ({exc})") from exc
            self.shards.append(name)
            for failure in index.get("failed", []):
                self.failures[failure["video"]] = failure
            for video in index["videos"]:
                self.videos[video["key"]] = video | {"shard": name}
                self.failures.pop(video["key"], None)
            try:
                refs = [
                    ClipRef(
                        name,
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
                raise CorpusError(
                    f"{shard_dir / name / INDEX}: damaged clip entry ({type(exc).__name__}: {exc})"
                ) from exc
            self._check_clips(name, refs)
            if name.endswith(".tar"):
                self.tar_shard(name).check_extents()
            else:
                self._check_extents(name, refs)
            self.clips.extend(refs)

    def _check_clips(self, shard: str, refs: Sequence[ClipRef]) -> None:
        """Every clip has at least one frame and the audio of its frames."""
        where = self.root / SHARDS / shard / INDEX
        for ref in refs:
            expected = frame_boundary(ref.frames, self.manifest)
            if ref.frames < 1 or ref.samples != expected:
                raise CorpusError(
                    f"{where}: clip {ref.clip} of {ref.video} has {ref.frames} frames and "
                    f"{ref.samples} samples (expected at least 1 frame and its samples); the "
                    "corpus is damaged (prepare it again)"
                )

    def _check_extents(self, shard: str, refs: Sequence[ClipRef]) -> None:
        """Every clip's samples and frames lie inside its shard's arrays (else `corpus info`
        would call a damaged index valid and training would crash on it)."""
        where = self.root / SHARDS / shard / INDEX
        try:
            lengths = {AUDIO: len(self._array(shard, AUDIO))}
            for head in self.manifest.heads:
                lengths[f"{head.name}.npy"] = len(self._array(shard, f"{head.name}.npy"))
        except (OSError, ValueError) as exc:
            raise CorpusError(f"{where.parent}: damaged shard arrays ({exc})") from exc
        self._check_arrays(shard)
        for ref in refs:
            spans = [(AUDIO, ref.audio_offset, ref.samples)] + [
                (f"{h.name}.npy", ref.frame_offset, ref.frames) for h in self.manifest.heads
            ]
            for array, start, count in spans:
                if start < 0 or count < 0 or start + count > lengths[array]:
                    raise CorpusError(
                        f"{where}: clip {ref.clip} of {ref.video} spans {start}..{start + count} "
                        f"of {array}, which holds {lengths[array]}; the corpus is damaged "
                        "(prepare it again)"
                    )

    def _check_arrays(self, shard: str) -> None:
        """Audio is int16 samples, each head float posteriors of its manifest's categories."""
        folder = self.root / SHARDS / shard
        audio = self._array(shard, AUDIO)
        if audio.dtype != np.int16 or audio.ndim != 1:
            raise CorpusError(
                f"{folder / AUDIO}: {audio.dtype} audio of shape {audio.shape}, expected int16 "
                "samples (one dimension); the corpus is damaged (prepare it again)"
            )
        for head in self.manifest.heads:
            array = self._array(shard, f"{head.name}.npy")
            if array.dtype.kind != "f" or array.ndim != 2 or array.shape[1] != head.size:
                raise CorpusError(
                    f"{folder / head.name}.npy: {array.dtype} posteriors of shape {array.shape}, "
                    f"expected (frames, {head.size}) for the {head.size} categories of head "
                    f"{head.name}; the corpus is damaged (prepare it again)"
                )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Sample:
        ref = self.clips[i]
        if ref.shard.endswith(".tar"):
            audio, posteriors = self.tar_shard(ref.shard).arrays(self._tar_clip[i])
        else:
            audio = self._array(ref.shard, AUDIO)[ref.audio_offset : ref.audio_offset + ref.samples]
            posteriors = {
                h.name: self._array(ref.shard, f"{h.name}.npy")[
                    ref.frame_offset : ref.frame_offset + ref.frames
                ]
                for h in self.manifest.heads
            }
        for name, values in posteriors.items():  # checked per clip: a whole corpus is large
            if not np.isfinite(values).all():
                raise CorpusError(
                    f"{self.root}: head {name} of clip {ref.clip} of {ref.video} holds NaN or "
                    "infinite posteriors; the corpus is damaged (prepare it again)"
                )
        return Sample(ref, audio, posteriors)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _array(self, shard: str, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._maps:
            self._maps[key] = np.load(self.root / SHARDS / shard / name, mmap_mode="r")
        return self._maps[key]

    def posteriors(self, head: str) -> Iterator[np.ndarray]:
        """Every shard's posterior array for ``head`` (frames, categories), memory-mapped."""
        size = self.manifest.head(head).size
        for shard in self.shards:
            if shard.endswith(".tar"):
                tar = self.tar_shard(shard)
                parts = [tar.arrays(n)[1][head] for n in range(len(tar.index["clips"]))]
                yield np.concatenate(parts) if parts else np.zeros((0, size), np.float16)
            else:
                yield self._array(shard, f"{head}.npy")

    def tar_shard(self, name: str) -> Any:
        """The tar shard ``name`` (its index and clips; soundnet_cli.corpus.shards.TarShard)."""
        if name not in self._tars:
            self._tars[name] = TarShard.load(str(self.root / SHARDS / name), self.manifest)
        return self._tars[name]

    @property
    def _tar_clip(self) -> list[int]:
        """For each clip, its number within its shard (what a tar shard is indexed by)."""
        if getattr(self, "_numbers", None) is None:
            numbers, last, count = [], None, 0
            for ref in self.clips:
                count = count + 1 if ref.shard == last else 0
                last = ref.shard
                numbers.append(count)
            self._numbers = numbers
        return self._numbers

    @property
    def seconds(self) -> float:
        return sum(ref.samples for ref in self.clips) / self.manifest.sample_rate

    def finished(self) -> set[str]:
        """Video keys already handled: prepared, or recorded as failed."""
        return set(self.videos) | set(self.failures)

    def summary(self, top: int = 5) -> dict[str, Any]:
        """What `soundnet corpus info` shows."""
        heads = []
        for head in self.manifest.heads:
            if head.kind == "embedding":
                frames = sum(len(a) for a in self.posteriors(head.name))
                heads.append(
                    {
                        "name": head.name,
                        "teacher": head.teacher,
                        "kind": head.kind,
                        "size": head.size,
                        "frames": frames,
                    }
                )
                continue
            counts = np.zeros(head.size, np.int64)
            for array in self.posteriors(head.name):
                if len(array):
                    counts += np.bincount(np.asarray(array).argmax(axis=1), minlength=head.size)
            frames = int(counts.sum())
            order = np.argsort(-counts, kind="stable")[:top]
            heads.append(
                {
                    "name": head.name,
                    "teacher": head.teacher,
                    "categories": head.size,
                    "top": [
                        {
                            "category": head.categories[i],
                            "frames": int(counts[i]),
                            "fraction": round(float(counts[i]) / frames, 4) if frames else 0.0,
                        }
                        for i in order
                        if counts[i] > 0
                    ],
                }
            )
        return {
            "path": str(self.root),
            "videos": len(self.videos),
            "clips": len(self.clips),
            "frames": sum(ref.frames for ref in self.clips),
            "hours": round(self.seconds / 3600, 4),
            "failed": len(self.failures),
            "shards": len(self.shards),
            "ranks": len({s.split("-")[0] for s in self.shards}),
            "sample_rate": self.manifest.sample_rate,
            "clip_seconds": self.manifest.clip_seconds,
            "frame_interval": self.manifest.frame_interval,
            "frame_at": self.manifest.frame_at,
            "teachers": [t["name"] for t in self.manifest.teachers],
            "heads": heads,
        }


def _is_shard_name(name: str) -> bool:
    """A committed shard: a folder ``rankR-N`` or a tar file ``rankR-N.tar``."""
    return bool(SHARD_NAME.match(name[:-4] if name.endswith(".tar") else name))


def is_corpus(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
