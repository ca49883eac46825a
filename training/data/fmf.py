"""FMF-Benchmark V2 "pixel-level" layout: write simulator episodes to it, read it back.

docs/design/furnace.md 8 (layout, time mapping, splits). The FMF files hold the clean observations;
the `sentinel/` extension keeps what the public format lacks (classes, severity, faults), and faults
are applied on read (docs/design/furnace.md 6). `read_fmf` also reads the real download.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from simulator.config import FRAME_PX
from simulator.types import Episode, FaultEvent

logger = logging.getLogger(__name__)

LAYOUT = "pixel-level"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EPISODE_ARRAYS = (
    *("t_cur", "current", "action", "plc", "setpoint", "label_cur", "sev_cur", "vis_cur"),
    *("t_frame", "label_frame", "sev_frame", "vis_frame"),
)
_SUMMARY_KEYS: tuple[str, ...] = ("name", "furnace_id", "seconds", "frames", "camera_fps")
_SUMMARY_KEYS += ("train_frames", "test_frames")


@dataclass
class Recording:
    """One video + current recording as read from an FMF layout (times in s since start).

    Optional fields are None for real FMF-Benchmark data. With faults applied, dropped samples
    and frames stay in place (NaN current, black frame) and `*_present` marks them.
    """

    name: str
    t_cur: NDArray[np.float64]  # (N,)
    current: NDArray[np.float32]  # (N, 3) A
    t_frame: NDArray[np.float64]  # (F,)
    frames: NDArray[np.uint8]  # (F, 64, 64, 3)
    frame_label_binary: NDArray[np.uint8]  # (F,) 1 where any mask pixel is abnormal
    split: NDArray[np.str_]  # (F,) "train" | "test" | "guard"
    label_cur: NDArray[np.int8] | None = None  # (N,) class index
    label_frame: NDArray[np.int8] | None = None  # (F,) class index
    sev_cur: NDArray[np.float32] | None = None  # (N,)
    sev_frame: NDArray[np.float32] | None = None  # (F,)
    vis_cur: NDArray[np.bool_] | None = None  # (N,)
    vis_frame: NDArray[np.bool_] | None = None  # (F,)
    health_cur: NDArray[np.uint8] | None = None  # (N,) CURRENT_HEALTH bits
    health_frame: NDArray[np.uint8] | None = None  # (F,) CAMERA_HEALTH bits
    cur_present: NDArray[np.bool_] | None = None  # (N,) None: all present
    frame_present: NDArray[np.bool_] | None = None  # (F,)
    events: list[dict[str, Any]] | None = None
    furnace_id: str | None = None
    start_epoch: float = 0.0  # Unix seconds of t = 0


# --------------------------------------------------------------------------- writer


def read_fmf(
    root: str | Path,
    *,
    camera_fps: float | None = 2.0,
    apply_faults: bool = False,
    cache: bool = False,
    names: Sequence[str] | None = None,
    frame_px: int = FRAME_PX,
) -> list[Recording]:
    """Read every recording of an FMF-Benchmark V2 layout (simulated or the real download).

    Args:
        root: the dataset folder or its `pixel-level/` folder.
        camera_fps: keep the frame nearest each tick at this rate; None keeps every frame.
        apply_faults: apply the sentinel fault list (simulated data only; no-op otherwise).
        cache: keep the frame subsample as `.npy` in `pixel-level/cache/` and reuse it.
        names: read only these recordings (NAME without `.mat`).
        frame_px: frames are resized to (frame_px, frame_px) if stored at another size.

    Returns:
        One Recording per video, in sorted name order.
    """
    root = resolve_root(root)
    found = sorted(p.name.split(".")[0] for p in (root / "videos").glob("*.mat"))
    if names is not None:
        missing = sorted(set(names) - set(found))
        if missing:
            msg = f"no videos/{missing[0]}.mat under {root}: pick from {found}"
            raise ValueError(msg)
        found = [n for n in found if n in set(names)]
    splits = {s: _load_json(root / f"{s}.json") for s in ("train", "test")}
    return [_read_one(root, n, splits, camera_fps, apply_faults, cache, frame_px) for n in found]


def resolve_root(root: str | Path) -> Path:
    """The `pixel-level` folder of a dataset, given it or its parent."""
    root = Path(root)
    if (root / LAYOUT / "videos").is_dir():
        return root / LAYOUT
    if (root / "videos").is_dir():
        return root
    msg = f"{root} is no FMF layout: expected {root}/{LAYOUT}/videos or {root}/videos"
    raise ValueError(msg)


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _read_one(
    root: Path,
    name: str,
    splits: dict[str, dict[str, list[int]]],
    camera_fps: float | None,
    apply_faults: bool,
    cache: bool,
    px: int,
) -> Recording:
    cur_sec, current = _read_csv(root / "currents" / f"{name}.csv", n_values=3)
    frame_sec, _ = _read_csv(root / "timestamps" / f"{name}.csv", n_values=0)
    side = root / "sentinel" / f"{name}.npz"
    meta = _load_json(side.with_suffix(".json"))
    firsts = [int(x[0]) for x in (cur_sec, frame_sec) if len(x)]  # a plant import: no frames
    if not firsts:
        msg = f"{name}: neither current samples nor frame timestamps"
        raise ValueError(msg)
    t0 = float(meta["start_epoch"]) if meta else float(min(firsts))
    a = dict(np.load(side)) if meta else {}
    a.setdefault("t_cur", _spread_seconds(cur_sec, 2) - t0)  # docs/design/furnace.md 8.4 step 1
    a.setdefault("t_frame", _spread_seconds(frame_sec, 1) - t0)
    if len(a["t_cur"]) != len(cur_sec) or len(a["t_frame"]) != len(frame_sec):
        msg = f"sentinel/{name}.npz does not match its CSVs: rewrite the dataset"
        raise ValueError(msg)
    faulted = bool(meta) and apply_faults and bool(meta["faults"])
    with h5py.File(root / "videos" / f"{name}.mat", "r") as f:
        n = min(f["data"].shape[0], len(frame_sec))
        if n != f["data"].shape[0] or n != len(frame_sec):
            logger.warning("%s: %d frames, %d timestamps", name, f["data"].shape[0], len(frame_sec))
        sel = _subsample(a["t_frame"][:n], camera_fps)
        frames, label, mask = _video(root, name, f, sel, px, cache, want_mask=faulted)
    split = np.full(n, "guard", dtype="<U5")
    for s in ("train", "test"):
        idx = np.asarray(splits[s].get(f"{name}.mat", []), np.int64)
        split[idx[idx < n]] = s
    for k in ("t_frame", "label_frame", "sev_frame", "vis_frame"):
        if k in a:
            a[k] = a[k][:n][sel]
    rec = Recording(name, a["t_cur"], current, a["t_frame"], frames, label, split[sel])
    rec.start_epoch = t0
    if not meta:
        return rec
    for k in ("label_cur", "label_frame", "sev_cur", "sev_frame", "vis_cur", "vis_frame"):
        setattr(rec, k, a[k])
    rec.health_cur = np.zeros(len(rec.t_cur), np.uint8)
    rec.health_frame = np.zeros(len(sel), np.uint8)
    rec.events, rec.furnace_id = meta["events"], meta["furnace_id"]
    if faulted:  # the faulted view at the subsampled frame rate (docs/design/furnace.md 6)
        from simulator.faults import apply_faults as apply

        a |= {"current": current, "frames": np.asarray(frames), "mask": mask}
        latent = {k[7:]: v for k, v in a.items() if k.startswith("latent_")}
        faults = [FaultEvent(**x) for x in meta["faults"]]
        keys = (*_EPISODE_ARRAYS, "frames", "mask")
        obs = apply(
            Episode(
                **{k: meta[k] for k in ("name", "furnace_id", "events", "nuisances", "meta")},
                start_epoch=t0,
                latent=latent,
                faults=faults,
                **{k: a[k] for k in keys},
            )
        )
        rec.t_cur, rec.t_frame = obs.t_cur, obs.t_frame
        rec.current = np.where(obs.cur_present[:, None], obs.current, np.float32(np.nan))
        rec.frames = np.where(obs.frame_present[:, None, None, None], obs.frames, np.uint8(0))
        rec.cur_present, rec.frame_present = obs.cur_present, obs.frame_present
        rec.health_cur, rec.health_frame = obs.health_cur, obs.health_frame
    return rec


def _read_csv(path: Path, *, n_values: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Unix seconds of column 0 and float columns 1..n_values; a header row is detected."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        row0 = next(csv.reader(fh), [])
    try:
        pd.to_datetime(row0[0].strip(), format=TIME_FORMAT)
        [float(v) for v in row0[1 : 1 + n_values]]
        skip = 0
    except (ValueError, IndexError):
        skip = 1  # row 0 is a header: never rely on its column names
    if not row0 or (skip and _line_count(path) <= 1):
        return np.zeros(0, np.int64), np.zeros((0, n_values), np.float32)  # header only
    df = pd.read_csv(
        path,
        header=None,
        skiprows=skip,
        dtype={0: str},
        encoding="utf-8-sig",
        encoding_errors="replace",
    )
    stamps = pd.to_datetime(df[0].str.strip(), format=TIME_FORMAT)
    sec = stamps.to_numpy().astype("datetime64[s]").astype(np.int64)
    values = df.iloc[:, 1 : 1 + n_values].to_numpy(np.float32)
    return sec, values


def _line_count(path: Path) -> int:
    """Lines in a file, counted on its bytes (headers of real exports are GBK, not UTF-8)."""
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _spread_seconds(sec: NDArray[np.int64], min_n: int) -> NDArray[np.float64]:
    """Rows j of a run of n rows sharing one second get t = sec + j / max(n, min_n)."""
    n = len(sec)
    starts = np.flatnonzero(np.r_[True, sec[1:] != sec[:-1]])
    lengths = np.diff(np.r_[starts, n])
    j = np.arange(n) - np.repeat(starts, lengths)
    return sec + j / np.maximum(np.repeat(lengths, lengths), min_n)


def _subsample(t: NDArray[np.float64], fps: float | None) -> NDArray[np.int64]:
    """Indices of the frame nearest each 1/fps tick (ties to the earlier frame), unique."""
    if fps is None or len(t) < 2 or np.median(np.diff(t)) >= 1.0 / fps - 1e-9:
        return np.arange(len(t))
    ticks = np.arange(np.ceil(t[0] * fps - 1e-9), np.floor(t[-1] * fps + 1e-9) + 1) / fps
    j = np.clip(np.searchsorted(t, ticks), 1, len(t) - 1)
    j = np.where(ticks - t[j - 1] <= t[j] - ticks + 1e-9, j - 1, j)
    keep = np.abs(t[j] - ticks) <= 0.5 / fps + 1e-9
    return np.unique(j[keep])


def _video(
    root: Path, name: str, f: h5py.File, sel: NDArray[np.int64], px: int, cache: bool, **kw: bool
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """Frames (F, px, px, 3), binary frame labels (F,) and, if `want_mask`, masks (F, px, px).

    Read block by block and resized per block, so a large native size never sits in memory.
    """
    stem = f"{name}_{len(sel)}_{int(sel.sum())}_{px}"  # names the subsample and size
    paths = [root / "cache" / f"{stem}_{s}.npy" for s in ("frames", "label")]
    if cache and not kw["want_mask"] and all(p.exists() for p in paths):
        return np.load(paths[0], mmap_mode="r"), np.load(paths[1]), np.zeros(0, np.uint8)
    frames = _rows(f["data"], sel, lambda b: _resize(b.transpose(0, 3, 2, 1), px))  # (F,H,W,C)
    label = _rows(f["label"], sel, _any_pixel)  # any abnormal pixel at the native size
    if cache:
        try:
            paths[0].parent.mkdir(exist_ok=True)
            np.save(paths[0], frames)
            np.save(paths[1], label)
        except OSError as err:
            logger.warning("cannot cache %s: %s", name, err)
    mask = np.zeros(0, np.uint8)
    if kw["want_mask"]:  # (F, W, H) -> (F, H, W), resized like the frames
        mask = _rows(
            f["label"],
            sel,
            lambda b: _resize((b.transpose(0, 2, 1) > 0)[..., None] * np.uint8(255), px),
        )
        mask = (mask[..., 0] > 127).astype(np.uint8)
    return frames, label, mask


def _any_pixel(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(B, ...) -> (B,) 1 where any element is non-zero (docs/design/furnace.md 8.1 frame label)."""
    return (block.reshape(len(block), max(block[:1].size, 1)).max(axis=1, initial=0) > 0).astype(
        np.uint8
    )


