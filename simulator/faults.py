"""Sensor faults: drawn per episode, stored as events, applied deterministically on read/replay.

docs/design/furnace.md 6. A fault sets a per-modality health bit and never changes the condition
label; observations are stored clean so one episode serves both clean training and fault tests.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from simulator.config import CAMERA_HEALTH, CLIP_A, CURRENT_HEALTH, FAULT_MODALITY
from simulator.types import Episode, FaultEvent

# Duration range (s) per fault kind, drawn log-uniformly (docs/design/furnace.md 6).
_DURATION_S: dict[str, tuple[float, float]] = {
    "frozen": (5.0, 600.0),
    "black": (5.0, 300.0),
    "occluded": (15.0, 600.0),
    "disconnected": (5.0, 1800.0),
    "nan": (0.5, 180.0),
    "stuck": (3.0, 300.0),
    "clipped": (12.0, 120.0),
    "missing": (0.5, 120.0),
    "skew": (30.0, 600.0),
}


class Observed(NamedTuple):
    """Sensor view of an episode after its faults are applied."""

    t_cur: NDArray[np.float64]  # (N,) sample timestamps, skew applied
    current: NDArray[np.float32]  # (N, 3) A, NaN / stuck / clipped applied
    cur_present: NDArray[np.bool_]  # (N,) False where the sample was dropped
    health_cur: NDArray[np.uint8]  # (N,) CURRENT_HEALTH bitmask
    t_frame: NDArray[np.float64]  # (F,)
    frames: NDArray[np.uint8]  # (F, H, W, 3) frozen / black / occluded applied
    frame_present: NDArray[np.bool_]  # (F,) False while disconnected
    health_frame: NDArray[np.uint8]  # (F,) CAMERA_HEALTH bitmask


def draw_faults(
    duration_s: float, rng: np.random.Generator, *, rate_per_h: float
) -> list[FaultEvent]:
    """Sensor-fault events of one episode (Poisson, kinds uniform, durations log-uniform)."""
    kinds = (*FAULT_MODALITY, "skew")
    out: list[FaultEvent] = []
    for _ in range(int(rng.poisson(rate_per_h * duration_s / 3600.0))):
        kind = str(rng.choice(kinds))
        lo, hi = _DURATION_S[kind]
        dur = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        start = float(rng.uniform(0.0, max(duration_s - dur, 1.0)))
        modality = FAULT_MODALITY.get(kind) or str(rng.choice(["current", "camera"]))
        phase = int(rng.integers(-1, 3)) if kind in ("nan", "stuck", "clipped") else -1
        value = 0.0
        if kind == "skew":
            value = float(rng.uniform(0.5, 10.0) * rng.choice([-1.0, 1.0]))
        elif kind == "occluded":
            value = float(rng.uniform(0.5, 1.0))
        seed = int(rng.integers(2**31))
        out.append(FaultEvent(kind, modality, start, start + dur, phase, value, seed))
    return sorted(out, key=lambda f: f.start_s)


def apply_faults(ep: Episode) -> Observed:
    """Apply an episode's fault events to its clean observations.

    Args:
        ep: the episode (clean arrays plus `faults`).

    Returns:
        Observed arrays; the episode itself is not modified.
    """
    t_cur = ep.t_cur.copy()
    current = ep.current.copy()
    cur_present = np.ones(t_cur.shape[0], bool)
    health_cur = np.zeros(t_cur.shape[0], np.uint8)
    t_frame = ep.t_frame.copy()
    frames = ep.frames.copy()
    frame_present = np.ones(t_frame.shape[0], bool)
    health_frame = np.zeros(t_frame.shape[0], np.uint8)

    for f in ep.faults:
        in_cur = (ep.t_cur >= f.start_s) & (ep.t_cur < f.end_s)
        in_frame = (ep.t_frame >= f.start_s) & (ep.t_frame < f.end_s)
        phases = np.array([f.phase] if f.phase >= 0 else [0, 1, 2], dtype=np.int64)
        if f.kind == "skew":
            if f.modality == "current":
                t_cur[in_cur] += f.value
                health_cur[in_cur] |= CURRENT_HEALTH["skew"]
            else:
                t_frame[in_frame] += f.value
                health_frame[in_frame] |= CAMERA_HEALTH["skew"]
            continue
        if f.modality == "current":
            idx = np.flatnonzero(in_cur)
            if idx.size == 0:
                continue
            if f.kind == "nan":
                current[np.ix_(idx, phases)] = np.nan
            elif f.kind == "stuck":
                current[np.ix_(idx, phases)] = current[idx[0], phases]
            elif f.kind == "clipped":
                current[np.ix_(idx, phases)] = CLIP_A
            elif f.kind == "missing":
                cur_present[idx] = False
            health_cur[idx] |= CURRENT_HEALTH[f.kind]
        else:
            idx = np.flatnonzero(in_frame)
            if idx.size == 0:
                continue
            rng = np.random.default_rng(f.seed)
            if f.kind == "frozen":
                frames[idx] = frames[idx[0]]
            elif f.kind == "black":
                noise = rng.normal(1.5, 0.8, size=frames[idx].shape)
                frames[idx] = np.clip(noise, 0, 255).astype(np.uint8)
            elif f.kind == "occluded":
                frames[idx] = _occlude(frames[idx], f.value, rng)
            elif f.kind == "disconnected":
                frame_present[idx] = False
            health_frame[idx] |= CAMERA_HEALTH[f.kind]
    return Observed(
        t_cur, current, cur_present, health_cur, t_frame, frames, frame_present, health_frame
    )


def _occlude(
    frames: NDArray[np.uint8], coverage: float, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """A static opaque overlay (fouled lens) over `coverage` of the frame rows."""
    _, h, w, _ = frames.shape
    rows = max(1, int(round(coverage * h)))
    top = int(rng.integers(0, h - rows + 1))
    grey = rng.uniform(40.0, 110.0)
    colour = grey * np.array([1.0, 0.9, 0.75]) * rng.uniform(0.9, 1.1, size=3)  # soot and dust
    stain = colour[None, None, :] + rng.normal(0.0, 3.0, size=(rows, w, 1))
    out = frames.copy()
    out[:, top : top + rows] = np.clip(stain, 0, 255).astype(np.uint8)[None]
    return out
