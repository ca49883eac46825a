"""Write simulator episodes into the FMF-Benchmark V2 "pixel-level" layout (docs/design/furnace.md
8.1).

MATLAB v7.3 videos (HDF5 with a MATLAB userblock), current and timestamp CSVs, split JSONs, and
the `sentinel/` extension for what the public format lacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm.auto import tqdm

from simulator.config import CLASS_NAMES, SIM_VERSION
from simulator.types import Episode
from training.data.fmf import _EPISODE_ARRAYS, _SUMMARY_KEYS, LAYOUT, TIME_FORMAT  # noqa: F401

logger = logging.getLogger(__name__)


def write_fmf(
    episodes: Iterable[Episode],
    out_dir: str | Path,
    *,
    test_fraction: float = 0.2,
    guard_s: float = 136.0,
    progress: bool = True,
    total: int | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write episodes as FMF-Benchmark V2 `pixel-level/` plus the `sentinel/` extension.

    Args:
        episodes: clean episodes (names without dots, unique).
        out_dir: output folder; gets `pixel-level/` and `dataset.json`.
        test_fraction: last fraction of each video's frames in the test split.
        guard_s: seconds of frames before the test block left out of both splits.
        progress: show a tqdm bar over episodes.
        total: number of episodes, for the bar when `episodes` is a generator.
        run: how the episodes were made (seed, config), recorded in `dataset.json`.

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
    for ep in tqdm(
        episodes, desc="simulate + write", unit="episode", total=total, disable=not progress
    ):
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
    if run is not None:
        info["run"] = _jsonable(run)
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
