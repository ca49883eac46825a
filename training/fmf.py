"""FMF-Benchmark V2 "pixel-level" layout: write simulator episodes to it, read it back.

FURNACE.md 8 (layout, time mapping, splits). The FMF files hold the clean observations; the
`sentinel/` extension keeps what the public format lacks (classes, severity, faults), and faults
are applied on read (FURNACE.md 6). `read_fmf` also reads the real download.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm.auto import tqdm

from simulator.config import CLASS_NAMES, FRAME_PX, SIM_VERSION
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


def write_fmf(
    episodes: Iterable[Episode],
    out_dir: str | Path,
    *,
    test_fraction: float = 0.2,
    guard_s: float = 136.0,
    progress: bool = True,
) -> Path:
    """Write episodes as FMF-Benchmark V2 `pixel-level/` plus the `sentinel/` extension.

    Args:
        episodes: clean episodes (names without dots, unique).
        out_dir: output folder; gets `pixel-level/` and `dataset.json`.
        test_fraction: last fraction of each video's frames in the test split.
        guard_s: seconds of frames before the test block left out of both splits.
        progress: show a tqdm bar over episodes.

    Returns:
        Path of the `pixel-level` folder.

    Raises:
        ValueError: bad split parameters, a bad or repeated name, or an already written layout.
    """
    if not 0.0 <= test_fraction < 1.0 or guard_s < 0:
        msg = f"need 0 <= test_fraction < 1 and guard_s >= 0, got {test_fraction}, {guard_s}"
        raise ValueError(msg)
    out_dir = Path(out_dir)
    root = out_dir / LAYOUT
    if any((root / "videos").glob("*.mat")):
        msg = f"{root} already holds videos: write into an empty folder or delete it first"
        raise ValueError(msg)
    for sub in ("videos", "currents", "timestamps", "sentinel/conditions"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    train: dict[str, list[int]] = {}
    test: dict[str, list[int]] = {}
    summary: list[dict[str, Any]] = []
    label_s: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for ep in tqdm(episodes, desc="write fmf", unit="episode", disable=not progress):
        if not ep.name or any(c in ep.name for c in "./\\") or f"{ep.name}.mat" in train:
            msg = f"episode name {ep.name!r} is empty, repeated or has '.', '/': rename it"
            raise ValueError(msg)
        if len(ep.t_cur) == 0 or len(ep.t_frame) == 0:
            msg = f"episode {ep.name} has no current samples or no frames"
            raise ValueError(msg)
        _write_mat(root / "videos" / f"{ep.name}.mat", ep)
        _write_csv(root / "currents" / f"{ep.name}.csv", ep.start_epoch, ep.t_cur, ep.current)
        _write_csv(root / "timestamps" / f"{ep.name}.csv", ep.start_epoch, ep.t_frame, None)
        tr, te = _split_indices(ep.t_frame, test_fraction, guard_s)
        train[f"{ep.name}.mat"], test[f"{ep.name}.mat"] = tr.tolist(), te.tolist()
        cond = _write_sentinel(root / "sentinel", ep)
        label_s.update(cond["condition"].tolist())
        faults.update(f.kind for f in ep.faults)
        fps = float(ep.meta.get("camera_fps") or len(ep.t_frame) / max(ep.t_frame[-1], 1.0))
        row = (ep.name, ep.furnace_id, len(cond), len(ep.t_frame), fps, len(tr), len(te))
        summary.append(dict(zip(_SUMMARY_KEYS, row, strict=True)))
    for fname, split in (("train.json", train), ("test.json", test)):
        (root / fname).write_text(json.dumps(split))
    info = {
        "format": "FMF-Benchmark V2 pixel-level + sentinel extension",
        "simulator_version": SIM_VERSION,
        "n_furnaces": len({s["furnace_id"] for s in summary}),
        "n_episodes": len(summary),
        "episodes": summary,
        "class_names": list(CLASS_NAMES),
        "label_seconds": {c: int(label_s[c]) for c in CLASS_NAMES},
        "faults": dict(sorted(faults.items())),
        "test_fraction": test_fraction,
        "guard_s": guard_s,
    }
    (out_dir / "dataset.json").write_text(json.dumps(info, indent=2))
    return root


def _matlab_header(created: float) -> bytes:
    """512-byte userblock as MATLAB 7.3 writes it: text, subsystem offset, version, 'IM'."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(created))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {stamp} HDF5 schema 1.00 ."
    head = text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"
    return head.ljust(512, b"\x00")


