"""Detector head on frozen codes (CMG.md 3 "head", 7) and the anomaly score convention."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from model.config import CMGConfig

NORMAL = 0  # class index of "normal" (ARCHITECTURE.md class order)


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
    """

    def __init__(self, dim: int = 64, n_classes: int = 6) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, n_classes)

    @classmethod
    def from_config(cls, cfg: CMGConfig) -> DetectorHead:
        """A head sized for `cfg` (D = cfg.encoder.dim, cfg.n_classes outputs)."""
        return cls(cfg.encoder.dim, cfg.n_classes)

    def forward(self, q: Tensor) -> HeadOutput:
        """Args: q (B, T, D) quantised codes. Returns: HeadOutput(logits, segment_scores)."""
        h = F.relu(self.hidden(q))  # (B, T, D)
        logits = self.out(h.amax(dim=1))  # (B, n_classes)
        segment_probs = self.out(h).softmax(dim=-1)  # (B, T, n_classes)
        return HeadOutput(logits, anomaly_score(segment_probs))
