"""Data I/O: the FMF-Benchmark reader (`fmf`), writer (`fmf_write`) and summary (`fmf_info`),
model windows (`windows`) and the train / validation splits (`splits`).

The window API is re-exported here: `from training.data import Windows, load_windows`.
"""

from __future__ import annotations

from training.data.windows import (
    MODALITIES,
    Windows,
    concat_windows,
    load_windows,
    make_windows,
    valid_for,
)

__all__ = ["MODALITIES", "Windows", "concat_windows", "load_windows", "make_windows", "valid_for"]
