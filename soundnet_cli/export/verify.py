"""Run an exported file in its own runtime and compare it with the model in PyTorch."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from soundnet_cli.export.module import ExportError, ExportPlan, reference_outputs
from soundnet_cli.export.writers import METADATA_KEY, ONNX_EXTRA

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

Runner = Callable[[np.ndarray], list[np.ndarray]]


def check_signals(sample_rate: int, min_samples: int) -> list[np.ndarray]:
    """Two fixed test batches in [-1, 1] (tones, a chirp, noise): three 6.3-s signals, and one
    just over the shortest valid length, so that both free dimensions differ from the example
    the exporter traced."""
    rng = np.random.default_rng(1234)

    def batch(count: int, samples: int) -> np.ndarray:
        t = np.arange(samples) / sample_rate
        rows = []
        for i in range(count):
            tone = 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t)
            chirp = 0.2 * np.sin(2 * np.pi * (100 + 400 * t / max(t[-1], 1e-9)) * t)
            rows.append(tone + chirp + 0.1 * rng.standard_normal(samples))
        return np.clip(np.stack(rows), -1.0, 1.0).astype(np.float32)

    return [
        batch(3, max(int(6.3 * sample_rate), min_samples)),
        batch(1, min_samples + 1021),
    ]


def onnx_runner(path: Path, names: Sequence[str]) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            f"checking the ONNX file needs onnxruntime; install it with {ONNX_EXTRA}, "
            "or skip the check",
            parameter="verify",
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda wave: list(session.run(list(names), {"waveform": wave}))


def torchscript_runner(path: Path, names: Sequence[str]) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")

    def run(wave: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = module(torch.from_numpy(wave))
        return [outputs[name].numpy() for name in names]

    return run


RUNNERS: dict[str, Callable[[Path, Sequence[str]], Runner]] = {
    "onnx": onnx_runner,
    "torchscript": torchscript_runner,
}


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    scale = float(np.abs(reference).max())
    return float(np.abs(ours - reference).max()) / (scale if scale > 0 else 1.0)


def verify(model: Student, plan: ExportPlan, path: Path, fmt: str) -> dict[str, float]:
    """The largest relative error of each output over the test signals, against PyTorch."""
    run = RUNNERS[fmt](path, plan.names)
    errors = dict.fromkeys(plan.names, 0.0)
    for wave in check_signals(plan.sample_rate, plan.min_samples):
        reference = reference_outputs(model, plan, torch.from_numpy(wave))
        try:
            outputs = run(wave)
        except Exception as exc:
            raise ExportError(f"the exported {fmt} file fails to run ({exc})") from exc
        for name, ours, ref in zip(plan.names, outputs, reference, strict=True):
            expected = ref.cpu().numpy()
            if ours.shape != expected.shape:
                raise ExportError(
                    f"the exported {fmt} file gives {name} shaped {ours.shape} for input "
                    f"{wave.shape}; PyTorch gives {expected.shape}"
                )
            errors[name] = max(errors[name], relative_error(ours, expected))
    return errors


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The description stored in an exported file (ONNX metadata or TorchScript extra file)."""
    import zipfile

    path = Path(path)
    if not zipfile.is_zipfile(path):  # TorchScript files are zip archives; ONNX is protobuf
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return dict(json.loads(props[METADATA_KEY]))
    files = {f"{METADATA_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return dict(json.loads(files[f"{METADATA_KEY}.json"]))
