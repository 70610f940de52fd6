"""Write an :class:`ExportModule` as ONNX (torch.export, then onnxscript) or TorchScript."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from soundnet_cli.errors import reason
from soundnet_cli.export.module import ExportError, ExportModule, NamedOutputs

# the key under which the plan's description is stored in the file
METADATA_KEY = "soundnet"
ONNX_EXTRA = "pip install 'soundnet-cli[onnx]'"


def write_onnx(module: ExportModule, example: torch.Tensor, path: Path) -> None:
    """ONNX with input ``waveform`` (batch, samples) and outputs named as the plan's.

    torch's exporter (the torch.export path: the TorchScript-based one is deprecated) needs
    onnxscript; the symbols it invents for the free dimensions are renamed to ``batch`` and
    ``samples`` so that the file's signature reads as documented.
    """
    try:
        import onnx_ir as ir
        import onnxscript  # noqa: F401  (torch.onnx.export imports it; say what to install)
    except ImportError:
        raise ExportError(f"ONNX export needs onnxscript; install it with {ONNX_EXTRA}") from None
    from torch.export import Dim

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=["waveform"],
                output_names=module.names,
                dynamic_shapes={"waveform": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}},
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the first line says enough
        raise ExportError(
            f"cannot export {module.plan.architecture} to ONNX ({reason(exc, 'first')})"
        ) from exc
    if program is None:
        raise ExportError("the ONNX exporter returned no program")
    model = program.model
    free = model.graph.inputs[0].shape
    if free is None or len(free) != 2:
        raise ExportError(f"the ONNX exporter gave the input the shape {free}")
    batch, samples = (str(d) for d in free)
    names = {batch: "batch", samples: "samples"}
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")

    def rename(dim: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
        if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
            return ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], str(dim.value)))
        return dim

    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    for value in values:
        if value.shape is not None:
            value.shape = ir.Shape([rename(d) for d in value.shape])
    model.metadata_props[METADATA_KEY] = json.dumps(module.plan.metadata())
    model.doc_string = (
        f"{module.plan.architecture}: waveform float32 (batch, samples) in [-1, 1] at "
        f"{module.plan.sample_rate} Hz -> {', '.join(module.names)}, each (batch, channels, time)"
    )
    program.save(str(path), external_data=False)


def write_torchscript(module: ExportModule, example: torch.Tensor, path: Path) -> None:
    """A traced TorchScript module returning ``{name: tensor}``; the plan's description is
    stored as the extra file ``soundnet.json``. (PyTorch deprecates TorchScript; it is still
    what libtorch and PyTorch Mobile load.)"""
    named = NamedOutputs(module).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(named, (example,), strict=False, check_trace=False)
            torch.jit.save(
                traced,
                str(path),
                _extra_files={f"{METADATA_KEY}.json": json.dumps(module.plan.metadata())},
            )
    except Exception as exc:
        raise ExportError(
            f"cannot export {module.plan.architecture} to TorchScript ({reason(exc, 'first')})"
        ) from exc