def _rows(
    ds: h5py.Dataset, sel: NDArray[np.int64], fn: Callable[[NDArray[Any]], NDArray[Any]]
) -> NDArray[Any]:
    """fn(ds[sel]) along axis 0, read lazily in contiguous slices of at most 256 rows."""
    out, i = [], 0
    while i < len(sel):
        lo = int(sel[i])
        k = int(np.searchsorted(sel, lo + 256, side="left"))
        out.append(fn(ds[lo : int(sel[k - 1]) + 1][sel[i:k] - lo]))
        i = k
    return np.concatenate(out) if out else fn(ds[0:0])


def _resize(img: NDArray[np.uint8], px: int) -> NDArray[np.uint8]:
    """(F, H, W, C) -> (F, px, px, C): block mean for integer factors, else bilinear."""
    F, H, W, C = img.shape
    if (H, W) == (px, px):
        return img.astype(np.uint8, copy=False)
    if H % px == 0 and W % px == 0:
        out = img.reshape(F, px, H // px, px, W // px, C).mean(axis=(2, 4))
        return np.round(out).astype(np.uint8)
    y = np.clip((np.arange(px) + 0.5) * H / px - 0.5, 0, H - 1)
    x = np.clip((np.arange(px) + 0.5) * W / px - 0.5, 0, W - 1)
    y0, x0 = y.astype(int), x.astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy, wx = (y - y0)[None, :, None, None], (x - x0)[None, None, :, None]

    def at(ys: NDArray[np.int64], xs: NDArray[np.int64]) -> NDArray[np.float32]:
        return img[:, ys][:, :, xs].astype(np.float32)  # gather first: (F, px, px, C)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return np.round(top * (1 - wy) + bottom * wy).astype(np.uint8)


# --------------------------------------------------------------------------- info
