"""Codebook E updated by EMA only: MM-EMA, Laplace smoothing, dead-code reset (docs/design/cmg.md
4.2, 4.4).

All state is buffers (E, W, N, idle counters), so it travels in `state_dict` and into the
export. `quantize` is the pure lookup used in evaluation and export; the update methods are
called by `CMG.forward` in training mode only, under `torch.no_grad`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model._util import sq_distances
from model.config import CodebookConfig

RESET_NOISE = 1.0 / 1024.0  # docs/design/cmg.md 4.4: donor + Uniform(-1/1024, 1/1024)


class Quantized(NamedTuple):
    """Nearest-code assignment of segment embeddings."""

    codes: Tensor  # (B, T) int64 in [0, K)
    vectors: Tensor  # (B, T, D): E[codes] (straight-through z + sg(E[codes] - z) in training)
    distance: Tensor  # (B, T) squared distance to the chosen code


class EMAUpdate(NamedTuple):
    """One modality's contribution to an EMA step (all detached)."""

    codes: Tensor  # (B, T) int64, the modality's own assignment
    own: Tensor  # (B, T, D) the modality's z
    partner: Tensor  # (B, T, D) the paired vector (the other modality's z, or `own`)


class Codebook(nn.Module):
    """K code vectors of size D with EMA statistics.

    Buffers:
        embed: (K, D) E, the code vectors.
        weight: (K, D) W, EMA of assigned-vector sums.
        count: (K,) N, EMA of assignment counts (Laplace-smoothed).
        idle: (U, K) int64 training steps since each user (modality) last chose each code.
        initialised: () bool; False until `init_from` when cfg.init == "data".
    """

    embed: Tensor
    weight: Tensor
    count: Tensor
    idle: Tensor
    initialised: Tensor

    def __init__(self, cfg: CodebookConfig, users: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        K, D = cfg.size, cfg.dim
        # U(+-1/K), the code's init (docs/design/cmg.md 5 #13)
        embed = (torch.rand(K, D) * 2.0 - 1.0) / K
        self.register_buffer("embed", embed)
        self.register_buffer("weight", embed.clone())
        self.register_buffer("count", torch.zeros(K))
        self.register_buffer("idle", torch.zeros(users, K, dtype=torch.int64))
        self.register_buffer("initialised", torch.tensor(cfg.init == "uniform"))

    # --- lookup (eval path, never updates buffers) ------------------------------------------
    def quantize(self, z: Tensor) -> Quantized:
        """Nearest code for each vector.

        Args:
            z: (B, T, D) embeddings.

        Returns:
            Quantized(codes (B, T) int64, vectors (B, T, D) = E[codes], distance (B, T)).
        """
        d = sq_distances(z.detach(), self.embed)  # (B, T, K)
        codes = d.argmin(dim=-1)  # (B, T)
        distance = d.gather(-1, codes.unsqueeze(-1)).squeeze(-1).clamp(min=0.0)  # (B, T)
        return Quantized(codes, self.embed[codes], distance)

    # --- updates (training only, no_grad) ---------------------------------------------------
    @torch.no_grad()
    def init_from(self, z: Tensor) -> None:
        """Data initialisation (docs/design/cmg.md 5 #13): E = K random encoder outputs, W = E, N =
        1.

        Args:
            z: (..., D) encoder outputs; sampled without replacement when there are >= K.
        """
        flat = z.detach().reshape(-1, z.shape[-1]).to(self.embed.dtype)  # (n, D)
        K = self.cfg.size
        if flat.shape[0] >= K:
            pick = torch.randperm(flat.shape[0], device=flat.device)[:K]
        else:
            pick = torch.randint(flat.shape[0], (K,), device=flat.device)
        self.embed.copy_(flat[pick])
        self.weight.copy_(self.embed)
        self.count.fill_(1.0)
        self.idle.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def ema_update(self, updates: list[EMAUpdate]) -> None:
        """EMA step from one or two modalities, then E = W / N.

        Released form (docs/design/cmg.md 4.2): one sequential update per entry, each decaying N and
        W, with W fed 0.5 (own + partner). With `cfg.fused_update` (paper Eq. 7): one decay with the
        counts and sums of all entries together.
        """
        if self.cfg.fused_update:
            counts = torch.zeros_like(self.count)
            sums = torch.zeros_like(self.weight)
            for u in updates:
                n_k, s_k = self._statistics(u)
                counts += n_k
                sums += s_k
            self._decay(counts, sums)
        else:
            for u in updates:  # docs/design/cmg.md 4.2: sequential, N and W decay once per modality
                self._decay(*self._statistics(u))
        self.embed.copy_(self.weight / self.count.unsqueeze(-1))

    def _statistics(self, u: EMAUpdate) -> tuple[Tensor, Tensor]:
        """(K,) assignment counts and (K, D) sums of 0.5 (own + partner) for one update."""
        K, D = self.cfg.size, self.cfg.dim
        idx = u.codes.reshape(-1)  # (B*T,)
        vec = 0.5 * (u.own.reshape(-1, D) + u.partner.reshape(-1, D))  # (B*T, D)
        counts = torch.bincount(idx, minlength=K).to(self.count.dtype)  # (K,) = H.sum(0)
        sums = torch.zeros_like(self.weight).index_add_(0, idx, vec.to(self.weight.dtype))
        return counts, sums  # sums = 0.5 (H^T own + H^T partner)

    def _decay(self, counts: Tensor, sums: Tensor) -> None:
        g, eps, K = self.cfg.decay, self.cfg.eps, self.cfg.size
        self.count.mul_(g).add_(counts, alpha=1.0 - g)
        n = self.count.sum()
        self.count.copy_((self.count + eps) / (n + K * eps) * n)  # Laplace smoothing
        self.weight.mul_(g).add_(sums, alpha=1.0 - g)

    @torch.no_grad()
    def tick(self, user: int, codes: Tensor) -> None:
        """Count one training step for `user`; codes it chose become 0 steps idle.

        Args:
            user: row of `idle` (0 = current, 1 = camera for a shared codebook).
            codes: (B, T) int64 codes the user chose this step.
        """
        row = self.idle[user]
        row.add_(1)
        row.index_fill_(0, codes.reshape(-1), 0)

    @torch.no_grad()
    def reset_dead(self) -> int:
        """Vectorised dead-code reset (docs/design/cmg.md 4.4, with W and N reset too [ours]).

        A code is dead when no user chose it for more than `dead_after` steps; donors are
        codes some user chose within `donor_within` steps. Dead codes become a random donor
        plus Uniform(+-1/1024) noise, with N = 1, W = E and idle = 0.

        Returns:
            Number of codes reset.
        """
        idle = self.idle.amin(dim=0)  # (K,) steps since ANY user chose the code
        dead = torch.nonzero(idle > self.cfg.dead_after).flatten()
        donors = torch.nonzero(idle < self.cfg.donor_within).flatten()
        n_dead = int(dead.numel())
        if n_dead == 0 or donors.numel() == 0:
            return 0
        pick = donors[torch.randint(donors.numel(), (n_dead,), device=donors.device)]
        noise = torch.rand(n_dead, self.cfg.dim, device=self.embed.device) * 2.0 - 1.0
        self.embed[dead] = self.embed[pick] + noise * RESET_NOISE
        self.count[dead] = 1.0
        self.weight[dead] = self.embed[dead] * self.count[dead].unsqueeze(-1)
        self.idle[:, dead] = 0
        return n_dead

    def active(self, user: int) -> Tensor:
        """Number of codes `user` chose within the last `donor_within` steps (0-dim int64)."""
        return (self.idle[user] < self.cfg.donor_within).sum()
