"""Export: a trained run -> ONNX graphs with torch/ORT parity checks (`exporter`) and the
bundle manifest (`bundle`); `from training.export import export_bundle`."""

from __future__ import annotations

from training.export.exporter import (
    INPUTS,
    OUTPUTS,
    export_bundle,
    export_onnx,
    measure_parity,
    scorer_inputs,
    torch_outputs,
)

__all__ = [
    "INPUTS",
    "OUTPUTS",
    "export_bundle",
    "export_onnx",
    "measure_parity",
    "scorer_inputs",
    "torch_outputs",
]