def _write_mat(path: Path, ep: Episode) -> None:
    """data (T, C, W, H) and label (T, W, H) uint8 as h5py sees a MATLAB [H, W, C, T] array."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, arr in (
            ("data", ep.frames.transpose(0, 3, 2, 1)),  # (T, H, W, C) -> (T, C, W, H)
            ("label", ep.mask.transpose(0, 2, 1)),  # (T, H, W) -> (T, W, H)
        ):
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            ds = f.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]), compression="gzip")
            ds.attrs.create("MATLAB_class", np.bytes_("uint8"))
    with open(path, "r+b") as fh:
        fh.write(_matlab_header(ep.start_epoch))


def _timestamps(start_epoch: float, t: NDArray[np.float64]) -> NDArray[np.str_]:
    """(N,) "YYYY-MM-DD HH:MM:SS" (UTC) of whole second floor(start_epoch + t)."""
    sec = np.floor(start_epoch + np.asarray(t, np.float64)).astype(np.int64)
    return np.char.replace(np.datetime_as_string(sec.astype("datetime64[s]"), unit="s"), "T", " ")


def _write_csv(
    path: Path, start_epoch: float, t: NDArray[np.float64], current: NDArray[np.float32] | None
) -> None:
    """Timestamp column (+ phases A, B, C); one row per sample, header row first."""
    ts = _timestamps(start_epoch, t).tolist()
    with open(path, "w", newline="") as fh:
        if current is None:
            fh.write("timestamp\n")
            fh.writelines(f"{s}\n" for s in ts)
        else:  # %.9g round-trips float32 exactly
            fh.write("timestamp,phase_a,phase_b,phase_c\n")
            rows = zip(ts, current.tolist(), strict=True)
            fh.writelines(f"{s},{a:.9g},{b:.9g},{c:.9g}\n" for s, (a, b, c) in rows)


def _split_indices(
    t_frame: NDArray[np.float64], test_fraction: float, guard_s: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Train and test frame indices: test = last block, guard frames before it in neither."""
    n = len(t_frame)
    n_test = int(round(test_fraction * n))
    if n_test == 0:
        return np.arange(n), np.arange(0)
    first = n - n_test
    n_train = int(np.searchsorted(t_frame, t_frame[first] - guard_s, side="left"))
    return np.arange(min(n_train, first)), np.arange(first, n)


def _health(ep: Episode) -> tuple[NDArray[np.uint8], NDArray[np.uint8]] | None:
    """Applied-fault health bits (N,), (F,), or None while simulator.faults is unavailable."""
    try:
        from simulator.faults import apply_faults
    except ImportError:
        return None
    obs = apply_faults(ep)
    return obs.health_cur, obs.health_frame


def _write_sentinel(folder: Path, ep: Episode) -> pd.DataFrame:
    """sentinel/NAME.npz, NAME.json and conditions/NAME.csv; returns the conditions table."""
    arrays = {k: getattr(ep, k) for k in _EPISODE_ARRAYS}
    arrays |= {f"latent_{k}": v for k, v in ep.latent.items()}
    health = _health(ep)
    if health is not None:
        arrays["health_cur"], arrays["health_frame"] = health
    np.savez_compressed(folder / f"{ep.name}.npz", **arrays)
    meta = {
        "name": ep.name,
        "furnace_id": ep.furnace_id,
        "start_epoch": ep.start_epoch,
        "events": ep.events,
        "nuisances": ep.nuisances,
        "faults": [f.as_dict() for f in ep.faults],
        "meta": ep.meta,
    }
    (folder / f"{ep.name}.json").write_text(json.dumps(meta, indent=1, default=_jsonable))
    sec = np.floor(ep.t_cur).astype(np.int64)
    first = np.flatnonzero(np.r_[True, sec[1:] != sec[:-1]])  # first sample of each second
    fsec = np.searchsorted(sec[first], np.floor(ep.t_frame).astype(np.int64), side="right") - 1
    cam_vis = np.zeros(len(first), bool)
    cam_health = np.zeros(len(first), np.uint8)
    np.logical_or.at(cam_vis, fsec[fsec >= 0], ep.vis_frame[fsec >= 0])
    cur_health = np.zeros(len(first), np.uint8)
    if health is not None:
        cur_health = np.bitwise_or.reduceat(health[0], first)
        np.bitwise_or.at(cam_health, fsec[fsec >= 0], health[1][fsec >= 0])
    table = pd.DataFrame(
        {
            "timestamp": _timestamps(ep.start_epoch, sec[first].astype(np.float64)),
            "condition": np.asarray(CLASS_NAMES)[ep.label_cur[first]],
            "severity_max": np.maximum.reduceat(ep.sev_cur, first),
            "current_visible": np.logical_or.reduceat(ep.vis_cur, first).astype(np.uint8),
            "camera_visible": cam_vis.astype(np.uint8),
            "current_health": cur_health,
            "camera_health": cam_health,
        }
    )
    table.to_csv(folder / "conditions" / f"{ep.name}.csv", index=False, float_format="%.4g")
    return table


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# --------------------------------------------------------------------------- reader


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
    t0 = float(meta["start_epoch"]) if meta else float(min(cur_sec[0], frame_sec[0]))
    a = dict(np.load(side)) if meta else {}
    a.setdefault("t_cur", _spread_seconds(cur_sec, 2) - t0)  # FURNACE.md 8.4 step 1
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
    if faulted:  # the faulted view at the subsampled frame rate (FURNACE.md 6)
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
    """(B, ...) -> (B,) 1 where any element is non-zero (FURNACE.md 8.1 frame label)."""
    return (block.reshape(len(block), -1).max(axis=1, initial=0) > 0).astype(np.uint8)


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


