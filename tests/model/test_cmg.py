"""The CMG training step: losses, gradients, ablations, determinism, state (docs/design/cmg.md 4,
9)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional

from model.cmg import CMG, build_cmg
from model.config import CMGConfig
from model.features import camera_features, camera_inputs, current_features
from tests.model.factories import Batch, make_batch, make_tiny_cfg

DIAGNOSTICS = {
    "perplexity_c",
    "perplexity_v",
    "step_agreement",
    "equal_num_rate",
    "cpc_acc_c2v",
    "cpc_acc_v2c",
    "cpc_acc_c2c",
    "cpc_acc_v2v",
    "resets",
    "active_codes_c",
    "active_codes_v",
    "club_c",
    "club_v",
}


def _model(cfg: CMGConfig, seed: int = 0) -> CMG:
    torch.manual_seed(seed)
    return build_cmg(cfg)


def test_forward_losses_codes_and_diagnostics(tiny_cfg: CMGConfig, batch: Batch) -> None:
    out = _model(tiny_cfg).train()(*batch)
    loss = out.loss
    for name, value in loss._asdict().items():
        assert value.shape == () and bool(torch.isfinite(value)), name
    expected = loss.rec_c + loss.rec_v + loss.commit + loss.club + loss.cpc + 0.5 * loss.cmcm
    torch.testing.assert_close(loss.total, expected)
    assert float(loss.infonce) == 0.0
    B, T = batch.x_c.shape[:2]
    assert out.codes_c.shape == out.codes_v.shape == (B, T)
    assert out.codes_c.dtype == torch.int64
    assert DIAGNOSTICS <= set(out.diagnostics)
    assert all(not v.requires_grad and v.shape == () for v in out.diagnostics.values())
    assert 1.0 <= float(out.diagnostics["perplexity_c"]) <= tiny_cfg.codebook.size


def test_backward_reaches_main_parameters_only(tiny_cfg: CMGConfig, batch: Batch) -> None:
    model = _model(tiny_cfg).train()
    model(*batch).loss.total.backward()
    for name, params in model.clip_groups().items():
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params), name
    assert all(p.grad is None for p in model.club_parameters())
    main = {id(p) for p in model.main_parameters()}
    club = {id(p) for p in model.club_parameters()}
    assert not main & club and main | club == {id(p) for p in model.parameters()}


def test_the_supervised_term_reads_the_labelled_modalitys_codes(
    tiny_cfg: CMGConfig, batch: Batch
) -> None:
    B = batch.x_c.shape[0]
    labels = torch.arange(B) % tiny_cfg.n_classes
    assert _model(tiny_cfg).sup_head is None  # off by default: the paper's loss, unchanged
    assert float(_model(tiny_cfg).train()(*batch, labels=labels).loss.supervised) == 0.0
    cfg = replace(tiny_cfg, supervised_weight=2.0)
    model = _model(cfg).train()
    out = model(*batch, labels=labels)
    assert float(out.loss.supervised) > 0.0
    rest = out.loss.total - 2.0 * out.loss.supervised
    unsupervised = _model(cfg).train()(*batch)  # no labels: no term, same other losses
    torch.testing.assert_close(rest, unsupervised.loss.total)
    model.zero_grad()
    out.loss.supervised.backward()
    grads = {
        n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if p.grad is not None
    }
    assert any(n.startswith("phi_c.") for n in grads)  # through the straight-through codes
    assert not any(n.startswith("phi_v.") for n in grads)  # the camera stays label-free
    camera = _model(replace(cfg, supervised_modality="camera")).train()
    camera(*batch, labels=labels).loss.supervised.backward()
    assert not any(
        n.startswith("phi_c.") and p.grad is not None for n, p in camera.named_parameters()
    )


def test_same_seed_same_outputs(tiny_cfg: CMGConfig, batch: Batch) -> None:
    outs = []
    for _ in range(2):
        model = _model(tiny_cfg, seed=3).train()
        torch.manual_seed(7)
        outs.append(model(*batch))
    for a, b in zip(outs[0].loss, outs[1].loss, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(outs[0].codes_c, outs[1].codes_c)
    assert torch.equal(outs[0].codes_v, outs[1].codes_v)


def test_state_dict_round_trip_gives_identical_outputs(tiny_cfg: CMGConfig, batch: Batch) -> None:
    model = _model(tiny_cfg).train()
    for seed in range(3):  # a few steps so that buffers and stats are non-trivial
        model(*make_batch(tiny_cfg, seed=seed)).loss.total.backward()
    copy_ = build_cmg(tiny_cfg)
    copy_.load_state_dict(model.state_dict())
    model.eval()
    copy_.eval()
    for m in ("current", "camera"):
        x = batch.x_c if m == "current" else batch.x_v
        za, zb = model.encode(m, x, batch.baseline), copy_.encode(m, x, batch.baseline)
        assert torch.equal(za, zb)
        assert torch.equal(model.quantize(m, za).codes, copy_.quantize(m, zb).codes)
    torch.manual_seed(0)
    la = model(*batch).loss
    torch.manual_seed(0)
    lb = copy_(*batch).loss
    assert all(torch.equal(a, b) for a, b in zip(la, lb, strict=True))


def test_input_statistics_come_from_the_first_training_batch(
    tiny_cfg: CMGConfig, batch: Batch
) -> None:
    model = _model(tiny_cfg)
    model.eval()(*batch)
    assert not bool(model.inputs.stats_set.any())
    model.set_camera_stats(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5, 0.6]))
    model.train()(*batch)
    assert bool(model.inputs.stats_set.all())
    torch.testing.assert_close(model.camera_mean, torch.tensor([0.1, 0.2, 0.3]))  # kept
    f_c = model.eval().inputs.current(batch.x_c, batch.baseline)
    assert float(f_c.mean(dim=(0, 1)).abs().max()) < 1e-4  # standardised on that batch
    with pytest.raises(ValueError, match="std"):
        model.set_camera_stats(torch.zeros(3), torch.zeros(3))


def test_encode_in_training_mode_sets_only_its_own_statistics(
    tiny_cfg: CMGConfig, batch: Batch
) -> None:
    model = _model(tiny_cfg).train()
    with torch.no_grad():
        model.encode("current", batch.x_c, batch.baseline)
    assert model.inputs.stats_set.tolist() == [True, False]
    f_c = current_features(batch.x_c, batch.baseline).reshape(-1, tiny_cfg.current_features)
    torch.testing.assert_close(model.inputs.current_mean, f_c.mean(0))
    model.set_input_stats_from(x_v=batch.x_v)
    px = batch.x_v.reshape(-1, 3).float() / 255.0
    torch.testing.assert_close(model.camera_mean, px.mean(0))
    assert model.inputs.stats_set.tolist() == [True, True]


def test_zero_windows_give_finite_losses(tiny_cfg: CMGConfig) -> None:
    B, T = 4, tiny_cfg.segments
    model = _model(tiny_cfg).train()
    model(*make_batch(tiny_cfg))  # statistics from real-looking windows
    x_c = torch.zeros(B, T, 4, 3)
    x_v = torch.zeros(B, T, tiny_cfg.frame_px, tiny_cfg.frame_px, 3, dtype=torch.uint8)
    out = model(x_c, torch.zeros(B, 3), x_v)
    assert all(bool(torch.isfinite(v)) for v in out.loss)


def test_forward_does_not_mutate_inputs(tiny_cfg: CMGConfig, batch: Batch) -> None:
    before = [t.clone() for t in batch]
    _model(tiny_cfg).train()(*batch)
    assert all(torch.equal(a, b) for a, b in zip(before, batch, strict=True))


@pytest.mark.parametrize(
    ("changes", "zero_terms"),
    [
        ({"club": False}, {"club"}),
        ({"club": False, "cpc": False}, {"club", "cpc"}),
        ({"cmcm": False}, {"cmcm"}),
        ({"align": "infonce"}, {"club", "cpc", "cmcm"}),
        ({"mm_ema": False, "reset": False}, set()),
        ({"shared_codebook": False}, set()),
        ({"codebook": replace(make_tiny_cfg().codebook, fused_update=True)}, set()),
        ({"codebook": replace(make_tiny_cfg().codebook, init="uniform")}, set()),
    ],
)
def test_ablations_run_and_switch_their_terms_off(
    changes: dict[str, object], zero_terms: set[str], batch: Batch
) -> None:
    cfg = make_tiny_cfg(**changes)
    model = _model(cfg).train()
    before = {n: b.clone() for n, b in model.named_buffers() if "codebooks" in n}
    out = model(*batch)
    out.loss.total.backward()
    for name in ("club", "cpc", "cmcm"):
        value = float(getattr(out.loss, name).detach())
        assert (value == 0.0) == (name in zero_terms), name
    assert (float(out.loss.infonce.detach()) > 0) == (cfg.align == "infonce")
    after = dict(model.named_buffers())
    assert any(not torch.equal(v, after[n]) for n, v in before.items())


def test_mm_ema_off_drops_the_cross_commitment(batch: Batch) -> None:
    on = _model(make_tiny_cfg()).train()(*batch).diagnostics
    off = _model(make_tiny_cfg(mm_ema=False)).train()(*batch).diagnostics
    assert float(on["commit_cross"]) > 0 and float(off["commit_cross"]) == 0


def test_club_step_fits_only_the_qnets(tiny_cfg: CMGConfig, batch: Batch) -> None:
    model = _model(tiny_cfg).train()
    opt = torch.optim.Adam(model.club_parameters(), lr=tiny_cfg.club_lr)
    main = [p.clone() for p in model.main_parameters()]
    club = [p.clone() for p in model.club_parameters()]
    nll = model.club_step(*batch, optimizer=opt)
    assert nll.shape == () and bool(torch.isfinite(nll))
    assert all(torch.equal(a, b) for a, b in zip(main, model.main_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(club, model.club_parameters(), strict=True))
    # the same fit inside forward (released order, one encoder pass)
    club = [p.clone() for p in model.club_parameters()]
    out = model(*batch, club_optimizer=opt)
    assert float(out.diagnostics["club_nll"]) != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(club, model.club_parameters(), strict=True))
    out.loss.total.backward()
    assert all(p.grad is None for p in model.club_parameters())


def test_fast_camera_paths_equal_their_reference(tiny_cfg: CMGConfig, batch: Batch) -> None:
    model = _model(tiny_cfg).eval()
    cam = camera_inputs(batch.x_v, model.camera_mean, model.camera_std)
    stem = model.phi_v.stem
    B, T = batch.x_v.shape[:2]
    full = camera_features(batch.x_v, model.camera_mean, model.camera_std)
    full = full.reshape(B * T, 6, tiny_cfg.frame_px, tiny_cfg.frame_px)
    reference = functional.relu(stem.merge(functional.relu(stem.patch(full))))
    torch.testing.assert_close(stem(cam), reference, atol=1e-5, rtol=1e-5)
    gated = model.phi_v.gate(reference)  # SE gate on every position, then pooling
    fast = model.phi_v.pool(reference, model.phi_v.gate.gate(reference.mean(dim=(2, 3))))
    torch.testing.assert_close(fast, model.phi_v.pool(gated), atol=1e-5, rtol=1e-5)
    q = torch.randn(B, T, tiny_cfg.encoder.dim)
    m_v, _ = model.psi_v(cam)
    fast, slow = model.dec_v(q, m_v), model.dec_v.reference(q, m_v)
    torch.testing.assert_close(fast, slow)
    params = list(model.dec_v.parameters())
    grads_fast = torch.autograd.grad(fast.square().sum(), params)
    grads_slow = torch.autograd.grad(slow.square().sum(), params)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert model.dec_v(q, m_v).shape == (B * T, 3, tiny_cfg.recon_px, tiny_cfg.recon_px)


def test_encode_needs_a_baseline_for_current(tiny_cfg: CMGConfig, batch: Batch) -> None:
    model = _model(tiny_cfg)
    with pytest.raises(ValueError, match="baseline"):
        model.encode("current", batch.x_c)
    with pytest.raises(ValueError, match="modality"):
        model.encode("audio", batch.x_c)
