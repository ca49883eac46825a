"""CLUB upper bound on I(code; specific features), sampled form (docs/design/cmg.md 4.6, 5 #5-#6).

Cheng et al. 2020, "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information".
A variational q-net Q(y | x) = N(mu(x), diag exp(logvar(x))) is fitted by maximum likelihood
on detached pairs with its own optimiser; the bound then uses Q as a fixed function, so its
gradient reaches x (the straight-through code) and y (the specific encoder) only.

The q-nets of all modalities live in one module with stacked weights: M modalities x
{mu, logvar} 4-layer MLPs run as one batched matmul per layer. Each (modality, branch) has
its own parameters, exactly as separate MLPs; stacking only saves CPU dispatch time in the
five fitting steps per batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model._util import frozen


class QNets(nn.Module):
    """Q_m for M modalities: x (M, N, D) -> mu, logvar (M, N, D).

    Per modality, two 4-layer MLPs of the given width with ReLU between layers; the logvar branch
    ends in tanh (docs/design/cmg.md 3).
    """

    def __init__(self, dim: int, width: int, modalities: int = 2, layers: int = 4) -> None:
        super().__init__()
        self.modalities = modalities
        sizes = [dim] + [width] * (layers - 1) + [dim]
        G = 2 * modalities  # (modality, branch) groups: branch 0 = mu, 1 = logvar
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default range
            self.weights.append(nn.Parameter(torch.empty(G, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(G, 1, n_out).uniform_(-bound, bound)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Args: x (M, N, D). Returns: mu (M, N, D), logvar (M, N, D) in (-1, 1)."""
        M, N, D = x.shape
        h = x.unsqueeze(1).expand(M, 2, N, D).reshape(2 * M, N, D)  # (2M, N, D)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)  # (2M, N, out)
            if i < last:
                h = torch.relu(h)
        h = h.reshape(M, 2, N, -1)
        return h[:, 0], torch.tanh(h[:, 1])

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Per modality, mean over samples of sum_d [-(mu - y)^2 / exp(logvar) - logvar] / 2.

        Args:
            x: (M, N, D) conditioning inputs (codes), one row block per modality.
            y: (M, N, D) targets (specific features).

        Returns:
            (M,) log-likelihoods (docs/design/cmg.md 4.6); the q-nets are fitted on their negative
            sum.
        """
        mu, logvar = self(x)
        ll = (-((mu - y) ** 2) / logvar.exp() - logvar).sum(-1) / 2.0  # (M, N)
        return ll.mean(dim=-1)

    def bound(self, x: Tensor, y: Tensor, perm: Tensor) -> Tensor:
        """Sampled CLUB estimate with one shuffled negative per window (docs/design/cmg.md 4.6).

        The q-net parameters get no gradient from this term (they are not in the main
        optimiser).

        Args:
            x: (M, B, T, D) codes (straight-through, carry gradient to the encoders).
            y: (M, B, T, D) specific features.
            perm: (M, B) int64; row m chooses each window's negative partner for modality m.

        Returns:
            (M,) estimates: mean_b sum_d (pos - neg) / 2 per modality.
        """
        M, B, T, D = x.shape
        with frozen(self):
            mu, logvar = self(x.reshape(M, B * T, D))
        mu, logvar = mu.reshape(M, B, T, D), logvar.reshape(M, B, T, D)
        var = logvar.mean(dim=2).exp()  # (M, B, D)
        negatives = torch.gather(y, 1, perm.view(M, B, 1, 1).expand(M, B, T, D))  # y[m, perm]
        pos = -((mu - y) ** 2).mean(dim=2) / var  # (M, B, D)
        neg = -((mu - negatives) ** 2).mean(dim=2) / var  # (M, B, D)
        return (pos - neg).sum(dim=-1).mean(dim=-1) / 2.0

    def fit(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, steps: int) -> Tensor:
        """Fit by maximum likelihood on detached pairs (docs/design/cmg.md 4.6: 5 Adam steps, lr
        1e-3).

        Args:
            x: (M, ..., D) codes; y: (M, ..., D) specific features (both detached here).
            optimizer: over this module's parameters only.
            steps: number of optimiser steps.

        Returns:
            0-dim detached negative log-likelihood summed over modalities, at the last step
            (0 if steps == 0).
        """
        M, D = x.shape[0], x.shape[-1]
        x, y = x.detach().reshape(M, -1, D), y.detach().reshape(M, -1, D)
        nll = x.new_zeros(())
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = -self.log_likelihood(x, y).sum()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                nll = loss.detach()
        optimizer.zero_grad(set_to_none=True)  # leave no q-net gradients behind
        return nll
