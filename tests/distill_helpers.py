"""Small students and corpora for distillation tests: fast on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soundnet_cli.corpus.format import (
    ClipData,
    CorpusManifest,
    HeadInfo,
    ShardWriter,
    VideoRecord,
    write_manifest,
)

RATE = 22050
CLASSES = ("low", "middle", "high")
FREQS = (220.0, 880.0, 3520.0)


def tiny_student(heads=()):
    """Two conv blocks and a head: 4-s crops give 5 output steps."""
    from soundnet_cli.students import ConvLayer, ConvStudent, HeadLayer, PoolLayer

    body = (
        ConvLayer("conv1", 8, 32, 8, 16),
        PoolLayer("pool1", 4),
        ConvLayer("conv2", 16, 16, 4, 8),
        PoolLayer("pool2", 8),
    )
    return ConvStudent("tiny-student", body, HeadLayer("conv3", 16, 16, 0), heads)


def register_tiny_student() -> None:
    from soundnet_cli.plugins import get_plugins

    registry = get_plugins().students
    if "tiny-student" not in registry:
        registry.add("tiny-student", tiny_student, description="test", plugin="test")


def tone_corpus(
    root: Path, videos: int = 12, frames: int = 4, seed: int = 0, shard_bytes: int = 128 << 20
) -> Path:
    """A corpus whose 'sound' is a tone per class and whose teacher posteriors name the class:
    the student can learn it. Clips of ``frames`` 1-s intervals (``shard_bytes`` small makes
    several shards)."""
    rng = np.random.default_rng(seed)
    manifest = CorpusManifest(
        sample_rate=RATE,
        clip_seconds=4.0,
        frame_interval=1.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": "tone-teacher"},),
        heads=(HeadInfo("tones", "tone-teacher", CLASSES),),
    )
    write_manifest(root, manifest)
    writer = ShardWriter(root, manifest, shard_bytes=shard_bytes)
    t = np.arange(frames * RATE) / RATE
    for v in range(videos):
        label = v % len(CLASSES)
        wave = 0.3 * np.sin(2 * np.pi * FREQS[label] * t) + 0.05 * rng.standard_normal(len(t))
        posterior = np.full((frames, len(CLASSES)), 0.05, np.float32)
        posterior[:, label] = 0.9
        clip = ClipData(
            0.0,
            (wave * 32767).astype(np.int16),
            [k + 0.5 for k in range(frames)],
            {"tones": posterior},
        )
        writer.add_video(VideoRecord(f"/videos/{v:03d}.mp4", f"{v:03d}.mp4", float(frames)), [clip])
    writer.flush()
    return root


EMBEDDING_SIZE = 8


def class_vectors(size: int = EMBEDDING_SIZE, seed: int = 7) -> np.ndarray:
    """One unit vector per tone class: what an embedding teacher would say about its frames."""
    vectors = np.random.default_rng(seed).standard_normal((len(CLASSES), size))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def mixed_corpus(root: Path, videos: int = 12, frames: int = 4, posteriors: bool = True) -> Path:
    """:func:`tone_corpus` with an embedding head ``vec`` beside (or instead of) the posterior
    head ``tones``: each class's frames carry its unit vector."""
    rng = np.random.default_rng(0)
    heads = [HeadInfo("vec", "vec-teacher", (), "embedding", EMBEDDING_SIZE)]
    if posteriors:
        heads.insert(0, HeadInfo("tones", "tone-teacher", CLASSES))
    manifest = CorpusManifest(
        sample_rate=RATE,
        clip_seconds=4.0,
        frame_interval=1.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": "tone-teacher"}, {"name": "vec-teacher"}),
        heads=tuple(heads),
    )
    write_manifest(root, manifest)
    writer = ShardWriter(root, manifest)
    vectors = class_vectors()
    t = np.arange(frames * RATE) / RATE
    for v in range(videos):
        label = v % len(CLASSES)
        wave = 0.3 * np.sin(2 * np.pi * FREQS[label] * t) + 0.05 * rng.standard_normal(len(t))
        posterior = np.full((frames, len(CLASSES)), 0.05, np.float32)
        posterior[:, label] = 0.9
        targets = {"vec": np.repeat(vectors[label : label + 1], frames, axis=0)}
        if posteriors:
            targets["tones"] = posterior
        clip = ClipData(
            0.0, (wave * 32767).astype(np.int16), [k + 0.5 for k in range(frames)], targets
        )
        writer.add_video(VideoRecord(f"/videos/{v:03d}.mp4", f"{v:03d}.mp4", float(frames)), [clip])
    writer.flush()
    return root
