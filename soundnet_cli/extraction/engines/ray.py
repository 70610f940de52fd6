"""``soundnet extract --engine ray``: the extraction on a Ray cluster through Ray Data.

The inputs still to compute (after the features folder's resume planning, in
``extraction/engine.py``) become a Ray dataset. Decoding (fetch, decode, mono, resample,
scale: the same reading path as the local engine) runs in CPU tasks; the student runs in an
actor pool, one actor per GPU (``num_gpus``) or per CPU slot, on batches of decoded inputs
(equal lengths are stacked, long inputs run in chunks). :func:`results_on_ray` yields each
input's result to the driver as it arrives, and the engine writes it through the folder's
writer (Parquet recommended: parts, not a file per input), so resume, the manifest and the
progress bar are those of the local engine.

Failures: a bad input is a recorded failure, as locally. A worker process that dies is replaced
and its task retried by Ray (Ray Data's defaults: actors restart without limit and retry their
batch, tasks retry on system failures); the driver
writes an input only when its result arrives, so a retried task never writes twice. A killed
job keeps what the writer committed (whole parts); a rerun computes only the rest.

Decoded audio and features cross Ray's object store as float32 bytes (a column of variable
shapes needs no tensor extension type). Ray prints a few lines of its own on stderr at start-up;
the CLI keeps its loggers at ERROR unless it runs with `-v`.

Nothing here imports ray at module level; the engine module imports this one only when asked.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.errors import SoundnetError, reason

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

log = logging.getLogger(__name__)

DECODE_MEMORY = 256 * 1024 * 1024  # bytes a decode task reserves (a batch of decoded clips)


@dataclass
class Result:
    """One input's outcome, as the driver receives it."""

    index: int  # into the inputs given
    error: str  # empty when computed
    duration: float  # seconds of audio
    shapes: dict[str, tuple[int, ...]]  # each layer's (steps, channels) before pooling
    features: dict[str, np.ndarray]  # pooled already when the folder pools


def results_on_ray(
    student: Student,
    files: Sequence[str],
    layers: Sequence[str],
    *,
    pool: str | None,
    mix: str,
    batch_size: int,
    chunk_seconds: float,
    optimise: bool,
    precision: str,
    options: Mapping[str, Any],
) -> Iterator[Result]:
    """Compute ``layers`` of ``files`` (paths or URLs) on Ray; yields each input's
    :class:`Result` once, in the order they finish. The caller writes them (the engine, through
    the features folder).

    ``options``: ``address`` (``auto``, ``HOST:PORT``, or None for a local cluster started for
    the run), ``actors`` (model actors; default: one per GPU with ``gpus_per_actor``, else half
    the cluster's CPUs), ``gpus_per_actor`` (0: CPU actors), ``cpus_per_actor`` (1),
    ``decode_tasks`` (concurrent decode tasks; default: Ray decides), ``decode_batch`` (inputs a
    decode task takes, 8)."""
    from soundnet_cli.runtime import ray_actor_pool, ray_cluster

    if not files:
        return
    with ray_cluster(options.get("address")) as ray:
        actor_pool = ray_actor_pool(options)
        layers = list(layers)
        sample_rate = int(student.sample_rate)
        chunk_samples = int(chunk_seconds * sample_rate)
        items = [{"file": file, "index": i} for i, file in enumerate(files)]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // 64))
        decode_tasks = options.get("decode_tasks")
        decoded = dataset.map_batches(
            functools.partial(decode_batch, geometry=_Geometry.of(student, layers), mix=mix),
            batch_size=int(options.get("decode_batch") or 8),
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=int(decode_tasks)) if decode_tasks else None,
            num_cpus=1,
            # a memory request the model's actors lack keeps decoding in tasks of its own: Ray
            # Data would otherwise fuse it into the actors, decoding and model taking turns
            memory=DECODE_MEMORY,
        )
        computed = decoded.map_batches(
            _Model,
            batch_size=max(1, batch_size),
            batch_format="numpy",
            fn_constructor_kwargs={
                "student": ray.put(student),
                "layers": layers,
                "pool": pool,
                "optimise": optimise,
                "precision": precision,
                "chunk_samples": chunk_samples,
                "threads": max(1, int(actor_pool.cpus_per_actor)),
            },
            compute=ray.data.ActorPoolStrategy(size=actor_pool.actors),
            num_gpus=actor_pool.gpus_per_actor,
            num_cpus=actor_pool.cpus_per_actor,
        )  # Ray Data restarts a lost actor and retries its batch (max_restarts=-1 by default)
        for row in computed.iter_rows():
            error = str(row.get("error") or "")
            shapes: dict[str, tuple[int, ...]] = {}
            features: dict[str, np.ndarray] = {}
            if not error:
                shapes = {name: tuple(int(v) for v in row[f"s:{name}"]) for name in layers}
                features = {
                    name: np.frombuffer(row[f"f:{name}"], np.float32).reshape(
                        shapes[name][1:] if pool else shapes[name]
                    )
                    for name in layers
                }
            yield Result(int(row["index"]), error, float(row["duration"]), shapes, features)


class _Geometry:
    """What decoding needs of the student, without the student."""

    def __init__(self, sample_rate: int, min_samples: dict[str, int]) -> None:
        self.sample_rate, self.min_samples = sample_rate, min_samples

    @classmethod
    def of(cls, student: Student, layers: Sequence[str]) -> _Geometry:
        return cls(int(student.sample_rate), {n: int(student.min_samples(n)) for n in layers})


