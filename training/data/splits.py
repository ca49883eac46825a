"""Train / validation splits that never leak: by furnace for simulated data, by contiguous time
blocks with a guard band for an FMF-Benchmark download (docs/design/cmg.md 7.1,
docs/design/furnace.md 8.4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.config import CAMERA_HEALTH, CURRENT_HEALTH
from training.data.fmf import Recording, read_fmf
from training.data.windows import Windows, concat_windows, make_windows


@dataclass(frozen=True)
class SplitData:
    """Windows of one dataset, split for training."""

    train: Windows
    val: Windows
    events: dict[str, list[dict[str, Any]]]  # recording -> condition events (empty for FMF)
    furnaces: dict[str, list[str]]  # split -> furnace ids (or recording names for FMF)
    binary: bool  # real FMF-Benchmark data: normal/abnormal only


def paired_mask(w: Windows) -> NDArray[np.bool_]:
    """Windows usable for pre-training: both modalities complete, no clock skew (docs/design/cmg.md
    2)."""
    skew = ((w.health_cur & CURRENT_HEALTH["skew"]) > 0) | (
        (w.health_cam & CAMERA_HEALTH["skew"]) > 0
    )
    return w.valid_cur & w.valid_cam & ~skew


def load_recordings(root: str | Path, *, apply_faults: bool = False) -> list[Recording]:
    return read_fmf(root, camera_fps=2.0, apply_faults=apply_faults)


def windows_of(recs: list[Recording], **window: Any) -> Windows:
    """The windows of all recordings; `window` are `make_windows` arguments (window_s, hop_s,
    baseline_s, long_baseline_s: `TrainConfig.window_args`)."""
    return concat_windows([make_windows(r, **window) for r in recs])


def split_by_furnace(
    recs: list[Recording],
    *,
    val_fraction: float,
    seed: int,
    **window: Any,
) -> SplitData:
    """Hold out whole furnaces for validation; real FMF data fall back to time blocks.

    `window` are `make_windows` arguments (`TrainConfig.window_args`)."""
    binary = all(r.label_cur is None for r in recs)
    if binary:
        return _split_fmf(recs, val_fraction, **window)
    furnaces = sorted({r.furnace_id or r.name for r in recs})
    if len(furnaces) < 2:
        msg = "need recordings of at least 2 furnaces to hold one out for validation"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(furnaces))))
    val_ids = sorted(rng.choice(furnaces, size=n_val, replace=False).tolist())
    train_recs = [r for r in recs if (r.furnace_id or r.name) not in val_ids]
    val_recs = [r for r in recs if (r.furnace_id or r.name) in val_ids]
    return SplitData(
        train=windows_of(train_recs, **window),
        val=windows_of(val_recs, **window),
        events={r.name: list(r.events or []) for r in recs},
        furnaces={"train": [f for f in furnaces if f not in val_ids], "val": val_ids},
        binary=False,
    )


def _split_fmf(
    recs: list[Recording],
    val_fraction: float,
    *,
    window_s: float,
    baseline_s: float,
    long_baseline_s: float = 0.0,
    **window: Any,
) -> SplitData:
    """FMF-Benchmark: train.json windows; the last `val_fraction` of each recording's training
    windows (a contiguous block, after a guard band of one window + baseline) validate."""
    train_parts, val_parts = [], []
    guard = window_s + max(baseline_s, long_baseline_s)
    for r in recs:
        w = make_windows(
            r,
            split="train",
            window_s=window_s,
            baseline_s=baseline_s,
            long_baseline_s=long_baseline_s,
            **window,
        )
        if len(w) == 0:
            continue
        cut = np.quantile(w.t_end, 1.0 - val_fraction)
        train_parts.append(w.select(w.t_end < cut - guard))
        val_parts.append(w.select(w.t_end >= cut))
    if not train_parts:
        msg = "no training windows: does train.json index frames with enough history?"
        raise ValueError(msg)
    return SplitData(
        train=concat_windows(train_parts),
        val=concat_windows(val_parts),
        events={},
        furnaces={"train": [r.name for r in recs], "val": [r.name for r in recs]},
        binary=True,
    )
