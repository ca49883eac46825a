"""Small synthetic episodes and an FMF-Benchmark V2 fixture laid out like the real download.

`write_real_fmf_fixture` does not use `training.data.fmf`: it writes what h5py and pandas see in the
published data (docs/design/furnace.md 8.1), so the reader is tested against an independent writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from simulator.types import Episode, FaultEvent
from training.data.fmf import Recording

EPOCH = 1_767_225_600  # 2026-01-01 00:00:00 UTC
CONDITION = 2  # overheating, the class of the synthetic event


def make_episode(
    name: str = "ep0",
    *,
    seconds: float = 180.0,
    camera_fps: float = 2.0,
    furnace_id: str = "f0",
    start_epoch: int = EPOCH,
    seed: int = 0,
    event_s: tuple[float, float] | None = (60.0, 100.0),
    faults: Sequence[FaultEvent] = (),
) -> Episode:
    """A small clean episode: noisy 2 Hz currents, one condition event with a hot spot.

    Frames are asymmetric in H and W (a gradient along rows, another along columns) so
    transposition mistakes show; the mask is a 6x10 rectangle while the event lasts.
    """
    rng = np.random.default_rng(seed)
    n, f = int(round(seconds * 2.0)), int(np.floor(seconds * camera_fps))
    t_cur, t_frame = np.arange(n) / 2.0, np.arange(f) / camera_fps
    lo, hi = event_s if event_s is not None else (np.inf, np.inf)
    ramp = np.clip((t_cur - lo) / 10.0, 0.0, 1.0) * (t_cur < hi)
    setpoint = np.full((n, 3), 15000.0, np.float32)
    current = (setpoint + 800.0 * rng.standard_normal((n, 3)) + 2000.0 * ramp[:, None]).astype(
        np.float32
    )
    label_cur = np.where((t_cur >= lo) & (t_cur < hi), CONDITION, 0).astype(np.int8)
    in_event = (t_frame >= lo) & (t_frame < hi)
    rows, cols = np.arange(64)[:, None], np.arange(64)[None, :]
    base = np.stack([rows * 3 + cols * 0, cols * 2 + rows * 0, rows + cols], axis=-1)  # (64, 64, 3)
    frames = base.astype(np.uint8)[None] + rng.integers(0, 8, (f, 64, 64, 3), dtype=np.uint8)
    mask = np.zeros((f, 64, 64), np.uint8)
    mask[in_event, 20:26, 30:40] = 1
    frames[mask.astype(bool)] = 250
    return Episode(
        name=name,
        furnace_id=furnace_id,
        start_epoch=float(start_epoch),
        t_cur=t_cur,
        current=current,
        action=np.zeros((n, 3), np.float32),
        plc=np.ones((n, 4), np.uint8),
        setpoint=setpoint,
        label_cur=label_cur,
        sev_cur=ramp.astype(np.float32),
        vis_cur=label_cur > 0,
        t_frame=t_frame,
        frames=frames,
        mask=mask,
        label_frame=np.where(in_event, CONDITION, 0).astype(np.int8),
        sev_frame=np.interp(t_frame, t_cur, ramp).astype(np.float32),
        vis_frame=in_event,
        latent={"temperature": ramp.astype(np.float32), "arc": current / 15000.0},
        events=[{"condition": "overheating", "onset_s": lo, "end_s": hi}] if event_s else [],
        nuisances=[],
        faults=list(faults),
        meta={"seed": seed, "camera_fps": camera_fps, "simulator_version": "test"},
    )


def as_recording(ep: Episode, split: NDArray[np.str_] | str = "train") -> Recording:
    """A Recording straight from an episode (no files), for window tests."""
    return Recording(
        name=ep.name,
        t_cur=ep.t_cur,
        current=ep.current,
        t_frame=ep.t_frame,
        frames=ep.frames,
        frame_label_binary=ep.mask.reshape(len(ep.mask), -1).max(axis=1),
        split=np.broadcast_to(np.asarray(split, dtype="<U5"), ep.t_frame.shape).copy(),
        label_cur=ep.label_cur,
        label_frame=ep.label_frame,
        sev_cur=ep.sev_cur,
        sev_frame=ep.sev_frame,
        vis_cur=ep.vis_cur,
        vis_frame=ep.vis_frame,
        health_cur=np.zeros(len(ep.t_cur), np.uint8),
        health_frame=np.zeros(len(ep.t_frame), np.uint8),
        events=ep.events,
        furnace_id=ep.furnace_id,
        start_epoch=ep.start_epoch,
    )


def matlab_userblock(created: float = EPOCH) -> bytes:
    """The 512-byte MATLAB 7.3 header: 116 text bytes, 8 subsystem bytes, 0x0200, 'IM'."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(created))
    text = f"MATLAB 7.3 MAT-file, Platform: PCWIN64, Created on: {stamp} HDF5 schema 1.00 ."
    return (text.encode().ljust(116, b" ") + bytes(8) + b"\x00\x02IM").ljust(512, b"\x00")


