"""Simulator generation speed, in simulated seconds per wall second ("x real time").

Pinned to one core. Measures, side by side in one run: current only, current + camera at 2 fps
(the service's rate), at 25 fps (the benchmark's video rate), and simulate + write the
FMF-Benchmark layout. Usage: python bench/simulator_speed.py [--minutes 30] [--episodes 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from simulator.config import SimConfig
from simulator.dataset import RunSpec, generate
from training.data.fmf_write import write_fmf


def _time(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    simulated = args.episodes * args.minutes * 60.0

    def spec(fps: float) -> RunSpec:
        cfg = SimConfig(minutes=args.minutes, camera_fps=fps, event_free_fraction=0.3)
        return RunSpec(seed=123, furnaces=args.episodes, config=cfg)

    rows = []
    rows.append(("current only", _time(lambda: list(generate(spec(2.0), render=False)))))
    rows.append(("current + camera 2 fps", _time(lambda: list(generate(spec(2.0))))))
    rows.append(("current + camera 25 fps", _time(lambda: list(generate(spec(25.0))))))
    with tempfile.TemporaryDirectory() as tmp:
        write = lambda: write_fmf(generate(spec(2.0)), tmp, progress=False)  # noqa: E731
        rows.append(("simulate + write FMF layout, 2 fps", _time(write)))
    base = rows[1][1]
    print(f"{args.episodes} episodes x {args.minutes:g} min, one core: {not args.all_cores}")
    print(f"{'job':38s} {'wall s':>8s} {'x real time':>12s} {'vs camera 2 fps':>16s}")
    for name, seconds in rows:
        print(f"{name:38s} {seconds:8.2f} {simulated / seconds:12.0f} {base / seconds:15.2f}x")


if __name__ == "__main__":
    main()