def dataset_info(root: str | Path) -> dict[str, Any]:
    """Summary of an FMF layout: recordings, seconds, frames, label balance, faults.

    Args:
        root: the dataset folder or its `pixel-level/` folder.

    Returns:
        A JSON-serialisable dict (`format_dataset_info` prints it).
    """
    root = resolve_root(root)
    splits = {s: _load_json(root / f"{s}.json") for s in ("train", "test")}
    recs, sizes = [], set()
    label_s: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    simulated = (root / "sentinel").is_dir()
    for path in sorted((root / "videos").glob("*.mat")):
        name = path.name.split(".")[0]
        cur_sec, _ = _read_csv(root / "currents" / f"{name}.csv", n_values=3)
        frame_sec, _ = _read_csv(root / "timestamps" / f"{name}.csv", n_values=0)
        with h5py.File(path, "r") as f:
            n_frames, _, w, h = f["data"].shape
            sizes.add((int(h), int(w)))
            cond = root / "sentinel" / "conditions" / f"{name}.csv"
            if cond.exists():
                label_s.update(pd.read_csv(cond)["condition"].tolist())
            else:  # a second is abnormal if any of its frames is (FURNACE.md 8.3)
                ab = _rows(f["label"], np.arange(n_frames), _any_pixel).astype(bool)
                m = min(n_frames, len(frame_sec))
                bad = np.unique(frame_sec[:m][ab[:m]])
                n_bad = int(np.isin(np.unique(cur_sec), bad).sum())
                label_s.update({"abnormal": n_bad, "normal": len(np.unique(cur_sec)) - n_bad})
        side = root / "sentinel" / f"{name}.json"
        meta = json.loads(side.read_text()) if side.exists() else {}
        faults.update(f["kind"] for f in meta.get("faults", []))
        recs.append(
            {
                "name": name,
                "furnace_id": meta.get("furnace_id", name),
                "seconds": len(np.unique(cur_sec)),
                "frames": int(n_frames),
                "camera_fps": round(n_frames / max(len(np.unique(frame_sec)), 1), 2),
                **{f"{s}_frames": len(splits[s].get(f"{name}.mat", [])) for s in splits},
            }
        )
    classes = list(CLASS_NAMES) if simulated else ["normal", "abnormal"]
    total = sum(label_s.values())
    extra = _load_json(root.parent / "dataset.json") if simulated else {}
    return {
        "root": str(root),
        "kind": "simulated" if simulated else "fmf-benchmark",
        "simulator_version": extra.get("simulator_version"),
        "n_recordings": len(recs),
        "n_furnaces": len({r["furnace_id"] for r in recs}),
        "seconds": sum(r["seconds"] for r in recs),
        "frames": sum(r["frames"] for r in recs),
        "frame_size": [list(s) for s in sorted(sizes)],
        "recordings": recs,
        "label_seconds": {c: int(label_s[c]) for c in classes},
        "label_percent": {c: 100.0 * label_s[c] / max(total, 1) for c in classes},
        "faults": dict(sorted(faults.items())),
    }


def format_dataset_info(info: dict[str, Any]) -> str:
    """Plain-text tables of a `dataset_info` dict."""
    sizes = ", ".join(f"{h}x{w}" for h, w in info["frame_size"]) or "-"
    recs = info["recordings"]
    nw = max([9, *(len(r["name"]) for r in recs)])
    fw = max([7, *(len(str(r["furnace_id"])) for r in recs)])
    lines = [
        f"dataset     {info['root']} ({info['kind']})",
        f"recordings  {info['n_recordings']} from {info['n_furnaces']} furnaces",
        f"seconds     {info['seconds']} ({info['seconds'] / 3600:.2f} h)",
        f"frames      {info['frames']} at {sizes}",
        "",
        f"{'recording':<{nw}}  {'furnace':<{fw}} {'seconds':>8} {'frames':>8} {'fps':>6}"
        f" {'train':>8} {'test':>8}",
    ]
    lines += [
        f"{r['name']:<{nw}}  {r['furnace_id']:<{fw}} {r['seconds']:>8} {r['frames']:>8}"
        f" {r['camera_fps']:>6g} {r['train_frames']:>8} {r['test_frames']:>8}"
        for r in recs
    ]
    lines += ["", f"{'condition':<20} {'seconds':>8} {'%':>7}"]
    lines += [
        f"{c:<20} {s:>8} {info['label_percent'][c]:>6.1f}%"
        for c, s in info["label_seconds"].items()
    ]
    lines += ["", f"{'health fault':<20} {'events':>8}"]
    lines += [f"{k:<20} {v:>8}" for k, v in info["faults"].items()] or ["(none recorded)"]
    return "\n".join(lines)
