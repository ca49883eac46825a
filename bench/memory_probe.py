"""Detection-quality probe: does a memory over the shared codes beat the per-window head?

    .venv/bin/python bench/memory_probe.py --run runs/default --train data/train \
        --test data/test --history 30

On the run's frozen CMG, each window's shared-code vectors (codebook lookups, (T, D)) become a
per-window vector [mean_T, max_T]; a window's memory is that vector beside the mean of the last
8 windows, and the mean and max of the last `--history` windows of the same recording (valid
windows of that modality only). A small MLP trained on the training furnaces' labels of both
modalities (checkpoint: best validation macro-F1) is compared, on the test furnaces, with the
run's per-window heads (current, camera, both), each thresholded at 1 % false alarms on
validation normals and decided like the service (`training.evaluation.metrics.decide`).
Because it reads only shared codes, the same MLP serves both modalities. Figures and the
decision taken on them: docs/experiments.md, "Memory over the shared codes".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from simulator.config import CLASS_NAMES
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import load_recordings, windows_of
from training.evaluation.metrics import auroc, decide, macro_f1, threshold_for_false_alarm_rate
from training.run import load_run, split_for
from training.train_head import Encoded, class_weights, encode_all, predict

LISTED = {
    "current": ["normal", "overheating", "eruption", "abnormal_exhaust", "electrode_breakage"],
    "camera": ["normal", "semi_molten", "overheating", "eruption", "abnormal_exhaust"],
}
HOP_S = 2.0
SHORT = 8  # windows in the short memory


def window_vectors(enc: Encoded) -> NDArray[np.float32]:
    """(W, 2D): mean and max over segments of the quantized code vectors."""
    q = enc.q.numpy()
    return np.concatenate([q.mean(1), q.max(1)], 1).astype(np.float32)


def memory_features(w: Windows, enc: Encoded, modality: str, history: int) -> NDArray[np.float32]:
    """(W, 8D): the window, the mean of the last SHORT and the mean and max of the last
    `history` valid windows of its recording (the window itself when none is valid)."""
    f = window_vectors(enc)
    valid = valid_for(w, modality)
    out = np.zeros((len(w), 4 * f.shape[1]), np.float32)
    for rec in np.unique(w.recording):
        idx = np.flatnonzero(w.recording == rec)
        idx = idx[np.argsort(w.t_end[idx])]
        t = w.t_end[idx]
        for j, i in enumerate(idx):
            past = []
            for n in (SHORT, history):
                lo = np.searchsorted(t, t[j] - n * HOP_S + 1e-6)
                h = idx[lo : j + 1]
                h = h[valid[h]]
                past.append(h if h.size else np.array([i]))
            out[i] = np.concatenate(
                [f[i], f[past[0]].mean(0), f[past[1]].mean(0), f[past[1]].max(0)]
            )
    return out


def train_memory_head(
    x: NDArray[np.float32], y: NDArray[np.int64], xv: NDArray[np.float32], yv: NDArray[np.int64]
) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.LayerNorm(x.shape[1]),
        nn.Linear(x.shape[1], 128),
        nn.GELU(),
        nn.Dropout(0.2),
        nn.Linear(128, len(CLASS_NAMES)),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, len(CLASS_NAMES)))
    xt, yt, xvt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv)
    present = [CLASS_NAMES[i] for i in np.unique(yv)]
    best, state = -1.0, None
    for _ in range(30):
        net.train()
        perm = torch.randperm(len(yt))
        for s in range(0, len(perm), 256):
            b = perm[s : s + 256]
            loss = loss_fn(net(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            f1 = macro_f1(yv, net(xvt).argmax(1).numpy(), present)
        if f1 > best:
            best, state = f1, {k: v.clone() for k, v in net.state_dict().items()}
    assert state is not None
    net.load_state_dict(state)
    return net.eval()


def scored(
    probs_val: NDArray[np.float64],
    ok_val: NDArray[np.bool_],
    y_val: NDArray[np.int64],
    probs: NDArray[np.float64],
    ok: NDArray[np.bool_],
    y: NDArray[np.int64],
    modality: str,
) -> tuple[float, float]:
    """(macro-F1 of the service decision, AUROC) on the test windows valid for `modality`."""
    thr = threshold_for_false_alarm_rate(1.0 - probs_val[ok_val & (y_val == 0), 0], 0.01)
    pred = decide(probs[ok], 1.0 - probs[ok, 0], thr)
    return macro_f1(y[ok], pred, LISTED[modality]), auroc(y[ok], 1.0 - probs[ok, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--train", default="data/train")
    ap.add_argument("--test", default="data/test")
    ap.add_argument("--history", type=int, default=30, help="windows in the long memory")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg, model, heads, _ = load_run(args.run)
    data = split_for(cfg, load_recordings(args.train))
    sets = {"train": data.train, "val": data.val}
    sets["test"] = windows_of(load_recordings(args.test), **cfg.train.window_args)
    enc = {s: encode_all(model, w) for s, w in sets.items()}
    feats = {
        (s, m): memory_features(w, enc[s][m], m, args.history)
        for s, w in sets.items()
        for m in MODALITIES
    }
    ok = {(s, m): valid_for(w, m) for s, w in sets.items() for m in MODALITIES}
    y = {s: w.label for s, w in sets.items()}

    def stack(s: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return (
            np.concatenate([feats[s, m][ok[s, m]] for m in MODALITIES]),
            np.concatenate([y[s][ok[s, m]] for m in MODALITIES]),
        )

    net = train_memory_head(*stack("train"), *stack("val"))
    rows = []
    for m in MODALITIES:
        with torch.no_grad():
            p = {
                s: torch.softmax(net(torch.from_numpy(feats[s, m])), 1).double().numpy()
                for s in ("val", "test")
            }
        rows.append(
            (
                f"memory ({args.history} windows)",
                m,
                *scored(p["val"], ok["val", m], y["val"], p["test"], ok["test", m], y["test"], m),
            )
        )
        for name, head in heads.items():
            pv = predict(head, enc["val"][m].q).astype(np.float64)
            pt = predict(head, enc["test"][m].q).astype(np.float64)
            rows.append(
                (
                    f"per-window head {name}",
                    m,
                    *scored(pv, ok["val", m], y["val"], pt, ok["test", m], y["test"], m),
                )
            )
    print(f"{'model':32s} {'modality':8s} macro-F1  AUROC")
    for name, m, f1, au in rows:
        print(f"{name:32s} {m:8s} {f1:8.3f} {au:6.3f}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
