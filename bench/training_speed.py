"""Training throughput by torch thread count, side by side in one run (the `train.threads`
choice of configs/default.yaml; docs/benchmarks.md "Training time").

    .venv/bin/python bench/training_speed.py --data data/test --threads 1 2

For each thread count, in turn and twice (so drift shows): the median seconds of one
pre-training step of the default config (`training.pretrain.train_step`: forward, backward,
clipping, Adam at batch 64 on paired windows), and the windows per second of encoding with
the frozen model (what the heads and the threshold calibration spend their time on after
pre-training), camera and current. The last columns are the ratios against the first thread
count. The model is freshly built (the cost of a step does not depend on the weights); no
run folder is written.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from model.cmg import build_cmg
from training.config import RunConfig, load_config
from training.data import Windows
from training.data.splits import load_recordings, paired_mask
from training.pretrain import _batch, camera_stats, train_step
from training.run import split_for
from training.train_head import encode_windows


def paired_windows(cfg: RunConfig, data: str) -> Windows:
    """The paired training windows pre-training draws its batches from."""
    split = split_for(cfg, load_recordings(data))
    return split.train.select(paired_mask(split.train))


def measure(cfg: RunConfig, w: Windows, threads: int, steps: int, windows: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_cmg(cfg.cmg)
    model.set_camera_stats(*camera_stats(w))
    model.train()
    opt = torch.optim.Adam(model.main_parameters(), lr=cfg.train.lr)
    club = model.club_parameters()
    club_opt = torch.optim.Adam(club, lr=cfg.cmg.club_lr) if club else None
    times = []
    for _ in range(steps):
        idx = rng.choice(len(w), size=cfg.train.batch, replace=False)
        t0 = time.perf_counter()
        train_step(model, _batch(w, idx), opt, club_opt, cfg.train.grad_clip)
        times.append(time.perf_counter() - t0)
    idx = np.arange(min(windows, len(w)))
    t0 = time.perf_counter()
    encode_windows(model, w, "camera", index=idx)
    camera = idx.size / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    encode_windows(model, w, "current", index=idx)
    current = idx.size / (time.perf_counter() - t0)
    return {"step_s": statistics.median(times[3:]), "camera_wps": camera, "current_wps": current}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--data", default="data/test", help="any simulated dataset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=25, help="timed steps per measurement")
    parser.add_argument("--windows", type=int, default=2048, help="windows encoded")
    args = parser.parse_args()
    print(
        f"host: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"cores seen by torch, torch {torch.__version__}, config {args.config}, data {args.data}"
    )
    print(
        f"{'threads':>7s} {'step s':>7s} {'camera win/s':>12s} {'current win/s':>13s} "
        f"{'step x':>7s} {'camera x':>8s}"
    )
    cfg = load_config(args.config)
    w = paired_windows(cfg, args.data)  # read once: every measurement uses the same windows
    first: dict[str, float] | None = None
    for _ in range(2):
        for th in args.threads:
            r = measure(cfg, w, th, args.steps, args.windows)
            first = first or r
            step_x = first["step_s"] / r["step_s"]
            camera_x = r["camera_wps"] / first["camera_wps"]
            print(
                f"{th:7d} {r['step_s']:7.3f} {r['camera_wps']:12.0f} {r['current_wps']:13.0f} "
                f"{step_x:7.2f} {camera_x:8.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
