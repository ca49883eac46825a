"""Cross-CPC on pre-quantisation features, as released (docs/design/cmg.md 4.7, 5 #7).

Each modality's context (a 2-layer LSTM over z up to step t) predicts step t + 1 of the other
modality (weight 1) and of itself (weight `self_weight`). K = 1 step ahead, one random t per
batch in 1..T-2; the negatives are the other windows of the batch at the same step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class CPCOutput(NamedTuple):
    """Cross-CPC loss and prediction accuracies (chance is 1/B)."""

    loss: Tensor  # 0-dim
    acc_c2v: Tensor  # 0-dim: current context picks the right camera step
    acc_v2c: Tensor
    acc_c2c: Tensor
    acc_v2v: Tensor


def _nce(target: Tensor, pred: Tensor) -> Tensor:
    """sum_i log_softmax(target @ pred.T, over columns)[i, i] (docs/design/cmg.md 4.7).

    Args:
        target: (B, D) true next steps.
        pred: (B, D) predictions; row i of each belongs to window i.

    Returns:
        0-dim tensor (a sum over windows, not a mean).
    """
    return (target @ pred.T).log_softmax(dim=1).diagonal().sum()


def _accuracy(target: Tensor, pred: Tensor) -> Tensor:
    """Fraction of predictions j whose best-scoring target i is j itself.

    Args:
        target: (B, D); pred: (B, D).

    Returns:
        0-dim float tensor in [0, 1].
    """
    with torch.no_grad():
        best = (target @ pred.T).argmax(dim=0)  # (B,) over targets, per prediction
        return (best == torch.arange(target.shape[0], device=target.device)).float().mean()


class CrossCPC(nn.Module):
    """LSTM_c, LSTM_v (2 layers, hidden D) and one Linear(D, D) predictor per modality."""

    def __init__(self, dim: int, self_weight: float = 0.1) -> None:
        super().__init__()
        self.self_weight = self_weight
        self.lstm_c = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.lstm_v = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.pred_c = nn.Linear(dim, dim)  # K = 1: one predictor per modality and step
        self.pred_v = nn.Linear(dim, dim)

    def forward(self, z_c: Tensor, z_v: Tensor, t: int | None = None) -> CPCOutput:
        """Cross-CPC loss at one step.

        Args:
            z_c: (B, T, D) current semantic features, before quantisation.
            z_v: (B, T, D) camera semantic features, before quantisation.
            t: context step in [1, T-2]; drawn uniformly (torch RNG) when None.

        Returns:
            CPCOutput(loss, acc_c2v, acc_v2c, acc_c2c, acc_v2v).
        """
        B, T, _ = z_c.shape
        if t is None:
            # docs/design/cmg.md 4.7: t in 1..T-K-1, K = 1
            t = int(torch.randint(1, T - 1, ()).item())
        if not 1 <= t <= T - 2:
            msg = f"t must be in [1, {T - 2}], got {t}"
            raise ValueError(msg)
        ctx_c = self.lstm_c(z_c[:, : t + 1])[0][:, t]  # (B, D), causal: steps 0..t
        ctx_v = self.lstm_v(z_v[:, : t + 1])[0][:, t]  # (B, D)
        p_c, p_v = self.pred_c(ctx_c), self.pred_v(ctx_v)  # predictions of step t + 1
        y_c, y_v = z_c[:, t + 1], z_v[:, t + 1]  # (B, D)
        w = self.self_weight
        nce = _nce(y_v, p_c) + _nce(y_c, p_v) + w * _nce(y_c, p_c) + w * _nce(y_v, p_v)
        return CPCOutput(
            loss=-nce / B,  # / (B K), K = 1
            acc_c2v=_accuracy(y_v, p_c),
            acc_v2c=_accuracy(y_c, p_v),
            acc_c2c=_accuracy(y_c, p_c),
            acc_v2v=_accuracy(y_v, p_v),
        )
