"""Per-window modality health read from the data itself (docs/design/furnace.md 6,
docs/design/serving.md 1.2).

A sensor fault is never a furnace condition: every rule here was calibrated on simulator
output so that clean windows of every condition (eruption, electrode breakage, overheating at
the 20 kA clip, power cuts, mist) stay "ok", and the simulator's injected faults
(`simulator.faults`) are caught. "stale" needs timestamps and is decided by the window
assembler (`service.windows`); the strings are those of `service.types`.

Current, in order of precedence (first match wins):
  missing  fewer samples than expected (or none);
  nan      any non-finite sample;
  clipped  one or two phases sit at the measurement ceiling for `clip_run_fraction` of the
           window while the median of the other phase(s) stays below `clip_others_ratio` of
           the ceiling, or all three phases sit there. Overheating really drives the current
           into the 20 kA clip: in 175 000 simulated overheating/eruption windows (setpoints
           up to 16 kA) one phase stayed clipped for the whole 16-s window 49 times, but the
           other phases then ran above 0.9 of the ceiling and all three never stayed clipped
           for 12 s, so the rule flags none of them;
           A window that starts at the ceiling right after a "clipped" window is "clipped"
           too (the fault's end; `clip_continues`, applied by the window assembler);
  stuck    a phase repeats one value `stuck_run` times in a row, ignoring exact zeros (power
           cuts and a broken electrode's dead phase are process, docs/design/furnace.md 6) and
           values at the ceiling (clipping). Clean 2 Hz current never repeats a value (the log: at
           most twice); the simulator's stuck fault holds the phase's last value. A phase stuck at
           exactly 0 (a fault that starts during a power cut) is therefore not detected;
  ok.

Camera, in order of precedence:
  missing   fewer frames than expected (or none);
  dark      at least `min_bad_frames` frames with mean < `dark_mean_dn` and std < `dark_std_dn`
            (the simulator's black fault is noise of about 1.5 +- 0.8 DN; the darkest clean
            frames, power cuts at low gain, have a mean of about 13 DN);
  frozen    `min_bad_frames` consecutive byte-identical frames (real frames carry sensor
            noise: clean consecutive frames never match);
  occluded  `min_bad_frames` consecutive frames in which at least `occluded_fraction` of the
            pixels, excluding saturated ones, keep exactly the same value: the simulator's
            fouled lens is a static opaque overlay over 50-100 % of the rows. Moving,
            semi-transparent process mist plus sensor noise leaves at most ~6 % of the pixels
            unchanged between frames 0.5 s apart, so mist stays "ok". A partial overlay below
            `occluded_fraction` of the frame is not detected;
  ok.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.types import HEALTH_OK


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds of the health rules (module docstring); defaults calibrated on the simulator."""

    stuck_run: int = 4  # identical consecutive samples of one phase (non-zero, below the clip)
    clip_a: float | None = 20000.0  # measurement ceiling (A); None: each window's maximum
    clip_run_fraction: float = 1.0  # run at the ceiling, as a fraction of the window's samples
    clip_others_ratio: float = 0.9  # the other phases' median must stay below this x ceiling
    dark_mean_dn: float = 8.0  # frame mean below this (0-255) ...
    dark_std_dn: float = 2.0  # ... and frame std below this is a dark frame
    min_bad_frames: int = 3  # dark frames / frozen run / occluded run, in frames
    occluded_fraction: float = 0.3  # share of pixels unchanged between consecutive frames

    def __post_init__(self) -> None:
        if self.stuck_run < 2 or self.min_bad_frames < 2:
            msg = f"stuck_run and min_bad_frames must be >= 2, got {self}"
            raise ValueError(msg)
        if not 0.0 < self.clip_run_fraction <= 1.0 or not 0.0 < self.occluded_fraction <= 1.0:
            msg = f"clip_run_fraction and occluded_fraction must be in (0, 1], got {self}"
            raise ValueError(msg)


DEFAULT_HEALTH = HealthConfig()


