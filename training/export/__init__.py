"""Export: a trained run -> ONNX graphs with torch/ORT parity checks (`exporter`) and the
bundle manifest (`bundle`); `from training.export import export_bundle`.

The exporter's names are imported on first use (PEP 562), so `training.export.bundle` (the
manifest writer, no torch) can be imported by torch-free code such as
`furnace.alert_calibration`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("training.export.exporter"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
