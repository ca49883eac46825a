"""Label-free code diagnostics of one batch (docs/design/cmg.md 9)."""

from __future__ import annotations

import torch
from torch import Tensor


def perplexity(codes: Tensor, size: int) -> Tensor:
    """exp of the entropy of the code histogram, as the CMG code computes it.

    Args:
        codes: (B, T) int64 code indices.
        size: K.

    Returns:
        0-dim float tensor in [1, K].
    """
    p = torch.bincount(codes.flatten(), minlength=size).float() / codes.numel()  # (K,)
    return torch.exp(-(p * torch.log(p + 1e-10)).sum())


@torch.no_grad()
def code_diagnostics(i_c: Tensor, i_v: Tensor, size: int) -> dict[str, Tensor]:
    """Usage and agreement of the two modalities' codes.

    Args:
        i_c: (B, T) int64 current codes; i_v: (B, T) int64 camera codes.
        size: K.

    Returns:
        0-dim tensors: perplexity_c/_v; step_agreement P(i_c[b, t] = i_v[b, t]);
        equal_num_rate, the share of windows whose most frequent code is the same in both
        modalities (the code's `equal_num` / B); both_used_share, the share of codes used in
        this batch that both modalities used.
    """
    used_c = torch.bincount(i_c.flatten(), minlength=size) > 0  # (K,)
    used_v = torch.bincount(i_v.flatten(), minlength=size) > 0
    n_any = (used_c | used_v).sum().clamp(min=1)
    return {
        "perplexity_c": perplexity(i_c, size),
        "perplexity_v": perplexity(i_v, size),
        "step_agreement": (i_c == i_v).float().mean(),
        "equal_num_rate": (i_c.mode(dim=1).values == i_v.mode(dim=1).values).float().mean(),
        "both_used_share": (used_c & used_v).sum() / n_any,
    }
