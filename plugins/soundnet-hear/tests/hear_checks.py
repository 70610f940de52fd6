"""The HEAR 2021 validator's checks (hearvalidator 2021.0.2, torch branch), written out so that
they run without the validator's hard dependency on TensorFlow; plus the rules of the HEAR API
the validator does not check (finite values, timestamps the same for every sound and centred)."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import torch

ACCEPTABLE_SAMPLE_RATES = (16000, 22050, 44100, 48000)


class HearError(AssertionError):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HearError(message)


def validate(module: ModuleType, model_file_path: str = "", device: str = "cpu") -> Any:
    """Run every check on ``module``; return the loaded model."""
    for name in ("load_model", "get_timestamp_embeddings", "get_scene_embeddings"):
        _require(hasattr(module, name), f"the API must include {name}")
    model = module.load_model(model_file_path) if model_file_path else module.load_model()
    _require(isinstance(model, torch.nn.Module), "load_model must return a torch.nn.Module")
    model.to(device)

    _require(hasattr(model, "sample_rate"), "the model must expose sample_rate")
    _require(model.sample_rate in ACCEPTABLE_SAMPLE_RATES, f"bad sample rate {model.sample_rate}")
    for attr in ("scene_embedding_size", "timestamp_embedding_size"):
        _require(isinstance(getattr(model, attr, None), int), f"model.{attr} must be an int")

    generator = torch.Generator().manual_seed(0)
    audio = torch.rand((16, int(2.0 * model.sample_rate)), generator=generator) * 2 - 1
    embeddings, timestamps = module.get_timestamp_embeddings(audio.to(device), model)
    _require(embeddings.dtype == torch.float32, f"timestamp embeddings are {embeddings.dtype}")
    _require(embeddings.shape[0] == 16, f"16 sounds in, {embeddings.shape[0]} out")
    _require(
        embeddings.shape[:2] == timestamps.shape,
        f"timestamps shaped {tuple(timestamps.shape)}, expected {tuple(embeddings.shape[:2])}",
    )
    _require(
        embeddings.shape[2] == model.timestamp_embedding_size,
        f"embedding size {embeddings.shape[2]} != {model.timestamp_embedding_size}",
    )
    diff = torch.diff(timestamps)
    average = torch.mean(diff.float())
    if average > 50.0:
        warnings.warn(
            f"timestamps are {float(average):.1f} ms apart; HEAR suggests at most 50 ms",
            stacklevel=2,
        )
    _require(bool(torch.all(torch.abs(diff - average) < 1e-3)), "timestamps are not regular")
    # beyond the validator
    _require(bool(torch.isfinite(embeddings).all()), "timestamp embeddings are not finite")
    _require(bool((timestamps == timestamps[:1]).all()), "timestamps differ between sounds")

    audio = torch.rand((8, int(3.74 * model.sample_rate)), generator=generator) * 2 - 1
    scene = module.get_scene_embeddings(audio.to(device), model)
    _require(scene.dtype == torch.float32, f"scene embeddings are {scene.dtype}")
    _require(scene.shape == (8, model.scene_embedding_size), f"scene shape {tuple(scene.shape)}")
    _require(bool(torch.isfinite(scene).all()), "scene embeddings are not finite")
    return model
