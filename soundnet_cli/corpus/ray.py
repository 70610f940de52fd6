"""``soundnet prepare --engine ray``: decoding and labelling on a Ray cluster through Ray Data.

The videos still to prepare (after resume planning in ``corpus/prepare.py``) become a Ray
dataset. Decoding (fetch a URL, audio to 22,050 Hz int16, one frame per interval: the local
engine's :func:`~soundnet_cli.corpus.videos.decode_input`) runs in CPU tasks; the teachers run
in an actor pool, one actor per GPU (``gpus_per_actor``) or per CPU slot, labelling the frames
of a batch of videos together (:func:`~soundnet_cli.corpus.videos.label`, as locally). Each
video's result comes back to the driver, which writes whole tar shards (the shard writer of
``corpus/format.py`` with ``corpus/shards.py``'s tar commit): written under temporary names,
then renamed, so a killed job leaves whole shards only and a rerun prepares the rest.

Failures: a bad video is a row that says why (recorded in the corpus, as locally). A worker
process that dies is replaced and its work retried by Ray: actors restart without limit and
retry their batch, decode tasks retry on system failures. The driver writes a video only when
its result arrives and stores a video once even if a retried batch delivered it twice.

Arrays cross Ray's object store as bytes, with their shapes in a JSON column (columns of
variable shapes need no tensor extension type). Nothing here imports ray at module level; the
prepare workflow imports this module only when ``engine="ray"``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.corpus.format import CorpusManifest, VideoRecord
from soundnet_cli.corpus.videos import (
    Decoded,
    Labelled,
    PrepareSettings,
    decode_input,
    failure_reason,
    label,
)

if TYPE_CHECKING:
    from soundnet_cli.teachers.base import Teacher

log = logging.getLogger(__name__)

DECODE_MEMORY = 512 * 1024 * 1024  # bytes a decode task reserves (a video's audio and frames)
VIDEOS_PER_ACTOR_BATCH = 8


def labelled_on_ray(
    items: Sequence[str],
    teachers: Sequence[Teacher],
    manifest: CorpusManifest,
    settings: PrepareSettings,
    options: Mapping[str, Any],
) -> Iterator[Labelled]:
    """Decode and label ``items`` (paths or URLs) on Ray; yields each video's
    :class:`~soundnet_cli.corpus.videos.Labelled` as it finishes (in no fixed order).

    ``options``: ``address`` (``auto``, ``HOST:PORT``, or None: a local cluster started for the
    run), ``actors`` (teacher actors; default one per GPU with ``gpus_per_actor``, else half the
    cluster's CPUs), ``gpus_per_actor`` (0: CPU actors), ``cpus_per_actor`` (1),
    ``decode_tasks`` (concurrent decode tasks; default: Ray decides), ``actor_batch`` (videos an
    actor labels together, 8)."""
    from soundnet_cli.runtime import ray_actor_pool, ray_cluster

    if not items:
        return
    with ray_cluster(options.get("address")) as ray:
        actor_pool = ray_actor_pool(options)
        rows = [{"item": item, "index": i} for i, item in enumerate(items)]
        # one block a video: a decode task takes a block, so blocks bound decode parallelism
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4096)))
        decode_tasks = options.get("decode_tasks")
        decoded = dataset.map_batches(
            functools.partial(decode_batch, manifest=manifest, settings=settings),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=int(decode_tasks)) if decode_tasks else None,
            num_cpus=1,
            # a memory request the actors lack keeps decoding in tasks of its own: Ray Data
            # would otherwise fuse it into the actors, decoding and teachers taking turns
            memory=DECODE_MEMORY,
        )
        labelled = decoded.map_batches(
            _Teachers,
            batch_size=max(1, int(options.get("actor_batch") or VIDEOS_PER_ACTOR_BATCH)),
            batch_format="numpy",
            fn_constructor_kwargs={
                "teachers": ray.put(list(teachers)),
                "batch_size": settings.batch_size,
                "threads": max(1, int(actor_pool.cpus_per_actor)),
            },
            compute=ray.data.ActorPoolStrategy(size=actor_pool.actors),
            num_gpus=actor_pool.gpus_per_actor,
            num_cpus=actor_pool.cpus_per_actor,
        )  # Ray Data replaces a lost actor and retries its batch (max_restarts=-1 by default)
        for row in labelled.iter_rows():
            yield _from_row(row, manifest)


def _from_row(row: Mapping[str, Any], manifest: CorpusManifest) -> Labelled:
    item = str(row["item"])
    meta = json.loads(row["meta"])
    if meta.get("error"):
        return Labelled(item, error=str(meta["error"]))
    audio = np.frombuffer(row["audio"], np.int16)
    record = VideoRecord(meta["key"], meta["path"], float(meta["duration"]))
    frames = np.zeros((0, 0, 0, 3), np.uint8)  # labelled already: the driver needs no pixels
    decoded = Decoded(record, audio, frames, [float(t) for t in meta["frame_times"]])
    posteriors = {
        name: np.frombuffer(row[f"h:{name}"], np.float32).reshape(shape)
        for name, shape in meta["heads"].items()
    }
    return Labelled(item, decoded, posteriors)


def decode_batch(
    batch: dict[str, np.ndarray], manifest: CorpusManifest, settings: PrepareSettings
) -> dict[str, list[Any]]:
    """A CPU task's work: :func:`decode_input` of each video; errors as rows."""
    rows = [_decode(str(item), manifest, settings) for item in batch["item"]]
    out = {name: [row[name] for row in rows] for name in ("meta", "audio", "frames")}
    return {"item": [str(i) for i in batch["item"]], "index": list(batch["index"]), **out}


def _decode(item: str, manifest: CorpusManifest, settings: PrepareSettings) -> dict[str, Any]:
    try:
        video = decode_input(item, manifest, settings)
    except Exception as exc:  # a bad video is a row that says so, never a failed task
        return {"meta": json.dumps({"error": failure_reason(exc)}), "audio": b"", "frames": b""}
    meta = {
        "key": video.record.key,
        "path": video.record.path,
        "duration": video.record.duration,
        "frame_times": list(video.frame_times),
        "frames": list(video.frames.shape),
    }
    return {
        "meta": json.dumps(meta),
        "audio": np.ascontiguousarray(video.audio, np.int16).tobytes(),
        "frames": np.ascontiguousarray(video.frames, np.uint8).tobytes(),
    }


class _Teachers:
    """An actor holding the teachers, labelling the frames of a batch of decoded videos."""

    def __init__(self, teachers: Any, batch_size: int, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        models = ray.get(teachers) if isinstance(teachers, ray.ObjectRef) else teachers
        if torch.cuda.is_available() and ray.get_gpu_ids():
            models = [model.to("cuda") for model in models]
        self.teachers, self.batch_size = models, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        metas = [json.loads(m) for m in batch["meta"]]
        good = [i for i, meta in enumerate(metas) if not meta.get("error")]
        videos = [self._video(metas[i], batch["frames"][i]) for i in good]
        heads: dict[int, dict[str, np.ndarray]] = {}
        if videos:
            try:
                for i, posteriors in zip(
                    good, label(self.teachers, videos, self.batch_size), strict=True
                ):
                    heads[i] = posteriors
            except Exception as exc:  # noqa: BLE001  (a teacher error fails these videos)
                for i in good:
                    metas[i] = {"error": f"{batch['item'][i]}: {failure_reason(exc)}"}
        names = [h.name for t in self.teachers for h in t.heads]
        out: dict[str, list[Any]] = {
            "item": [str(i) for i in batch["item"]],
            "audio": list(batch["audio"]),
            "meta": [],
        }
        for name in names:
            out[f"h:{name}"] = []
        for i, meta in enumerate(metas):
            posteriors = heads.get(i, {})
            meta.pop("frames", None)
            if posteriors:
                meta["heads"] = {n: list(p.shape) for n, p in posteriors.items()}
            out["meta"].append(json.dumps(meta))
            for name in names:
                array = posteriors.get(name)
                out[f"h:{name}"].append(
                    b"" if array is None else np.ascontiguousarray(array, np.float32).tobytes()
                )
        return out

    @staticmethod
    def _video(meta: Mapping[str, Any], frames: bytes) -> Decoded:
        pixels = np.frombuffer(frames, np.uint8).reshape(meta["frames"]).copy()  # writable
        record = VideoRecord(meta["key"], meta["path"], float(meta["duration"]))
        return Decoded(record, np.zeros(0, np.int16), pixels, list(meta["frame_times"]))
