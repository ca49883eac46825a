"""Training the memory heads (model/memory.py) on the codes a bundle's own graphs produce [ours].

The codes come from the exported ONNX graphs, not from the torch model, so the history a
memory head learns from is exactly what the service stores and rebuilds (offline == online by
construction). Each window of a recording gets its history: slot j holds the codes of the same
recording's window ending `j * stride` hops earlier, where that window is valid for the
modality (`history_index`). One head is trained per label source (current, camera, both); each
modality ships the best on its own validation windows among the heads trained with its labels
(the window heads' rule, training.decision.select_heads), and the bundle's thresholds are
calibrated again on the memory scores of validation normals.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from model.memory import MemoryHead
from simulator.config import CLASS_NAMES
from training.data import MODALITIES, Windows, valid_for
from training.evaluation.metrics import auroc, macro_f1
from training.train_head import class_weights

logger = logging.getLogger(__name__)

ABSENT = -1  # history_index: no valid window of the modality there


@dataclass(frozen=True)
class MemoryConfig:
    """The memory heads' shape and training (defaults: docs/method.md, "Memory")."""

    slots: int = 16  # M windows read, slot 0 = the window decided
    stride_windows: int = 8  # hops between slots (8 x 2 s = 16 s: non-overlapping windows)
    hidden: int = 64
    epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    slot_dropout: float = 0.2  # training: each earlier slot hidden with this probability
    seed: int = 0


class History(NamedTuple):
    """Every window of one modality that can be decided, with its history."""

    codes: NDArray[np.int64]  # (N, M, K) codes, 0 where absent
    present: NDArray[np.float32]  # (N, M) 1 where the slot's window exists
    window_probs: NDArray[np.float32]  # (N, C) the window head's probabilities of slot 0
    label: NDArray[np.int64]  # (N,)
    rows: NDArray[np.int64]  # (N,) the windows' rows in the Windows they came from


def history_index(
    recording: NDArray[np.str_],
    t_end: NDArray[np.float64],
    valid: NDArray[np.bool_],
    *,
    hop_s: float,
    slots: int,
    stride: int,
) -> NDArray[np.int64]:
    """(W, M) row of slot j's window for every window (ABSENT where there is none).

    Windows match on the hop grid (round(t_end / hop_s)) within a recording; a slot is
    ABSENT where that window does not exist or is not valid for the modality. Slot 0 is the
    window itself (ABSENT where it is not valid).
    """
    out = np.full((len(t_end), slots), ABSENT, np.int64)
    for name in np.unique(recording):
        rows = np.flatnonzero(recording == name)
        key = np.round(t_end[rows] / hop_s).astype(np.int64)
        lut = np.full(int(key.max()) + 1, ABSENT, np.int64)
        lut[key] = rows
        for j in range(slots):
            back = key - j * stride
            src = np.where(back >= 0, lut[np.clip(back, 0, None)], ABSENT)
            ok = src >= 0
            ok[ok] = valid[src[ok]]
            out[rows, j] = np.where(ok, src, ABSENT)
    return out


def build_history(
    w: Windows,
    codes: NDArray[np.int64],
    probs: NDArray[np.float32],
    modality: str,
    *,
    hop_s: float,
    cfg: MemoryConfig,
) -> History:
    """The windows of `modality` that are valid, with the codes of their history.

    Args:
        w: the windows.
        codes: (W, K) the modality's codes of every window (any value where not valid).
        probs: (W, C) the modality's window-head probabilities (any value where not valid).
        modality: which sensor.
        hop_s: the windows' hop.
        cfg: slots and stride.
    """
    valid = valid_for(w, modality)
    idx = history_index(
        w.recording, w.t_end, valid, hop_s=hop_s, slots=cfg.slots, stride=cfg.stride_windows
    )
    keep = np.flatnonzero(idx[:, 0] >= 0)
    idx = idx[keep]
    present = (idx >= 0).astype(np.float32)
    hist = np.where(present[..., None] > 0, codes[np.clip(idx, 0, None)], 0).astype(np.int64)
    window_probs = probs[keep].astype(np.float32)
    return History(hist, present, window_probs, w.label[keep].astype(np.int64), keep)


def concat(parts: list[History]) -> History:
    return History(*(np.concatenate([getattr(p, f) for p in parts]) for f in History._fields))