def write_real_fmf_fixture(
    root: Path,
    *,
    videos: Sequence[tuple[str, float]] = (("SaveToAvi-4-19-21_40_52-6002", 200.0),),
    px: int = 64,
    abnormal_s: tuple[float, float] = (150.0, 175.0),
    test_s: float = 40.0,
    gap_s: float = 6.0,
    current_lead_s: int = 2,
    seed: int = 0,
) -> Path:
    """Write `root/pixel-level/` the way the real download looks to h5py and pandas.

    Per video: frames at 24 or 25 per second (about 24.5 fps) sharing one-second timestamp
    strings, binary masks, a MATLAB v7.3 userblock, currents that start `current_lead_s`
    earlier at two rows per second under a GBK-encoded Chinese header, and train/test
    indices with `gap_s` of frames in neither split before the last `test_s` of frames.

    Returns:
        The `pixel-level` folder.
    """
    rng = np.random.default_rng(seed)
    out = root / "pixel-level"
    for sub in ("videos", "currents", "timestamps"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    train, test = {}, {}
    start = np.datetime64("2023-05-10T21:33:27")
    for name, seconds in videos:
        per_sec = np.where(np.arange(int(seconds)) % 2 == 0, 25, 24)
        sec = np.repeat(np.arange(int(seconds)), per_sec)  # (F,) whole second of each frame
        t = sec + (np.arange(len(sec)) - np.repeat(np.cumsum(per_sec) - per_sec, per_sec)) / (
            np.repeat(per_sec, per_sec)
        )
        abnormal = (t >= abnormal_s[0]) & (t < abnormal_s[1])
        img = np.zeros((len(t), px, px, 3), np.uint8)  # (F, H, W, C)
        img[..., 0] = np.arange(px, dtype=np.uint8)[:, None] * (128 // px + 1)
        img[..., 1] = np.arange(px, dtype=np.uint8)[None, :]
        img[..., 2] = (np.arange(len(t)) % 256)[:, None, None].astype(np.uint8)
        mask = np.zeros((len(t), px, px), np.uint8)
        mask[abnormal, px // 4 : px // 2, px // 2 : px // 2 + px // 8] = 1
        path = out / "videos" / f"{name}.mat"
        with h5py.File(path, "w", userblock_size=512) as f:
            for key, arr in (
                ("data", img.transpose(0, 3, 2, 1)),  # MATLAB [H, W, C, T] seen as [T, C, W, H]
                ("label", mask.transpose(0, 2, 1)),  # MATLAB [H, W, T] seen as [T, W, H]
            ):
                ds = f.create_dataset(key, data=np.ascontiguousarray(arr), compression="gzip")
                ds.attrs.create("MATLAB_class", np.bytes_("uint8"))
        with open(path, "r+b") as fh:
            fh.write(matlab_userblock())
        stamps = np.char.replace(
            np.datetime_as_string(start + sec.astype("timedelta64[s]"), unit="s"), "T", " "
        )
        (out / "timestamps" / f"{name}.csv").write_text(
            "timestamp\n" + "".join(f"{s}\n" for s in stamps)
        )
        csec = np.repeat(np.arange(-current_lead_s, int(seconds)), 2)
        cstamps = np.char.replace(
            np.datetime_as_string(start + csec.astype("timedelta64[s]"), unit="s"), "T", " "
        )
        amps = 15000.0 + 500.0 * rng.standard_normal((len(csec), 3))
        rows = "".join(
            f"{s},{a:.2f},{b:.2f},{c:.2f}\n" for s, (a, b, c) in zip(cstamps, amps, strict=True)
        )
        (out / "currents" / f"{name}.csv").write_bytes(
            "时间,A相电流,B相电流,C相电流\n".encode("gbk") + rows.encode()
        )
        n_test = int(np.sum(t >= seconds - test_s))
        n_train = int(np.sum(t < seconds - test_s - gap_s))
        train[f"{name}.mat"] = list(range(n_train))
        test[f"{name}.mat"] = list(range(len(t) - n_test, len(t)))
    (out / "train.json").write_text(json.dumps(train))
    (out / "test.json").write_text(json.dumps(test))
    return out
