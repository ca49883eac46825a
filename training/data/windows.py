"""Model windows from recordings: 16-s windows of T segments on a 2-s hop (docs/design/cmg.md
section 2).

Causal: a window covers (t_end - window_s, t_end], its label is the condition at t_end and its
baseline the per-phase median of the `baseline_s` before it (docs/design/furnace.md 8.4). With
`long_baseline_s` > 0 [ours] a second, slower per-phase median follows it: over the up to
`long_baseline_s` before the window (all the history there is, early in a recording), so slow
build-ups that a 120-s median follows stay visible (docs/method.md deviation 13). Camera frames
are stored once per recording in a frame bank that windows index, so overlapping windows do
not copy frames; `Windows.x_v` or `Windows.camera(idx)` gathers them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.data.fmf import Recording, read_fmf

_EPS = 1e-6  # seconds; timestamps of one grid compare equal within it
MODALITIES = ("current", "camera")


@dataclass(frozen=True)
class Windows:
    """A batch of W windows. Frames live in `frame_bank`; `frame_index` -1 means no frame."""

    x_c: NDArray[np.float32]  # (W, T, S, 3) A
    baseline: NDArray[np.float32]  # (W, 3) A, per-phase median before the window; (W, 6) with
    # the long baseline appended (make_windows' long_baseline_s > 0)
    frame_bank: NDArray[np.uint8]  # (K, H, W, 3)
    frame_index: NDArray[np.int64]  # (W, T) into frame_bank, last frame of each segment
    label: NDArray[np.int64]  # (W,) class index at t_end (0/1 when `binary`)
    severity_max: NDArray[np.float32]  # (W,) NaN when the recording has no severity
    health_cur: NDArray[np.uint8]  # (W,) OR of CURRENT_HEALTH bits in the window
    health_cam: NDArray[np.uint8]  # (W,) OR of CAMERA_HEALTH bits in the window
    t_end: NDArray[np.float64]  # (W,) s since the recording's start
    valid_cur: NDArray[np.bool_]  # (W,) every segment full, finite, finite baseline
    valid_cam: NDArray[np.bool_]  # (W,) every segment's frame present, no frame gap
    recording: NDArray[np.str_]  # (W,) recording name
    split: NDArray[np.str_]  # (W,) split of the frame at t_end
    binary: bool = False  # labels are normal/abnormal only (real FMF-Benchmark data)

    def __len__(self) -> int:
        return len(self.t_end)

    @property
    def x_v(self) -> NDArray[np.uint8]:
        """(W, T, H, W, 3) uint8 camera input; zeros where a segment has no frame."""
        return self.camera(np.arange(len(self)))

    def camera(self, index: NDArray[np.int64] | slice) -> NDArray[np.uint8]:
        """(B, T, H, W, 3) camera input of the windows `index` (gathered on demand)."""
        idx = self.frame_index[index]  # (B, T)
        if len(self.frame_bank) == 0:
            return np.zeros((*idx.shape, *self.frame_bank.shape[1:]), np.uint8)
        out = self.frame_bank[np.maximum(idx, 0)]  # (B, T, H, W, 3)
        out[idx < 0] = 0
        return out

    def select(self, index: NDArray[Any] | slice) -> Windows:
        """The windows `index` (int indices, bool mask or slice); shares the frame bank."""
        per_window = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if f.name not in ("frame_bank", "binary")
        }
        return replace(self, **per_window)


def valid_for(w: Windows, modality: str) -> NDArray[np.bool_]:
    return w.valid_cur if modality == "current" else w.valid_cam


def make_windows(
    rec: Recording,
    *,
    window_s: float = 16.0,
    segments: int = 8,
    hop_s: float = 2.0,
    baseline_s: float = 120.0,
    long_baseline_s: float = 0.0,
    rate_hz: float = 2.0,
    camera_fps: float = 2.0,
    split: str | None = None,
) -> Windows:
    """Cut one recording into causal windows (docs/design/cmg.md section 2, docs/design/furnace.md
    8.4).

    Window ends lie on multiples of `hop_s`. Windows without `baseline_s` of current history
    are skipped; with `split`, so is every window with a frame of another split inside it.

    Args:
        rec: the recording (from `read_fmf`).
        window_s: window length (s), split into `segments` segments of equal length.
        segments: T.
        hop_s: spacing of window ends (s).
        baseline_s: history before the window for the per-phase median baseline (s).
        long_baseline_s: 0, or the horizon of a second, long median baseline (s) appended as
            baseline[:, 3:6]; expanding: the history there is when the recording is younger.
        rate_hz: current sample rate; S = window_s / segments * rate_hz samples per segment.
        camera_fps: frame rate the segment-end frames are matched at (tolerance 0.5 / fps).
        split: "train", "test" or "guard"; None keeps every window.

    Returns:
        Windows with x_c (W, T, S, 3), baseline (W, 3) or (W, 6), frame_index (W, T) and per-window
        labels, severity, health, validity.

    Raises:
        ValueError: when S is not a whole number or the recording has no labels at all.
    """
    seg_s = window_s / segments
    S = int(round(seg_s * rate_hz))
    if long_baseline_s and long_baseline_s < baseline_s:
        msg = f"long_baseline_s ({long_baseline_s}) must be 0 or >= baseline_s ({baseline_s})"
        raise ValueError(msg)
    if S < 1 or abs(S - seg_s * rate_hz) > 1e-9 or hop_s <= 0:
        msg = f"window_s / segments * rate_hz must be a whole number >= 1 and hop_s > 0, got {S}"
        raise ValueError(msg)
    if rec.label_cur is None and len(rec.t_frame) == 0:
        msg = f"recording {rec.name} has neither current labels nor frames: nothing to label"
        raise ValueError(msg)
    oc = np.argsort(rec.t_cur, kind="stable")  # skewed streams may be out of order
    of = np.argsort(rec.t_frame, kind="stable")
    t, tf = rec.t_cur[oc], rec.t_frame[of]
    tol = 0.5 / camera_fps + _EPS

    # Window ends: hop multiples with a full baseline before the window and data up to t_end.
    first = t[0] + window_s + baseline_s - 1.0 / rate_hz if len(t) else np.inf
    last = min(t[-1] if len(t) else -np.inf, tf[-1] + tol if len(tf) else np.inf)
    k = np.arange(np.ceil((first - _EPS) / hop_s), np.floor((last + _EPS) / hop_s) + 1)
    ends = k * hop_s  # (W,)
    f_lo = np.searchsorted(tf, ends - window_s + _EPS, side="right")  # frames in the window
    f_hi = np.searchsorted(tf, ends + _EPS, side="right")
    if split is not None:
        inside = np.r_[0, np.cumsum(rec.split[of] == split)]
        keep = (f_hi > f_lo) & (inside[f_hi] - inside[f_lo] == f_hi - f_lo)
        ends, f_lo, f_hi = ends[keep], f_lo[keep], f_hi[keep]
    W = len(ends)

    # Current: S samples per segment, the last ones at or before each segment end.
    edges = ends[:, None] - window_s + seg_s * np.arange(segments + 1)  # (W, T+1)
    pos = np.searchsorted(t, edges + _EPS, side="right")  # (W, T+1) samples <= edge
    idx = np.clip(pos[:, 1:, None] - S + np.arange(S), 0, max(len(t) - 1, 0))  # (W, T, S)
    current = rec.current[oc]
    x_c = current[idx] if len(t) else np.full((W, segments, S, 3), np.nan, np.float32)
    baseline = _baseline(t, current, ends - window_s, baseline_s, rate_hz)  # (W, 3)
    if long_baseline_s:
        slow = _baseline(t, current, ends - window_s, long_baseline_s, rate_hz)  # (W, 3)
        baseline = np.concatenate([baseline, slow], axis=1)  # (W, 6)
    valid_cur = (np.diff(pos, axis=1) == S).all(axis=1) & np.isfinite(x_c).all(axis=(1, 2, 3))
    valid_cur &= np.isfinite(baseline).all(axis=1)
    in_window = idx >= pos[:, :-1, None]  # (W, T, S) gathered sample lies in its segment
    sev = np.full(W, np.nan, np.float32)
    if rec.sev_cur is not None and len(t):
        sev = np.where(in_window, rec.sev_cur[oc][idx], -np.inf).max(axis=(1, 2))
        sev = np.where(np.isfinite(sev), sev, np.nan).astype(np.float32)
    health_cur = np.zeros(W, np.uint8)
    if rec.health_cur is not None:
        health_cur = _range_or(rec.health_cur[oc], pos[:, 0], pos[:, -1])

    # Camera: the frame nearest each segment end, within half a frame period.
    present = np.ones(len(tf), bool) if rec.frame_present is None else rec.frame_present[of]
    fidx = np.full((W, segments), -1, np.int64)
    valid_cam = np.zeros(W, bool)
    health_cam = np.zeros(W, np.uint8)
    split_end = np.full(W, "", dtype="<U5")
    if len(tf):
        seg_end = edges[:, 1:]  # (W, T)
        j = np.searchsorted(tf, seg_end)
        jl, jr = np.clip(j - 1, 0, len(tf) - 1), np.clip(j, 0, len(tf) - 1)
        pick = np.where(np.abs(tf[jl] - seg_end) <= np.abs(tf[jr] - seg_end), jl, jr)
        ok = (np.abs(tf[pick] - seg_end) <= tol) & present[pick]
        fidx = np.where(ok, pick, -1)
        # a dropped frame or a stretch without frames inside the window invalidates it
        p = np.flatnonzero(present)
        bad = ~present
        bad[p[1:]] |= np.diff(tf[p]) > 1.5 / camera_fps
        n_bad = np.r_[0, np.cumsum(bad)]
        valid_cam = ok.all(axis=1) & (n_bad[f_hi] == n_bad[f_lo])
        if rec.health_frame is not None:
            health_cam = _range_or(rec.health_frame[of], f_lo, f_hi)
        j_end = np.clip(np.searchsorted(tf, ends + tol, side="right") - 1, 0, len(tf) - 1)
        split_end = rec.split[of][j_end]

    if rec.label_cur is not None:  # class at the last current sample at or before t_end
        label = rec.label_cur[oc][np.clip(pos[:, -1] - 1, 0, len(t) - 1)].astype(np.int64)
    else:  # FMF-Benchmark: binary label of the frame at t_end
        label = rec.frame_label_binary[of][j_end].astype(np.int64)

    used = np.unique(fidx[fidx >= 0])
    bank = np.asarray(rec.frames[of[used]])  # (K, H, W, 3), only the frames windows use
    frame_index = np.where(fidx >= 0, np.searchsorted(used, fidx), -1)
    return Windows(
        x_c=x_c.astype(np.float32),
        baseline=baseline,
        frame_bank=bank,
        frame_index=frame_index,
        label=label,
        severity_max=sev,
        health_cur=health_cur,
        health_cam=health_cam,
        t_end=ends,
        valid_cur=valid_cur,
        valid_cam=valid_cam,
        recording=np.full(W, rec.name),
        split=split_end,
        binary=rec.label_cur is None,
    )


def _baseline(
    t: NDArray[np.float64],
    current: NDArray[np.float32],
    starts: NDArray[np.float64],
    baseline_s: float,
    rate_hz: float,
) -> NDArray[np.float32]:
    """(W, 3) per-phase median of the samples in (start - baseline_s, start]; NaN if none."""
    n = int(round(baseline_s * rate_hz))
    if len(t) == 0 or n == 0:
        return np.full((len(starts), 3), np.nan, np.float32)
    lo = np.searchsorted(t, starts - baseline_s + _EPS, side="right")  # (W,)
    hi = np.searchsorted(t, starts + _EPS, side="right")
    idx = hi[:, None] - n + np.arange(n)  # (W, n) the last n samples before the window
    vals = np.where((idx >= lo[:, None])[..., None], current[np.clip(idx, 0, None)], np.nan)
    with warnings.catch_warnings():  # all-NaN rows give NaN, and the window is invalid
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(vals, axis=1).astype(np.float32)


def _range_or(
    bits: NDArray[np.uint8], lo: NDArray[np.int64], hi: NDArray[np.int64]
) -> NDArray[np.uint8]:
    """(W,) uint8 bitwise OR of bits[lo:hi] per window, via per-bit cumulative counts."""
    planes = (bits[:, None] >> np.arange(8, dtype=np.uint8)) & 1  # (N, 8)
    counts = np.vstack([np.zeros((1, 8), np.int64), np.cumsum(planes, axis=0)])  # (N+1, 8)
    hit = (counts[hi] - counts[lo]) > 0  # (W, 8)
    return (hit.astype(np.uint8) << np.arange(8, dtype=np.uint8)).sum(axis=1).astype(np.uint8)


def concat_windows(parts: list[Windows]) -> Windows:
    """One Windows from several (frame banks stacked, frame indices shifted).

    Raises:
        ValueError: for an empty list, or binary and class-labelled windows mixed.
    """
    if not parts:
        msg = "concat_windows needs at least one Windows"
        raise ValueError(msg)
    if len({p.binary for p in parts}) > 1:
        msg = "cannot mix binary (FMF-Benchmark) and class-labelled windows: keep them apart"
        raise ValueError(msg)
    offsets = np.cumsum([0] + [len(p.frame_bank) for p in parts[:-1]])
    index = [
        np.where(p.frame_index >= 0, p.frame_index + o, -1)
        for p, o in zip(parts, offsets, strict=True)
    ]
    out = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(Windows)
        if f.name not in ("frame_index", "binary")
    }
    return Windows(**out, frame_index=np.concatenate(index), binary=parts[0].binary)


def load_windows(
    root: str | Path,
    *,
    split: str | None = None,
    camera_fps: float = 2.0,
    apply_faults: bool = False,
    cache: bool = False,
    **kw: Any,
) -> Windows:
    """`read_fmf` + `make_windows` for every recording of a dataset, concatenated.

    Args:
        root: dataset folder or its `pixel-level/` folder.
        split: "train", "test", "guard" or None (all windows).
        camera_fps: frame rate read and matched (docs/design/furnace.md 8.4: 2 fps).
        apply_faults: read the faulted view of simulated data.
        cache: cache the frame subsample (see `read_fmf`).
        **kw: further `make_windows` arguments (window_s, segments, hop_s, ...).

    Returns:
        The windows of all recordings.
    """
    recs = read_fmf(root, camera_fps=camera_fps, apply_faults=apply_faults, cache=cache)
    return concat_windows([make_windows(r, split=split, camera_fps=camera_fps, **kw) for r in recs])