def decode_batch(batch: dict[str, np.ndarray], geometry: _Geometry, mix: str) -> dict[str, list]:
    """A CPU task's work: fetch (URLs), decode, mono, resample, scale; errors as rows."""
    with tempfile.TemporaryDirectory(prefix="soundnet-ray-") as scratch:
        rows = [
            _decode(str(file), int(i), geometry, mix, Path(scratch))
            for file, i in zip(batch["file"], batch["index"], strict=True)
        ]
    return {name: [row[name] for row in rows] for name in ("index", "samples", "duration", "error")}


def _decode(file: str, index: int, geometry: _Geometry, mix: str, scratch: Path) -> dict[str, Any]:
    from soundnet_cli.media.audio import open_audio, read_whole, waveform
    from soundnet_cli.media.urls import fetch, is_url

    local: Path | None = None
    try:
        path = Path(file)
        if is_url(file):
            local = fetch(file, scratch)
            path = local
        try:
            with open_audio(path) as handle:
                data, rate = read_whole(handle, str(path))
        except SoundnetError:
            raise
        except Exception as exc:
            raise SoundnetError(f"{file}: cannot read audio ({reason(exc)})") from exc
        wave = waveform(data, rate, mix=mix, sample_rate=geometry.sample_rate)  # type: ignore[arg-type]
        samples = len(wave.samples)
        for name, need in geometry.min_samples.items():
            if samples < need:
                rate_out = geometry.sample_rate
                raise SoundnetError(
                    f"{file} is too short: {samples / rate_out:.3f} s; layer {name!r} needs "
                    f"at least {need / rate_out:.3f} s"
                )
        duration = wave.source_frames / wave.source_rate
        samples_bytes = np.ascontiguousarray(wave.samples, np.float32).tobytes()
        return {"index": index, "samples": samples_bytes, "duration": duration, "error": ""}
    except Exception as exc:  # a bad input is a row that says so, never a failed task
        message = str(exc) if isinstance(exc, SoundnetError) else f"{file}: {reason(exc)}"
        if local is not None:
            message = message.replace(str(local), file)
        return {"index": index, "samples": b"", "duration": 0.0, "error": message}
    finally:
        if local is not None:
            local.unlink(missing_ok=True)


class _Model:
    """An actor holding the student (its inference twin), run on batches of decoded inputs."""

    def __init__(
        self,
        student: Any,
        layers: list[str],
        pool: str | None,
        optimise: bool,
        precision: str,
        chunk_samples: int,
        threads: int,
    ) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        model = ray.get(student) if isinstance(student, ray.ObjectRef) else student
        if torch.cuda.is_available() and ray.get_gpu_ids():
            model = model.to("cuda")
        if optimise:
            from soundnet_cli.models import for_inference

            model = for_inference(model, layers, precision=precision)
        self.model, self.layers, self.pool = model, layers, pool
        self.chunk_samples = chunk_samples

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        count = len(batch["index"])
        waves = [np.frombuffer(b, np.float32) for b in batch["samples"]]
        rows: list[dict[str, Any]] = [{} for _ in range(count)]
        groups: dict[int, list[int]] = {}
        for position, (wave, error) in enumerate(zip(waves, batch["error"], strict=True)):
            if error:
                rows[position] = {"error": str(error)}
            elif len(wave) > self.chunk_samples:
                rows[position] = self._one_chunked(wave)
            else:
                groups.setdefault(len(wave), []).append(position)
        for positions in groups.values():
            stacked = np.stack([waves[p] for p in positions])
            for position, result in zip(positions, self._run(stacked), strict=True):
                rows[position] = result
        out: dict[str, list[Any]] = {
            "index": [int(i) for i in batch["index"]],
            "duration": [float(d) for d in batch["duration"]],
            "error": [r.get("error", "") for r in rows],
        }
        for name in self.layers:
            out[f"f:{name}"] = [r.get(f"f:{name}", b"") for r in rows]
            out[f"s:{name}"] = [r.get(f"s:{name}", [0, 0]) for r in rows]
        return out

    def _run(self, waves: np.ndarray) -> list[dict[str, Any]]:
        import torch

        from soundnet_cli.students.contract import check_taps

        try:
            with torch.inference_mode():
                tensor = torch.from_numpy(waves).to(self.model.device)
                taps = self.model.forward_features(tensor, self.layers)
            check_taps(self.model, taps, self.layers, tensor.shape[0], tensor.shape[-1])
            arrays = {n: t.transpose(1, 2).float().cpu().numpy() for n, t in taps.items()}
        except (SoundnetError, RuntimeError) as exc:
            if len(waves) > 1:
                return [r for wave in waves for r in self._run(wave[None])]
            return [{"error": reason(exc)}]
        return [self._finish({n: a[i] for n, a in arrays.items()}) for i in range(len(waves))]

    def _one_chunked(self, samples: np.ndarray) -> dict[str, Any]:
        from soundnet_cli.extraction.chunks import chunked_features

        try:
            parts = list(
                chunked_features(
                    self.model,
                    lambda a, b: samples[a:b],
                    len(samples),
                    self.layers,
                    self.chunk_samples,
                    self.model.device,
                )
            )
        except (SoundnetError, RuntimeError) as exc:
            return {"error": reason(exc)}
        return self._finish(
            {n: np.concatenate([p[n] for p in parts if n in p]) for n in self.layers}
        )

    def _finish(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        from soundnet_cli.extraction.writers.base import pooled

        result: dict[str, Any] = {}
        for name, values in features.items():
            if not np.isfinite(values).all():
                return {"error": f"the {name} features are not finite (NaN or infinity)"}
            result[f"f:{name}"] = np.ascontiguousarray(
                pooled(values, self.pool), np.float32
            ).tobytes()
            result[f"s:{name}"] = [int(v) for v in values.shape]
        return result
