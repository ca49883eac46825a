"""Detector head on frozen codes (docs/design/cmg.md 3 "head", 7) and the anomaly score
convention."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import HEAD_POOLS, CMGConfig

NORMAL = 0  # class index of "normal" (docs/design/architecture.md class order)


class HeadOutput(NamedTuple):
    """Window logits and per-segment anomaly scores (for explanation)."""

    logits: Tensor  # (B, n_classes)
    segment_scores: Tensor  # (B, T) in [0, 1], higher = more anomalous


def anomaly_score(probs: Tensor) -> Tensor:
    """1 - p(normal); higher is more anomalous.

    Args:
        probs: (..., n_classes) class probabilities, index 0 = "normal".

    Returns:
        (...) scores in [0, 1].
    """
    return 1.0 - probs[..., NORMAL]


class DetectorHead(nn.Module):
    """q (B, T, D) -> Linear(D, D) + ReLU -> max over T -> Linear(D, n_classes).

    As CMG's `Semantic_Decoder`. The per-segment scores apply the same final Linear to each
    segment's hidden vector before the max, i.e. what the head would say about that segment
    alone; they explain the window score and do not enter the window logits.

    With pool "meanmax" [ours] the final Linear reads mean ‖ max over T (2D inputs); a
    segment's own score then reads h_t ‖ h_t (a window made of that segment alone).
    """

    def __init__(self, dim: int = 64, n_classes: int = 6, pool: str = "max") -> None:
        super().__init__()
        if pool not in HEAD_POOLS:
            msg = f"pool must be one of {HEAD_POOLS}, got {pool!r}"
            raise ValueError(msg)
        self.pool = pool
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim * (2 if pool == "meanmax" else 1), n_classes)

    @classmethod
    def from_config(cls, cfg: CMGConfig) -> DetectorHead:
        """A head sized for `cfg` (D = cfg.encoder.dim, cfg.n_classes outputs)."""
        return cls(cfg.encoder.dim, cfg.n_classes, cfg.head_pool)

    def forward(self, q: Tensor) -> HeadOutput:
        """Args: q (B, T, D) quantised codes. Returns: HeadOutput(logits, segment_scores)."""
        h = F.relu(self.hidden(q))  # (B, T, D)
        if self.pool == "meanmax":
            logits = self.out(torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1))
            segment_probs = self.out(torch.cat([h, h], dim=-1)).softmax(dim=-1)
        else:
            logits = self.out(h.amax(dim=1))  # (B, n_classes)
            segment_probs = self.out(h).softmax(dim=-1)  # (B, T, n_classes)
        return HeadOutput(logits, anomaly_score(segment_probs))
