"""Codebook invariants: lookup, EMA and MM-EMA, dead-code reset, data init (docs/design/cmg.md 4.2,
4.4)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from model.cmg import build_cmg
from model.codebook import Codebook, EMAUpdate
from model.config import CMGConfig, CodebookConfig
from tests.model.factories import Batch, make_tiny_cfg


def _book(**changes: object) -> Codebook:
    cfg = CodebookConfig(size=3, dim=2, decay=0.5, **changes)  # type: ignore[arg-type]
    book = Codebook(cfg, users=2)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]))
    book.weight.copy_(book.embed)
    book.count.fill_(1.0)
    return book


def _updates() -> list[EMAUpdate]:
    a_c = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])  # (B=1, T=2, D=2)
    a_v = torch.tensor([[[5.0, 5.0], [7.0, 7.0]]])
    i_c, i_v = torch.tensor([[0, 0]]), torch.tensor([[1, 0]])
    return [EMAUpdate(i_c, a_c, a_v), EMAUpdate(i_v, a_v, a_c)]


def test_eval_lookup_invariants(tiny_cfg: CMGConfig, batch: Batch) -> None:
    torch.manual_seed(0)
    model = build_cmg(tiny_cfg)
    model.train()(*batch)  # data-initialise and update once
    model.eval()
    K = tiny_cfg.codebook.size
    for modality, x in (("current", batch.x_c), ("camera", batch.x_v)):
        z = model.encode(modality, x, batch.baseline)
        quant = model.quantize(modality, z)
        book = model.codebook_for(modality)
        assert quant.codes.dtype == torch.int64 and quant.codes.shape == z.shape[:2]
        assert int(quant.codes.min()) >= 0 and int(quant.codes.max()) < K
        torch.testing.assert_close(book[quant.codes], quant.vectors)
        exact = ((z[:, :, None, :] - book) ** 2).sum(-1)  # (B, T, K)
        torch.testing.assert_close(quant.distance, exact.amin(-1), atol=1e-4, rtol=1e-4)


def test_modalities_share_one_buffer_unless_ablated(tiny_cfg: CMGConfig) -> None:
    shared = build_cmg(tiny_cfg)
    assert shared.codebook_for("current") is shared.codebook_for("camera")
    assert [n for n, _ in shared.named_buffers() if n.endswith("embed")] == [
        "codebooks.shared.embed"
    ]
    separate = build_cmg(replace(tiny_cfg, shared_codebook=False))
    assert separate.codebook_for("current") is not separate.codebook_for("camera")
    assert separate.codebook_for("current").shape == (tiny_cfg.codebook.size, 8)


def test_released_mm_ema_matches_hand_computation() -> None:
    book = _book()
    book.ema_update(_updates())
    # current step: N = [1.5, .5, .5], W0 = .5*0 + .5*(.5*(1+5) + .5*(3+7)) = 4
    # camera step:  N = [1.25, .75, .25], W = [4.5, 4, 5]  (N and W decay twice)
    torch.testing.assert_close(book.count, torch.tensor([1.25, 0.75, 0.25]), atol=1e-4, rtol=0)
    torch.testing.assert_close(book.weight[:, 0], torch.tensor([4.5, 4.0, 5.0]))
    expected = torch.tensor([4.5 / 1.25, 4.0 / 0.75, 5.0 / 0.25])
    torch.testing.assert_close(book.embed[:, 0], expected, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(book.embed[:, 0], book.embed[:, 1])


def test_fused_paper_update_matches_hand_computation() -> None:
    book = _book(fused_update=True)
    book.ema_update(_updates())
    # one decay: N = .5*1 + .5*(H_c + H_v) = [2, 1, .5]; W = .5*W + .5*[8+5, 3, 0]
    torch.testing.assert_close(book.count, torch.tensor([2.0, 1.0, 0.5]), atol=1e-4, rtol=0)
    torch.testing.assert_close(book.weight[:, 0], torch.tensor([6.5, 6.5, 10.0]))
    torch.testing.assert_close(
        book.embed[:, 0], torch.tensor([3.25, 6.5, 20.0]), atol=1e-3, rtol=1e-4
    )


def test_laplace_smoothing_keeps_total_count() -> None:
    book = _book(eps=0.1)
    book.ema_update(_updates()[:1])
    assert abs(float(book.count.sum()) - 2.5) < 1e-5
    assert float(book.count.min()) > 0.5  # the unused codes are lifted, never zero


def test_mm_ema_pulls_a_code_toward_the_paired_vector() -> None:
    own_only, paired = _book(), _book()
    z_c, z_v = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[9.0, 9.0]]])
    codes = torch.tensor([[0]])
    own_only.ema_update([EMAUpdate(codes, z_c, z_c)])
    paired.ema_update([EMAUpdate(codes, z_c, z_v)])
    assert float((paired.embed[0] - z_v[0, 0]).norm()) < float(
        (own_only.embed[0] - z_v[0, 0]).norm()
    )


def test_mm_ema_in_cmg_moves_current_codes_toward_camera(batch: Batch) -> None:
    cfg = make_tiny_cfg(encoder=replace(make_tiny_cfg().encoder, dropout=0.0))
    torch.manual_seed(0)
    a = build_cmg(cfg).train()
    b = build_cmg(replace(cfg, mm_ema=False)).train()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.manual_seed(1)
        out_a = a(*batch)
        torch.manual_seed(1)
        b(*batch)
        z_v = a.eval().encode("camera", batch.x_v)
    i_c = out_a.codes_c
    gap_a = (a.codebook_for("current")[i_c] - z_v).norm(dim=-1).mean()
    gap_b = (b.codebook_for("current")[i_c] - z_v).norm(dim=-1).mean()
    assert float(gap_a) < float(gap_b)


def test_dead_codes_are_reset_with_w_and_n() -> None:
    torch.manual_seed(0)
    cfg = CodebookConfig(size=8, dim=4, dead_after=4, donor_within=2)
    book = Codebook(cfg, users=2)
    book.init_from(torch.randn(50, 4))
    for _ in range(6):
        book.tick(0, torch.tensor([[0, 1]]))
        book.tick(1, torch.tensor([[2]]))  # used by the camera only: alive
    before = book.embed.clone()
    assert book.reset_dead() == 5
    dead = torch.arange(3, 8)
    donors = before[:3]
    dist = (book.embed[dead][:, None, :] - donors[None]).abs().amax(-1).amin(-1)  # (5,)
    assert bool((dist <= 1.0 / 1024 + 1e-6).all())
    torch.testing.assert_close(book.count[dead], torch.ones(5))
    torch.testing.assert_close(book.weight[dead], book.embed[dead])
    assert bool((book.idle[:, dead] == 0).all())
    torch.testing.assert_close(book.embed[:3], before[:3])
    assert book.reset_dead() == 0


def test_data_init_and_uniform_init() -> None:
    torch.manual_seed(0)
    z = torch.randn(40, 4)
    book = Codebook(CodebookConfig(size=8, dim=4, init="data"))
    assert not bool(book.initialised)
    book.init_from(z)
    assert bool(book.initialised)
    match = (book.embed[:, None, :] == z[None]).all(-1).any(-1)  # each code is a row of z
    assert bool(match.all()) and len(torch.unique(book.embed, dim=0)) == 8
    torch.testing.assert_close(book.count, torch.ones(8))
    torch.testing.assert_close(book.weight, book.embed)
    uniform = Codebook(CodebookConfig(size=8, dim=4, init="uniform"))
    assert bool(uniform.initialised) and float(uniform.embed.abs().max()) <= 1 / 8
    assert float(uniform.count.abs().sum()) == 0.0


def test_updates_only_in_training_mode_and_only_buffers(tiny_cfg: CMGConfig, batch: Batch) -> None:
    torch.manual_seed(0)
    model = build_cmg(tiny_cfg)
    model.train()(*batch)  # initialise
    params = copy.deepcopy(dict(model.named_parameters()))
    buffers = copy.deepcopy(dict(model.named_buffers()))
    model.eval()
    model(*batch)
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), f"eval forward changed {name}"
    model.train()
    model(*batch)
    changed = [n for n, v in model.named_buffers() if not torch.equal(v, buffers[n])]
    assert "codebooks.shared.embed" in changed and "codebooks.shared.count" in changed
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]) and p.grad is None, f"forward touched {name}"
