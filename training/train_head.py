"""Frozen codes -> detector head (docs/design/cmg.md 7.3-7.5): encode windows once, train a head on
ONE modality's codes with inverse-sqrt class weights, keep the epoch that is best on the validation
split of that same modality.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from model.cmg import CMG
from model.heads import DetectorHead
from simulator.config import CLASS_NAMES
from training.data import MODALITIES, Windows
from training.evaluation.metrics import auroc, macro_f1


class Encoded(NamedTuple):
    """Quantized windows of one modality (eval mode, no EMA)."""

    codes: NDArray[np.int64]  # (W, T), or (W, T*G) with code_groups G
    q: Tensor  # (W, T, D) float32, codebook vectors


@torch.no_grad()
def encode_windows(
    model: CMG,
    w: Windows,
    modality: str,
    *,
    batch: int = 256,
    index: NDArray[np.int64] | None = None,
) -> Encoded:
    """Encode and quantize windows of one modality with the frozen model."""
    model.eval()
    idx = np.arange(len(w)) if index is None else index
    codes, vectors = [], []
    for s in range(0, idx.size, batch):
        b = idx[s : s + batch]
        if modality == "current":
            z = model.encode("current", torch.from_numpy(w.x_c[b]), torch.from_numpy(w.baseline[b]))
        else:
            z = model.encode("camera", torch.from_numpy(w.camera(b)))
        quant = model.quantize(modality, z)
        codes.append(quant.codes.numpy())
        vectors.append(quant.vectors.detach())
    if not codes:
        cfg = model.cfg
        codes_per_window = cfg.segments * cfg.code_groups
        empty = torch.zeros(0, cfg.segments, cfg.encoder.dim)
        return Encoded(np.zeros((0, codes_per_window), np.int64), empty)
    return Encoded(np.concatenate(codes), torch.cat(vectors))


def encode_all(model: CMG, w: Windows) -> dict[str, Encoded]:
    """Codes of every window in both modalities (encode once, apply many heads)."""
    return {m: encode_windows(model, w, m) for m in MODALITIES}


@torch.no_grad()
def predict(head: DetectorHead, q: Tensor, *, batch: int = 1024) -> NDArray[np.float64]:
    """(W, n_classes) probabilities."""
    head.eval()
    out = [torch.softmax(head(q[s : s + batch]).logits, -1) for s in range(0, q.shape[0], batch)]
    if not out:
        return np.zeros((0, len(CLASS_NAMES)))
    return torch.cat(out).double().numpy()


def class_weights(labels: NDArray[np.int64], n_classes: int) -> Tensor:
    """Inverse square-root frequency weights, mean 1 over present classes."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


def train_head(
    q_train: Tensor,
    y_train: NDArray[np.int64],
    q_val: Tensor,
    y_val: NDArray[np.int64],
    *,
    dim: int,
    n_classes: int,
    pool: str = "max",
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
) -> tuple[DetectorHead, dict[str, float]]:
    """Train a head; keep the epoch with the best validation macro-F1 (AUROC breaks ties).

    Returns:
        The head at its best epoch and that epoch's validation figures.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = DetectorHead(dim=dim, n_classes=n_classes, pool=pool)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_train, n_classes))
    y = torch.from_numpy(y_train.astype(np.int64))
    present = [CLASS_NAMES[i] for i in np.unique(np.concatenate([y_train, y_val]))]
    best: tuple[float, float] = (-1.0, -1.0)
    best_state = copy.deepcopy(head.state_dict())
    best_figures: dict[str, float] = {"epoch": 0.0, "macro_f1": 0.0, "auroc": 0.0}
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(q_train.shape[0], generator=gen)
        for s in range(0, order.numel(), batch):
            b = order[s : s + batch]
            loss = loss_fn(head(q_train[b]).logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        probs = predict(head, q_val)
        f1 = macro_f1(y_val, probs.argmax(1), present)
        au = auroc(y_val, 1.0 - probs[:, 0])
        key = (f1, 0.0 if np.isnan(au) else au)
        if key > best:
            best = key
            best_state = copy.deepcopy(head.state_dict())
            best_figures = {"epoch": float(epoch), "macro_f1": f1, "auroc": au}
    head.load_state_dict(best_state)
    head.eval()
    return head, best_figures
