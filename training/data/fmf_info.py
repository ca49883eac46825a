"""What a dataset holds: `furnace dataset info` (ours or a real FMF-Benchmark download)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from simulator.config import CLASS_NAMES
from training.data.fmf import _any_pixel, _load_json, _read_csv, _rows, resolve_root


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
            else:  # a second is abnormal if any of its frames is (docs/design/furnace.md 8.3)
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
