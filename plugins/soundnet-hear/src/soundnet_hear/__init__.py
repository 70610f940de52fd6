"""The HEAR 2021 API (https://hearbenchmark.com) for SoundNet students and checkpoints.

::

    import soundnet_hear

    model = soundnet_hear.load_model()                  # the official SoundNet-8, pool5
    model = soundnet_hear.load_model("run/student.safetensors", layer="conv5")
    model = soundnet_hear.load_model("mfcc")            # any registered student, by name
    scene = soundnet_hear.get_scene_embeddings(audio, model)            # (n_sounds, size)
    frames, ms = soundnet_hear.get_timestamp_embeddings(audio, model)  # (n, T, size), (n, T)

``audio`` is float32 (n_sounds, n_samples) in [-1, 1] at ``model.sample_rate`` (22,050 Hz).
"""

from .api import (
    HearModel,
    get_scene_embeddings,
    get_timestamp_embeddings,
    load_model,
)

__version__ = "0.1.0"

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