def current_health(
    samples: NDArray[np.floating], *, expected: int = 1, config: HealthConfig = DEFAULT_HEALTH
) -> str:
    """Health of one window of three-phase current.

    Args:
        samples: (N, 3) A, in time order (a window's T * S samples).
        expected: the number of samples a complete window has (fewer is "missing").
        config: thresholds.

    Returns:
        "missing", "nan", "clipped", "stuck" or "ok" (precedence in the module docstring).

    Raises:
        ValueError: when samples is not (N, 3).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        msg = f"expected (N, 3) current samples, got shape {x.shape}"
        raise ValueError(msg)
    n = x.shape[0]
    if n == 0 or n < expected:
        return "missing"
    if not np.isfinite(x).all():
        return "nan"
    ceiling = float(x.max()) if config.clip_a is None else config.clip_a
    at_clip = x >= ceiling  # (N, 3)
    if ceiling > 0.0:  # all-zero current is a power cut, never a clip
        runs = np.array([_longest_run(at_clip[:, p]) for p in range(3)])
        pinned = runs >= max(1, int(np.ceil(config.clip_run_fraction * n - 1e-9)))  # (3,)
        if pinned.all():
            return "clipped"
        if pinned.any() and np.median(x[:, ~pinned]) < config.clip_others_ratio * ceiling:
            return "clipped"
    # a repeat counts only between two values that are neither 0 nor at the ceiling
    usable = (x != 0.0) & ~at_clip  # (N, 3)
    same = (x[1:] == x[:-1]) & usable[1:] & usable[:-1]  # (N-1, 3)
    if any(_longest_run(same[:, p]) + 1 >= config.stuck_run for p in range(3)):
        return "stuck"
    return HEALTH_OK


def clip_continues(samples: NDArray[np.floating], config: HealthConfig = DEFAULT_HEALTH) -> bool:
    """Whether a window starts at the measurement ceiling (any phase's first sample).

    The window assembler calls a window that does so, right after a window flagged
    "clipped", "clipped" too: the fault runs on into it and ends inside it. Otherwise the
    windows at a clipped fault's end, only partly pinned, pass the rule above and read as
    overheating (two of the held-out scorecard's false episodes sat on such edges). Clean data
    never starts this chain: it needs a window the rule itself flagged.
    """
    x = np.asarray(samples, dtype=np.float64)
    if config.clip_a is None or x.ndim != 2 or not len(x):
        return False
    return bool((x[0] >= config.clip_a).any())


def camera_health(
    frames: NDArray[np.uint8], *, expected: int = 1, config: HealthConfig = DEFAULT_HEALTH
) -> str:
    """Health of one window of camera frames.

    Args:
        frames: (N, H, W, 3) uint8 RGB in time order (the frames the model sees, one per
            segment, or every frame received in the window).
        expected: the number of frames a complete window has (fewer is "missing").
        config: thresholds.

    Returns:
        "missing", "dark", "frozen", "occluded" or "ok" (precedence in the module docstring).

    Raises:
        ValueError: when frames is not (N, H, W, 3) uint8.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        msg = f"expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}"
        raise ValueError(msg)
    n = frames.shape[0]
    if n == 0 or n < expected:
        return "missing"
    need = min(config.min_bad_frames, n)
    flat = frames.reshape(n, -1)  # (N, H*W*3)
    mean = flat.mean(axis=1)  # (N,)
    dark = mean < config.dark_mean_dn
    if int(dark.sum()) >= need:  # the std only for frames that are dark on average
        dark[dark] = flat[dark].std(axis=1) < config.dark_std_dn
        if int(dark.sum()) >= need:
            return "dark"
    if n < 2:
        return HEALTH_OK
    pairs = flat[1:] == flat[:-1]  # (N-1, H*W*3)
    same = np.count_nonzero(pairs, axis=1)  # (N-1,) equal bytes per consecutive pair
    if _longest_run(same == flat.shape[1]) + 1 >= need:  # byte-identical frames
        return "frozen"
    if _longest_run(same >= config.occluded_fraction * flat.shape[1]) + 1 < need:
        return HEALTH_OK  # too few equal bytes for enough equal pixels: no occlusion
    first = frames[:-1]
    saturated = (first == 0).any(axis=-1) | (first == 255).any(axis=-1)  # (N-1, H, W)
    unchanged = pairs.reshape(first.shape).all(axis=-1) & ~saturated  # (N-1, H, W)
    static = unchanged.reshape(n - 1, -1).mean(axis=1) >= config.occluded_fraction
    if _longest_run(static) + 1 >= need:
        return "occluded"
    return HEALTH_OK


def _longest_run(flags: NDArray[np.bool_]) -> int:
    """Length of the longest run of True in a 1-D boolean array (0 when none)."""
    if not flags.any():
        return 0
    padded = np.concatenate(([0], flags.astype(np.int8), [0]))
    edges = np.diff(padded)  # +1 at run starts, -1 after run ends
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
