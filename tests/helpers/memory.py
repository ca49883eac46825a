"""Synthetic data for the memory-head tests: windows and frames whose shared codes vary from
window to window (constant noise maps every window to the same codes, and a memory of identical
windows tells nothing)."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from service.images import encode_png
from service.types import CameraWindow, CurrentWindow, Window, WindowSpec


def varied_frame(rng: np.random.Generator, px: int) -> np.ndarray:
    """A background and a bright spot of random brightness, size and place (varied codes;
    never dark, frozen or occluded)."""
    yy, xx = np.mgrid[0:px, 0:px]
    img = np.full((px, px, 3), rng.uniform(40.0, 200.0))
    r, cx, cy = rng.uniform(0.05, 0.35) * px, *rng.uniform(0.15, 0.85, 2) * px
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = [255.0, rng.uniform(100, 255), 60.0]
    return np.clip(img + rng.normal(0.0, 8.0, img.shape), 0, 255).astype(np.uint8)


def synthetic_windows(
    spec: WindowSpec, furnace_id: str, ends: list[float], seed: int
) -> list[Window]:
    """Windows whose current level and frames (`varied_frame` per segment) change from
    window to window: varied codes."""
    rng = np.random.default_rng(seed)
    out = []
    for i, end in enumerate(ends):
        level = 12000.0 + 4000.0 * np.sin(i / 3.0 + seed)
        x = level + 600.0 * rng.standard_normal((spec.segments, spec.samples_per_segment, 3))
        baseline = np.full(spec.baseline_width, 12000.0, np.float32)
        frames = np.stack([varied_frame(rng, spec.frame_px) for _ in range(spec.segments)])
        current = CurrentWindow(x.astype(np.float32), baseline)
        out.append(Window(furnace_id, end, current, CameraWindow(frames)))
    return out


def http_body(spec: WindowSpec, end: float, seed: int) -> dict[str, Any]:
    """A POST body for the window ending at `end`: current (window and baseline history) at a
    level that changes with `seed`, and varied frames."""
    rng = np.random.default_rng(seed)
    n_hist = round(spec.baseline_seconds * spec.rate_hz)
    n = spec.samples + n_hist
    x = 12000.0 + 150.0 * rng.standard_normal((n, 3))
    x[n_hist:] += 3000.0 * math.sin(seed)
    step = 1.0 / spec.camera_fps
    count = round(spec.window_seconds * spec.camera_fps)
    frames = [
        {
            "ts": end - spec.window_seconds + (k + 1) * step,
            "image": base64.b64encode(encode_png(varied_frame(rng, spec.frame_px))).decode(),
        }
        for k in range(count)
    ]
    return {
        "window_end": end,
        "current": {
            "start": end - (n - 1) / spec.rate_hz,
            "rate_hz": spec.rate_hz,
            "samples": np.round(x, 2).tolist(),
        },
        "camera": {"frames": frames},
    }
