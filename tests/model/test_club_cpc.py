"""CLUB estimator and Cross-CPC on toy data (docs/design/cmg.md 4.6, 4.7)."""

from __future__ import annotations

import math

import torch

from model.club import QNets
from model.cpc import CrossCPC


def _gaussian_pair(
    rho: float, n: int, dim: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(1, n, 1, dim, generator=g)  # (M=1, B, T=1, D)
    y = rho * x + math.sqrt(1.0 - rho**2) * torch.randn(1, n, 1, dim, generator=g)
    return x, y


def _fitted_club_estimate(rho: float, dim: int = 4) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    qnets = QNets(dim, width=16, modalities=1)
    opt = torch.optim.Adam(qnets.parameters(), lr=5e-3)
    for _ in range(60):
        x, y = _gaussian_pair(rho, 256, dim, g)
        qnets.fit(x, y, opt, steps=5)
    with torch.no_grad():
        estimates = []
        for _ in range(10):
            x, y = _gaussian_pair(rho, 512, dim, g)
            perm = torch.randperm(512, generator=g).unsqueeze(0)
            estimates.append(float(qnets.bound(x, y, perm)[0]))
    return sum(estimates) / len(estimates)


def test_club_estimate_grows_with_true_dependence() -> None:
    none, some, strong = (_fitted_club_estimate(r) for r in (0.0, 0.5, 0.9))
    assert abs(none) < 0.3
    assert none < some < strong
    true_strong = -0.5 * math.log(1 - 0.9**2) * 4  # 3.3 nats; CLUB is an upper bound
    assert strong > 0.5 * true_strong


def test_club_bound_gives_no_gradient_to_the_qnets() -> None:
    torch.manual_seed(0)
    qnets = QNets(3, width=8, modalities=2)
    x = torch.randn(2, 5, 4, 3, requires_grad=True)
    y = torch.randn(2, 5, 4, 3, requires_grad=True)
    perm = torch.stack([torch.randperm(5), torch.randperm(5)])
    qnets.bound(x, y, perm).sum().backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is None for p in qnets.parameters())
    assert all(p.requires_grad for p in qnets.parameters())
    assert x.grad is not None and y.grad is not None


def test_qnets_fit_reduces_nll_and_ignores_input_gradients() -> None:
    torch.manual_seed(0)
    qnets = QNets(3, width=8, modalities=2)
    opt = torch.optim.Adam(qnets.parameters(), lr=1e-2)
    x = torch.randn(2, 64, 3, requires_grad=True)
    y = 2.0 * x.detach() + 0.1
    first = qnets.fit(x, y, opt, steps=1)
    last = qnets.fit(x, y, opt, steps=50)
    assert float(last) < float(first)
    assert x.grad is None


def _ar_sequences(
    B: int, T: int, D: int, mix: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    z = [torch.randn(B, D, generator=g)]
    for _ in range(T - 1):
        z.append(0.9 * z[-1] + 0.44 * torch.randn(B, D, generator=g))
    z_c = torch.stack(z, dim=1)  # (B, T, D), AR(1)
    z_v = z_c @ mix + 0.1 * torch.randn(B, T, D, generator=g)  # correlated other modality
    return z_c, z_v


def test_cross_cpc_accuracy_beats_chance_on_correlated_sequences() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    B, T, D = 32, 4, 8
    mix = torch.linalg.qr(torch.randn(D, D, generator=g))[0]  # random rotation
    cpc = CrossCPC(D, self_weight=0.1)
    opt = torch.optim.Adam(cpc.parameters(), lr=3e-3)
    first = float("nan")
    for step in range(300):
        out = cpc(*_ar_sequences(B, T, D, mix, g))
        first = float(out.loss.detach()) if step == 0 else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        accs = [cpc(*_ar_sequences(B, T, D, mix, g), t=t) for t in (1, 2) for _ in range(5)]
    chance = 1.0 / B
    assert float(out.loss.detach()) < first
    for name in ("acc_c2v", "acc_v2c"):  # the self terms (weight 0.1) learn more slowly
        mean_acc = sum(float(getattr(a, name)) for a in accs) / len(accs)
        assert mean_acc > 5 * chance, name


def test_cross_cpc_rejects_bad_step() -> None:
    cpc = CrossCPC(4)
    z = torch.randn(2, 4, 4)
    try:
        cpc(z, z, t=3)
    except ValueError as err:
        assert "t must be" in str(err)
    else:
        msg = "t = T - 1 has no next step and must be rejected"
        raise AssertionError(msg)
