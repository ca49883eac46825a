"""ONNX Runtime vs torch eager, same windows, same machine, one run (issue 4's speed figure).

    .venv/bin/python bench/inference_speed.py --run runs/default --bundle models/default

Both sides use one intra-op thread (the service's default, docs/design/serving.md 3.1). Prints the
median time per call at batch 1 and 64 for each modality and the torch/ORT ratio; also the parity of
the two on the same held-out windows. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from model.scorer import ModalityScorer
from service.engine import Engine
from training.data import valid_for
from training.data.splits import load_recordings, windows_of
from training.export import INPUTS, measure_parity, scorer_inputs
from training.run import load_run


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="data/test", help="held-out windows to feed")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    torch.set_num_threads(1)
    _, model, heads, _ = load_run(args.run)
    engine = Engine(args.bundle, intra_op_threads=1)
    recs = load_recordings(args.data)[:3]
    w = windows_of(recs, window_s=16.0, hop_s=2.0, baseline_s=120.0)
    print(
        f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"bundle {engine.model_version}, {len(w)} windows from {len(recs)} held-out recordings"
    )
    print(f"{'modality':8s} {'batch':>5s} {'torch ms':>9s} {'ORT ms':>8s} {'ratio':>6s}")
    for m in ("current", "camera"):
        scorer = ModalityScorer(model, heads[engine.manifest.heads[m]], m)
        index = np.flatnonzero(valid_for(w, m))
        session = engine.sessions[m]
        for batch in (1, 64):
            feeds = scorer_inputs(w, m, index[:batch])
            targs = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in INPUTS[m]]

            def run_torch(targs: list[torch.Tensor] = targs, scorer: Any = scorer) -> None:
                with torch.no_grad():
                    scorer(*targs)

            def run_ort(feeds: dict[str, Any] = feeds, session: Any = session) -> None:
                session.run(None, feeds)

            t_torch = _median_seconds(run_torch, args.repeats)
            t_ort = _median_seconds(run_ort, args.repeats)
            print(
                f"{m:8s} {batch:5d} {t_torch * 1e3:9.3f} {t_ort * 1e3:8.3f} {t_torch / t_ort:5.1f}x"
            )
        p = measure_parity(scorer, session, scorer_inputs(w, m, index))
        print(
            f"  parity on {p.windows} windows: codes equal {p.code_agreement:.4%}, "
            f"max |dp| {p.max_prob_diff:.1e}, max |dscore| {p.max_score_diff:.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
