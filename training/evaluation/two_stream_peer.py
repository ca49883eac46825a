"""Peer baseline in the spirit of FmFormer (Wu et al., TCSVT 2025): a supervised two-stream
model with cross-attention between current and camera tokens. It needs BOTH modalities, and
labels of both, at training and test time: the strongest supervised comparison for `fused`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.features import camera_features, current_features
from simulator.config import CLASS_NAMES
from training.data import Windows
from training.evaluation.metrics import macro_f1, score_setting, threshold_for_false_alarm_rate
from training.train_head import class_weights


class TwoStreamFusion(nn.Module):
    """Current segments and camera frames as tokens; each stream attends to the other."""

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int = 64, n_classes: int = 6, segments: int = 8) -> None:
        super().__init__()
        self.cur_in = nn.Sequential(nn.LayerNorm(28), nn.Linear(28, dim))
        self.cam_cnn = nn.Sequential(
            nn.Conv2d(6, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.pos = nn.Parameter(torch.zeros(2, segments, dim))
        self.cur_to_cam = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.cam_to_cur = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm = nn.LayerNorm(2 * dim)
        self.out = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, n_classes))
        self.register_buffer("mean", torch.full((3,), 0.3))
        self.register_buffer("std", torch.full((3,), 0.2))

    def forward(self, x_c: Tensor, baseline: Tensor, x_v: Tensor) -> Tensor:
        """x_c (B,T,S,3) A, baseline (B,3), x_v (B,T,H,W,3) uint8 -> logits (B, n_classes)."""
        B, T = x_c.shape[:2]
        cur = self.cur_in(current_features(x_c, baseline)) + self.pos[0, :T]  # (B,T,D)
        frames = camera_features(x_v, self.mean, self.std)  # (B,T,6,H,W)
        cam = self.cam_cnn(frames.flatten(0, 1)).flatten(1).view(B, T, -1) + self.pos[1, :T]
        a, _ = self.cur_to_cam(cur, cam, cam)  # current queries attend to camera
        b, _ = self.cam_to_cur(cam, cur, cur)
        h = self.norm(torch.cat([cur + a, cam + b], -1)).max(1).values  # (B, 2D)
        return self.out(h)


def _probs(model: TwoStreamFusion, w: Windows, idx: NDArray[np.int64]) -> NDArray[np.float64]:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, idx.size, 256):
            b = idx[s : s + 256]
            x = (torch.from_numpy(w.x_c[b]), torch.from_numpy(w.baseline[b]))
            out.append(torch.softmax(model(*x, torch.from_numpy(w.camera(b))), -1))
    model.train()
    if not out:
        return np.zeros((0, len(CLASS_NAMES)))
    return torch.cat(out).double().numpy()


def train_fusion(
    train: Windows,
    val: Windows,
    *,
    steps: int = 1500,
    batch: int = 64,
    seed: int = 0,
    target_far: float = 0.01,
    progress: bool = True,
) -> tuple[TwoStreamFusion, float]:
    """Train on windows with both modalities valid; keep the best validation checkpoint.

    Returns:
        The model and its threshold at `target_far` false alarms on normal validation windows.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr = np.flatnonzero(train.valid_cur & train.valid_cam)
    va = np.flatnonzero(val.valid_cur & val.valid_cam)
    model = TwoStreamFusion()
    frames = train.frame_bank[rng.choice(len(train.frame_bank), 2048)].reshape(-1, 3) / 255.0
    with torch.no_grad():
        model.mean.copy_(torch.tensor(frames.mean(0), dtype=torch.float32))
        model.std.copy_(torch.tensor(np.maximum(frames.std(0), 1e-3), dtype=torch.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train.label[tr], len(CLASS_NAMES)))
    best, best_state = -1.0, copy.deepcopy(model.state_dict())
    for step in tqdm(range(1, steps + 1), desc="fusion baseline", disable=not progress):
        b = rng.choice(tr, size=batch, replace=False)
        x = (torch.from_numpy(train.x_c[b]), torch.from_numpy(train.baseline[b]))
        logits = model(*x, torch.from_numpy(train.camera(b)))
        loss = loss_fn(logits, torch.from_numpy(train.label[b]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps:
            p = _probs(model, val, va)
            f1 = macro_f1(val.label[va], p.argmax(1), CLASS_NAMES)
            if f1 > best:
                best, best_state = f1, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    p = _probs(model, val, va)
    thr = threshold_for_false_alarm_rate(1.0 - p[val.label[va] == 0, 0], target_far)
    return model, thr


def fusion_settings(
    data: Any,
    test: Windows,
    events: dict[str, Any],
    *,
    seed: int,
    target_far: float,
    progress: bool,
) -> dict[str, Any]:
    """`baseline_fusion_fused`: the two-stream model on test windows with both modalities."""
    model, thr = train_fusion(
        data.train, data.val, seed=seed, target_far=target_far, progress=progress
    )
    valid = test.valid_cur & test.valid_cam
    probs = np.zeros((len(test), len(CLASS_NAMES)))
    idx = np.flatnonzero(valid)
    probs[idx] = _probs(model, test, idx)
    return {"baseline_fusion_fused": score_setting("fused", test, probs, valid, thr, events)}
