"""What the memory heads and per-furnace adaptation cost the service: `Engine.score` with a
bundle's memory heads and adaptation against the same bundle without adaptation and without
either, on the same held-out windows, side by side in one run.

    .venv/bin/python bench/memory_overhead.py --bundle models/default --data data/test

The bundles without them are copies whose manifests drop the `adaptation` section, and the
`memory` section (and its graphs) too; all engines use one intra-op thread (the service's
default). Two shapes, as the service scores: batch 1 (one furnace's window as it closes; the
histories grow as in a live furnace) and batch 64 (64 furnaces' windows in one call). Prints
the median milliseconds per call and the ratios, and
the size of a furnace's history. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.engine import Engine
from service.types import CameraWindow, CurrentWindow, Window
from training.data import Windows, valid_for
from training.data.splits import load_recordings, windows_of


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def service_windows(w: Windows, index: np.ndarray, furnace: str, t0: float) -> list[Window]:
    """The windows `index` as the service's `Window`s of one furnace, 2 s apart."""
    frames = w.camera(index)
    out = []
    for k, i in enumerate(index):
        cur = CurrentWindow(w.x_c[i], w.baseline[i])
        out.append(Window(furnace, t0 + 2.0 * k, cur, CameraWindow(frames[k])))
    return out


def stripped(bundle: Path, root: Path, name: str, *, memory: bool) -> Path:
    """A copy of `bundle` without per-furnace adaptation and, unless `memory`, without its
    memory heads (unsigned: the bench loads it without a trust policy)."""
    dest = root / name
    shutil.copytree(bundle, dest)
    raw = json.loads((dest / "manifest.json").read_text())
    raw.pop("adaptation", None)
    if not memory:
        for graph in raw.pop("memory")["graphs"].values():
            raw["files"].pop(graph["file"])
            (dest / graph["file"]).unlink()
    (dest / "manifest.json").write_text(json.dumps(raw))
    (dest / "signature.json").unlink(missing_ok=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--data", default="data/test")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    bundle = Path(args.bundle)
    if json.loads((bundle / "manifest.json").read_text()).get("memory") is None:
        ap.error(f"{bundle} has no memory heads (furnace memory adds them)")
    w = windows_of(load_recordings(args.data), window_s=16.0, hop_s=2.0, baseline_s=120.0)
    both = np.flatnonzero(valid_for(w, "current") & valid_for(w, "camera"))
    rec = w.recording[both]
    first = both[rec == rec[0]]  # one recording's windows in order: a live furnace
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            "memory and adaptation": Engine(bundle),
            "memory, no adaptation": Engine(stripped(bundle, Path(tmp), "mem", memory=True)),
            "window heads only": Engine(stripped(bundle, Path(tmp), "plain", memory=False)),
        }
        live = service_windows(w, first, "f0", 1.7e9)
        fleet = [
            service_windows(w, both[j : j + 1], f"f{j}", 1.7e9)[0]
            for j in np.random.default_rng(0).choice(both.size, 64, replace=False)
        ]
        rows = []
        for name, engine in engines.items():
            pos = iter(range(10**9))

            def one(engine: Engine = engine, pos: Any = pos) -> None:
                k = next(pos) % len(live)
                engine.score([live[k]])

            b1 = _median_ms(one, args.repeats)
            b64 = _median_ms(lambda engine=engine: engine.score(fleet), max(20, args.repeats // 10))
            rows.append((name, b1, b64))
        memory = engines["memory and adaptation"].history
        kept = memory.windows("f0", "current") if memory is not None else []
        adapter = engines["memory and adaptation"].adapter
        scores = adapter.windows("f0", "current") if adapter is not None else []
    print(f"machine: {platform.processor() or platform.machine()}, one intra-op thread")
    print(f"bundle {bundle} ({len(live)} windows of one furnace; 64 furnaces for batch 64)")
    print("| engine | batch 1 ms | batch 64 ms |")
    print("|---|---|---|")
    for name, b1, b64 in rows:
        print(f"| {name} | {b1:.2f} | {b64:.1f} |")
    (_, a1, a64), (_, m1, m64), (_, p1, p64) = rows
    print(f"memory / window heads only: batch 1 {m1 / p1:.2f}x, batch 64 {m64 / p64:.2f}x")
    print(f"adaptation on top: batch 1 {a1 / m1:.2f}x, batch 64 {a64 / m64:.2f}x")
    print(f"history kept for one furnace and modality: codes of {len(kept)} windows, ", end="")
    print(f"scores of {len(scores)} windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