@torch.no_grad()
def predict(head: MemoryHead, h: History, *, batch: int = 2048) -> NDArray[np.float64]:
    """(N, C) probabilities."""
    head.eval()
    out = [
        head(*(torch.from_numpy(a[s : s + batch]) for a in (h.codes, h.present, h.window_probs)))
        .softmax(-1)
        .double()
        .numpy()
        for s in range(0, len(h.label), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, head.n_classes))


def _figures(head: MemoryHead, val: History) -> tuple[float, float]:
    probs = predict(head, val)
    present = [CLASS_NAMES[i] for i in np.unique(val.label)]
    f1 = macro_f1(val.label, probs.argmax(1), present)
    au = auroc(val.label, 1.0 - probs[:, 0])
    return f1, 0.0 if np.isnan(au) else au


def train_memory_head(
    train: History,
    val: History,
    codebook: NDArray[np.float32],
    *,
    segments: int,
    n_classes: int,
    cfg: MemoryConfig,
    progress: bool = True,
    desc: str = "memory head",
) -> tuple[MemoryHead, dict[str, float]]:
    """Train one memory head (a correction of the window head, which it equals before the
    first step); keep the epoch with the best validation macro-F1 (AUROC breaks ties; epoch
    -1, the window head itself, is a candidate too). Earlier slots are hidden at random
    (`slot_dropout`) and, every other epoch, the history is cut to a random length, so the
    head also decides well with the short or gappy history of a furnace's first minutes, a
    sensor fault or a service restart.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = MemoryHead(
        torch.from_numpy(codebook),
        segments=segments,
        codes_per_window=train.codes.shape[2],
        slots=cfg.slots,
        n_classes=n_classes,
        hidden=cfg.hidden,
    )
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train.label, n_classes))
    codes, present = torch.from_numpy(train.codes), torch.from_numpy(train.present)
    window_probs = torch.from_numpy(train.window_probs)
    y = torch.from_numpy(train.label)
    order_slots = torch.arange(cfg.slots)[None]
    f1, au = _figures(head, val)
    best, best_state = (f1, au), copy.deepcopy(head.state_dict())
    best_fig = {"epoch": -1.0, "macro_f1": f1, "auroc": au}
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(order), cfg.batch):
            b = order[s : s + cfg.batch]
            keep = (torch.rand(len(b), cfg.slots, generator=gen) >= cfg.slot_dropout).float()
            keep[:, 0] = 1.0
            if epoch % 2:
                length = torch.randint(1, cfg.slots + 1, (len(b), 1), generator=gen)
                keep = keep * (order_slots < length).float()
            loss = loss_fn(head(codes[b], present[b] * keep, window_probs[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1, au = _figures(head, val)
        bar.set_postfix(val_macro_f1=f"{f1:.3f}")
        if (f1, au) > best:
            best, best_state = (f1, au), copy.deepcopy(head.state_dict())
            best_fig = {"epoch": float(epoch), "macro_f1": f1, "auroc": au}
    head.load_state_dict(best_state)
    head.eval()
    return head, best_fig


def full_probs(head: MemoryHead, h: History, n_windows: int, n_classes: int) -> NDArray[np.float64]:
    """`predict` scattered back onto every window (NaN where the modality is not valid)."""
    out = np.full((n_windows, n_classes), np.nan)
    out[h.rows] = predict(head, h)
    return out


def select_memory_heads(
    heads: dict[str, MemoryHead], val: dict[str, History]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Per modality, the head (among those trained with its labels: m and both) with the best
    macro-F1 on m's validation windows; a zero-shot head only when none was trained with m's
    labels."""
    chosen, report = {}, {}
    for m in MODALITIES:
        own = [k for k in ("both", m) if k in heads]  # "both" first: ties go to more labels
        candidates = own or list(heads)
        scores = {k: _figures(heads[k], val[m]) for k in candidates}
        best = max(candidates, key=lambda k: scores[k])
        chosen[m] = best
        report[m] = {
            "head": best,
            "rule": "best_validation_macro_f1" if own else "zero_shot_fallback",
            "candidates": {k: {"macro_f1": f, "auroc": a} for k, (f, a) in scores.items()},
        }
    return chosen, report
