"""Contrastive alignment terms: CMCM (docs/design/cmg.md 4.5) and MICU-style fine/coarse InfoNCE
(docs/design/cmg.md 11).

CMCM: Liu et al. 2021, "Cross-Modal Discrete Representation Learning". InfoNCE as in the
`info-nce-pytorch` package used by the MICU code: cosine similarity over temperature, the
positive on the diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from model._util import sq_distances

CMCM_SQRT_EPS = 1e-8  # docs/design/cmg.md 10.9: sqrt needs an epsilon at zero distance


def log_code_histogram(z: Tensor, codebook: Tensor) -> Tensor:
    """log of the soft code histogram, log mean_t softmax_k(-sqrt(d + eps)) (docs/design/cmg.md
    4.5).

    Computed as logsumexp over T of log-softmax, minus log T, so it never takes log(0)
    (docs/design/cmg.md 10.9). Gradient reaches z, not the codebook (a buffer).

    Args:
        z: (B, T, D) semantic features.
        codebook: (K, D).

    Returns:
        (B, K) log-probabilities; exp sums to 1 over K.
    """
    d = sq_distances(z, codebook).clamp(min=0.0)  # (B, T, K)
    logp = (-(d + CMCM_SQRT_EPS).sqrt()).log_softmax(dim=-1)  # (B, T, K)
    return torch.logsumexp(logp, dim=1) - math.log(z.shape[1])  # (B, K)


def cmcm_loss(z_c: Tensor, z_v: Tensor, codebook_c: Tensor, codebook_v: Tensor) -> Tensor:
    """Cross-modal code matching (docs/design/cmg.md 4.5): paired windows have matching histograms.

    Args:
        z_c: (B, T, D); z_v: (B, T, D).
        codebook_c: (K, D) codes for current; codebook_v: (K, D) for camera (the same
            tensor when the codebook is shared).

    Returns:
        0-dim cross-entropy of the rows of S (B, B), targets on the diagonal.
    """
    log_c = log_code_histogram(z_c, codebook_c)  # (B, K)
    log_v = log_code_histogram(z_v, codebook_v)  # (B, K)
    S = log_c.exp() @ log_v.T + log_v.exp() @ log_c.T  # (B, B)
    return F.cross_entropy(S, torch.arange(S.shape[0], device=S.device))


def info_nce(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """InfoNCE with cosine similarity; sample i of `key` is the positive of query i.

    Args:
        query: (..., N, D); key: (..., N, D). Leading axes are independent groups.
        temperature: logits are cosine / temperature.

    Returns:
        0-dim mean cross-entropy over all groups and samples.
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    logits = q @ k.transpose(-2, -1) / temperature  # (..., N, N)
    N = logits.shape[-1]
    labels = torch.arange(N, device=logits.device).expand(logits.shape[:-1])  # (..., N)
    return F.cross_entropy(logits.reshape(-1, N), labels.reshape(-1))


def micu_infonce(
    z_c: Tensor, z_v: Tensor, *, temperature: float = 0.1, mask: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Masked fine + coarse multimodal InfoNCE (FCMI) of the MICU-style ablation
    (docs/design/cmg.md 11).

    One Bernoulli mask (drop probability `mask`) zeroes time steps of both modalities; the
    masked features of each modality are contrasted with the unmasked features of every
    modality, its own included. Fine: within a window, the T steps are the samples. Coarse:
    across the batch, on time-averaged features.

    Args:
        z_c: (B, T, D); z_v: (B, T, D).
        temperature: InfoNCE temperature.
        mask: probability of dropping a time step.

    Returns:
        (fine, coarse), each a 0-dim sum over the four (query, key) modality pairs.
    """
    B, T, _ = z_c.shape
    keep = (torch.rand(B, T, 1, device=z_c.device) >= mask).to(z_c.dtype)  # (B, T, 1)
    queries = (z_c * keep, z_v * keep)
    keys = (z_c, z_v)
    fine = torch.stack([info_nce(q, k, temperature) for q in queries for k in keys]).sum()
    coarse = torch.stack(
        [info_nce(q.mean(dim=1), k.mean(dim=1), temperature) for q in queries for k in keys]
    ).sum()
    return fine, coarse
